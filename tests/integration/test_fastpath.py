"""The hot routes without Flask (app/fastpath.py) answer byte for byte what the Flask route answers."""
from __future__ import annotations

import json
import re

import pytest

from app import create_app
from app.settings import Settings

GOOD = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
_IDS = re.compile(rb"(req|msg|toolu)_[0-9A-Za-z_-]+")


def clients(tmp_path, upstream, mode):
    env = {"USAGE_DB_PATH": str(tmp_path / "usage.sqlite3"), "TOKEN_REPORT_INTERVAL": "0", "PROXY_MODE": mode}
    if mode == "translation":
        env.update(ANTHROPIC_PROXY_BASE_URL=upstream.url, CLAUDE_CODE_PROXY_API_KEY="test-key")
    else:
        env.update(CLAUDE_API_BASE_URL=upstream.url, CLAUDE_API_KEY="sk-ant-api03-test")
    fast = create_app(Settings.from_env(env), start_background=False)
    flask = create_app(Settings.from_env(dict(env, USAGE_DB_PATH=str(tmp_path / "other.sqlite3"))),
                       start_background=False)
    flask.wsgi_app = flask.wsgi_app.flask  # the Flask route only
    return fast.test_client(), flask.test_client()


def seen(resp) -> tuple:
    headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in ("request-id", "date")]
    return resp.status, headers, _IDS.sub(b"ID", resp.get_data())


CASES = [
    ("/v1/messages", json.dumps(GOOD).encode()),
    ("/v1/messages", json.dumps(dict(GOOD, stream=True)).encode()),
    ("/v1/messages/count_tokens", json.dumps(GOOD).encode()),
    ("/v1/messages", b"{not json"),
    ("/v1/messages", b""),
    ("/v1/messages", json.dumps(dict(GOOD, max_tokens=0)).encode()),
    ("/v1/messages", json.dumps(dict(GOOD, messages=[{"role": "robot", "content": 1}])).encode()),
    ("/v1/messages", b"\xff\xfe"),
    ("/v1/messages", json.dumps(dict(GOOD, messages=[{"role": "user", "content": "\\ud800"}])).encode()),
]


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
@pytest.mark.parametrize("path,body", CASES)
def test_the_same_answer_as_the_flask_route(tmp_path, fake_upstream, mode, path, body):
    fast, flask = clients(tmp_path, fake_upstream, mode)
    headers = {"content-type": "application/json", "x-api-key": "sk-ant-api03-client"}
    assert seen(fast.post(path, data=body, headers=headers)) == seen(flask.post(path, data=body, headers=headers))


def test_other_methods_and_paths_go_the_flask_way(tmp_path, fake_upstream):
    fast, flask = clients(tmp_path, fake_upstream, "translation")
    for call in (lambda c: c.get("/v1/messages"), lambda c: c.post("/v1/messages/"), lambda c: c.post("/v1/other")):
        assert seen(call(fast)) == seen(call(flask))


def test_a_body_over_the_limit_is_the_same_413(tmp_path, fake_upstream, monkeypatch):
    fast, flask = clients(tmp_path, fake_upstream, "translation")
    big = json.dumps(dict(GOOD, messages=[{"role": "user", "content": "x" * (33 << 20)}])).encode()
    assert seen(fast.post("/v1/messages", data=big)) == seen(flask.post("/v1/messages", data=big))
