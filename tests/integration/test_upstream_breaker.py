"""Translation's fallback upstreams through the Flask app against the fake upstream: the breaker opens after
five failures, lets one probe through after 30 s, and closes when the probe succeeds."""
from __future__ import annotations

import json
import os

from app import create_app
from app.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


BODY = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


def make_client(tmp_path, fake):
    upstreams = [
        {"name": "primary", "base_url": fake.url + "/primary/v1", "api_key": "sk-primary-key-000001",
         "model_map": {"claude-*": "primary-model"}},
        {"name": "backup", "base_url": fake.url + "/backup/v1", "api_key_env": "BACKUP_KEY",
         "model_map": {"claude-*": "backup-model"}},
    ]
    env = {"USAGE_DB_PATH": str(tmp_path / "usage.sqlite3"), "TOKEN_REPORT_INTERVAL": "0",
           "CLIENT_SETUP_DIR": str(tmp_path), "UPSTREAMS": json.dumps(upstreams), "BACKUP_KEY": "sk-backup-key-000002",
           "UPSTREAM_RETRY_MAX_WAIT": "0"}
    app = create_app(Settings.from_env(env), start_background=False)
    clock = Clock()
    for u in app.extensions["nexus"].translator.upstreams.items:
        u.breaker._clock = clock
    return app.test_client(), clock


def served(fake) -> list[tuple[str, str, str]]:
    return [(r["path"].split("/")[1], r["model"], r["headers"]["authorization"])
            for r in fake.requests("/chat/completions")]


def test_breaker_opens_after_five_failures_then_a_probe_closes_it(tmp_path, fake_upstream):
    fake = fake_upstream
    client, clock = make_client(tmp_path, fake)
    fake.script("/chat/completions", [{"status": s, "path_prefix": "/primary"} for s in (500, 503, 429, 502, 500)])
    for i in range(5):
        resp = client.post("/v1/messages", json=BODY)
        assert resp.status_code == 200, resp.get_json()
        assert resp.headers["x-nexus-upstream"] == "backup" and resp.headers["x-nexus-tries"] == "2"
        assert resp.get_json()["content"][0]["text"]
    log = served(fake)
    assert [p for p, _, _ in log] == ["primary", "backup"] * 5
    assert {(p, m, a) for p, m, a in log} == {("primary", "primary-model", "Bearer sk-primary-key-000001"),
                                             ("backup", "backup-model", "Bearer sk-backup-key-000002")}
    view = client.get("/").get_json()["upstreams"]
    assert view[0]["name"] == "primary" and view[0]["state"] == "open"
    assert [e["error"] for e in view[0]["recentErrors"]] == ["HTTP 500", "HTTP 503", "HTTP 429", "HTTP 502", "HTTP 500"]
    assert view[1]["state"] == "closed"
    assert "sk-primary-key" not in json.dumps(view) and "sk-backup-key" not in json.dumps(view)

    # open: the primary is not asked at all
    clock.now += 29
    resp = client.post("/v1/messages", json=BODY)
    assert resp.status_code == 200 and resp.headers["x-nexus-upstream"] == "backup" and "x-nexus-tries" not in resp.headers
    assert [p for p, _, _ in served(fake)][10:] == ["backup"]

    # 30 s on: one probe goes to the primary; it answers, so the breaker closes
    clock.now += 2
    resp = client.post("/v1/messages", json={**BODY, "stream": True})
    assert resp.status_code == 200 and resp.headers["x-nexus-upstream"] == "primary"
    assert b"event: message_stop" in resp.get_data()
    assert client.get("/").get_json()["upstreams"][0]["state"] == "closed"
    resp = client.post("/v1/messages", json=BODY)
    assert resp.headers["x-nexus-upstream"] == "primary"
    assert [p for p, _, _ in served(fake)][11:] == ["primary", "primary"]


def test_a_failed_probe_opens_the_breaker_again(tmp_path, fake_upstream):
    fake = fake_upstream
    client, clock = make_client(tmp_path, fake)
    fake.script("/chat/completions", [{"status": 500, "path_prefix": "/primary"}] * 5)
    for _ in range(5):
        assert client.post("/v1/messages", json=BODY).status_code == 200
    clock.now += 31
    fake.script("/chat/completions", [{"status": 503, "path_prefix": "/primary"}])
    resp = client.post("/v1/messages", json=BODY)
    assert resp.status_code == 200 and resp.headers["x-nexus-upstream"] == "backup"
    assert client.get("/").get_json()["upstreams"][0]["state"] == "open"
    before = len(served(fake))
    clock.now += 10
    assert client.post("/v1/messages", json=BODY).headers["x-nexus-upstream"] == "backup"
    assert [p for p, _, _ in served(fake)][before:] == ["backup"]


def test_a_client_error_is_not_failed_over(tmp_path, fake_upstream):
    fake = fake_upstream
    client, _ = make_client(tmp_path, fake)
    fake.script("/chat/completions", [{"status": 400, "json": {"error": {"message": "bad tool schema",
                                                                         "type": "invalid_request_error"}}}])
    resp = client.post("/v1/messages", json=BODY)
    assert resp.status_code == 400 and "bad tool schema" in resp.get_json()["error"]["message"]
    assert [p for p, _, _ in served(fake)] == ["primary"]
    assert client.get("/").get_json()["upstreams"][0]["consecutiveFailures"] == 0


def test_every_breaker_open_is_a_503_with_retry_after(tmp_path, fake_upstream):
    fake = fake_upstream
    client, clock = make_client(tmp_path, fake)
    fake.script("/chat/completions", [{"status": 500}] * 10)
    for _ in range(5):
        assert client.post("/v1/messages", json=BODY).status_code == 500
    resp = client.post("/v1/messages", json=BODY)
    assert resp.status_code == 503 and resp.get_json()["error"]["type"] == "overloaded_error"
    assert 1 <= int(resp.headers["retry-after"]) <= 30
    assert len(served(fake)) == 10


def test_each_upstream_is_called_through_its_own_api(tmp_path, fake_upstream):
    """A Chat Completions upstream that fails moves the request to a Responses API upstream: converted for that
    API, with that upstream's model map, and the answer converted back."""
    fake = fake_upstream
    upstreams = [
        {"name": "chat", "base_url": fake.url + "/primary/v1", "api_key": "sk-primary-key-000001",
         "model_map": {"claude-*": "primary-model"}},
        {"name": "reasoner", "base_url": fake.url + "/backup/v1", "api_key": "sk-backup-key-000002",
         "api": "responses", "model_map": {"claude-*": "gpt-5"}},
    ]
    env = {"USAGE_DB_PATH": str(tmp_path / "usage.sqlite3"), "TOKEN_REPORT_INTERVAL": "0",
           "CLIENT_SETUP_DIR": str(tmp_path), "UPSTREAMS": json.dumps(upstreams), "UPSTREAM_RETRY_MAX_WAIT": "0"}
    client = create_app(Settings.from_env(env), start_background=False).test_client()
    fake.script("/chat/completions", [{"status": 503, "path_prefix": "/primary"}])
    resp = client.post("/v1/messages", json=BODY)
    assert resp.status_code == 200, resp.get_json()
    assert resp.headers["x-nexus-upstream"] == "reasoner" and resp.headers["x-nexus-tries"] == "2"
    message = resp.get_json()
    assert message["type"] == "message" and message["model"] == "claude-sonnet-4-5"
    assert any(block["type"] == "text" and block["text"] for block in message["content"])
    sent = fake.requests("/responses")
    assert [(r["path"].split("/")[1], r["body"]["model"]) for r in sent] == [("backup", "gpt-5")]
    assert isinstance(sent[0]["body"]["input"], list)  # Responses items, not Chat messages
