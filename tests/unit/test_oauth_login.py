"""The `oauth-login` command: PKCE, the authorize URL, the local callback, a pasted code, the exchange, the files."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import re
import socket
import threading
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from app import oauth_login
from app.oauth_login import LoginError, apikey_path, authorize_url, main, parse_pasted, pkce_pair
from app.settings import Settings

TOKEN_URL = "https://console.example.test/v1/oauth/token"
CREATE_URL = "https://api.anthropic.com/api/oauth/claude_cli/create_api_key"
CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
ACCESS = "sk-ant-oat01-login-" + "Gg1" * 20 + "lo9A"
REFRESH = "sk-ant-ort01-login-" + "Hh2" * 20 + "lo8B"
API_KEY = "sk-ant-api03-created-" + "Ii3" * 20 + "lo7C"
CODE = "auth-code-" + "Jj4" * 10
NOW = 1_750_000_000.0
SETTINGS = dataclasses.replace(Settings.from_env({}), oauth_token_url=TOKEN_URL)


def clock() -> float:
    return NOW


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url_params(text: str) -> dict:
    url = re.search(r"https://claude\.ai/oauth/authorize\?\S+", text).group(0)
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def challenge_of(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def token_answer(**extra):
    body = {"access_token": ACCESS, "refresh_token": REFRESH, "expires_in": 28800,
            "scope": "user:inference user:profile org:create_api_key", "token_type": "Bearer"}
    body.update(extra)
    return body


def assert_no_secret(text: str) -> None:
    for s in (ACCESS, REFRESH, API_KEY, CODE):
        assert s not in text


class Terminal(io.StringIO):
    """stdout that says when the authorize URL has been printed."""

    def __init__(self) -> None:
        super().__init__()
        self.url_shown = threading.Event()

    def write(self, text: str) -> int:
        n = super().write(text)
        if "https://claude.ai/oauth/authorize?" in self.getvalue():
            self.url_shown.set()
        return n


class Paste:
    """stdin where the user pastes lines once the URL is on screen; `lines(state)` gives them."""

    def __init__(self, terminal: Terminal, lines) -> None:
        self.terminal, self.lines, self.queue = terminal, lines, None

    def readline(self) -> str:
        if self.queue is None:
            assert self.terminal.url_shown.wait(10)
            self.queue = list(self.lines(url_params(self.terminal.getvalue())["state"]))
        return self.queue.pop(0) if self.queue else ""


# ---------------------------------------------------------------- pure parts


def test_pkce_pair_is_s256_of_a_random_verifier():
    verifier, challenge = pkce_pair()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,128}", verifier)
    assert challenge == challenge_of(verifier) and "=" not in challenge
    assert pkce_pair()[0] != verifier


def test_authorize_url_shape():
    url = authorize_url(CLIENT_ID, "CHALLENGE", "STATE")
    assert url.startswith("https://claude.ai/oauth/authorize?")
    assert {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()} == {
        "code": "true", "client_id": CLIENT_ID, "response_type": "code",
        "redirect_uri": "http://localhost:54545/callback",
        "scope": "org:create_api_key user:profile user:inference",
        "code_challenge": "CHALLENGE", "code_challenge_method": "S256", "state": "STATE"}


@pytest.mark.parametrize("pasted, code", [
    ("abc123#STATE", "abc123"),
    ("  abc123#STATE \n", "abc123"),
    ("abc123", "abc123"),
    ("http://localhost:54545/callback?code=abc123&state=STATE", "abc123"),
])
def test_parse_pasted(pasted, code):
    assert parse_pasted(pasted, "STATE") == code


@pytest.mark.parametrize("pasted", ["abc123#OTHER", "#STATE", "   "])
def test_parse_pasted_rejects(pasted):
    with pytest.raises(LoginError):
        parse_pasted(pasted, "STATE")


def test_apikey_path():
    assert apikey_path("credentials/team2.json") == "credentials/team2-apikey.json"
    assert apikey_path("/x/team") == "/x/team-apikey.json"


# ---------------------------------------------------------------- the whole command


@responses.activate
def test_login_through_the_local_callback(tmp_path):
    responses.add_passthru("http://127.0.0.1")
    responses.add(responses.POST, TOKEN_URL, json=token_answer())
    port = free_port()
    statuses = []
    opened = []

    def browser(url):
        opened.append(url)
        state = parse_qs(urlsplit(url).query)["state"][0]

        def visit():
            base = f"http://127.0.0.1:{port}/callback"
            statuses.append(requests.get(f"{base}?code=stolen&state=not-ours", timeout=5).status_code)
            statuses.append(requests.get(f"http://127.0.0.1:{port}/elsewhere", timeout=5).status_code)
            statuses.append(requests.get(f"{base}?code={CODE}&state={state}", timeout=5).status_code)

        threading.Thread(target=visit, daemon=True).start()

    path = tmp_path / "credentials" / "team2.json"
    out, err = Terminal(), io.StringIO()
    rc = main([str(path)], settings=SETTINGS, stdin=io.StringIO(""), stdout=out, stderr=err,
              open_browser=browser, callback_port=port, clock=clock)

    assert rc == 0, err.getvalue()
    assert statuses == [400, 404, 200]
    params = url_params(out.getvalue())
    assert opened and url_params(opened[0]) == params
    exchange = json.loads(responses.calls[0].request.body)
    assert exchange == {"grant_type": "authorization_code", "code": CODE,
                        "redirect_uri": "http://localhost:54545/callback", "client_id": CLIENT_ID,
                        "code_verifier": exchange["code_verifier"], "state": params["state"]}
    assert challenge_of(exchange["code_verifier"]) == params["code_challenge"]
    assert json.loads(path.read_text()) == {"type": "oauth", "oauth": {
        "accessToken": ACCESS, "refreshToken": REFRESH, "expiresAt": int(NOW * 1000) + 28_800_000,
        "scopes": ["user:inference", "user:profile", "org:create_api_key"], "isMax": False}}
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(path.parent)) == ["team2.json"]  # the pending-login file is gone
    assert_no_secret(out.getvalue() + err.getvalue())


@responses.activate
def test_login_with_a_pasted_code_on_a_headless_server(tmp_path):
    responses.add(responses.POST, TOKEN_URL, json=token_answer())
    out, err = Terminal(), io.StringIO()
    stdin = Paste(out, lambda state: ["wrong#elsewhere\n", f"{CODE}#{state}\n"])
    opened = []
    path = tmp_path / "team2.json"
    rc = main([str(path), "--no-browser"], settings=SETTINGS, stdin=stdin, stdout=out, stderr=err,
              open_browser=opened.append, callback_port=free_port(), clock=clock)
    assert rc == 0, err.getvalue()
    assert opened == []  # --no-browser
    assert "state mismatch" in out.getvalue()
    assert json.loads(responses.calls[0].request.body)["code"] == CODE
    assert json.loads(path.read_text())["oauth"]["accessToken"] == ACCESS
    assert_no_secret(out.getvalue() + err.getvalue())


@responses.activate
def test_create_api_key_writes_the_apikey_file(tmp_path):
    responses.add(responses.POST, TOKEN_URL, json=token_answer())
    responses.add(responses.POST, CREATE_URL, json={"raw_key": API_KEY})
    out, err = Terminal(), io.StringIO()
    path = tmp_path / "team2.json"
    rc = main([str(path), "--create-api-key", "--no-browser"], settings=SETTINGS,
              stdin=Paste(out, lambda state: [f"{CODE}#{state}\n"]), stdout=out, stderr=err,
              callback_port=free_port(), clock=clock)
    assert rc == 0, err.getvalue()
    assert responses.calls[1].request.headers["authorization"] == "Bearer " + ACCESS
    key_file = tmp_path / "team2-apikey.json"
    assert json.loads(key_file.read_text()) == {"type": "api_key", "api_key": API_KEY}
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    assert "team2-apikey.json" in out.getvalue()
    assert_no_secret(out.getvalue() + err.getvalue())


@responses.activate
def test_finish_later_with_code(tmp_path):
    responses.add(responses.POST, TOKEN_URL, json=token_answer())
    path = tmp_path / "team2.json"
    out, err = Terminal(), io.StringIO()
    rc = main([str(path), "--no-browser", "--timeout", "0.3"], settings=SETTINGS, stdin=io.StringIO(""),
              stdout=out, stderr=err, callback_port=free_port(), clock=clock)
    assert rc == 1 and "finish later with --code" in err.getvalue()
    pending = tmp_path / "team2.json.login-pending"
    assert os.stat(pending).st_mode & 0o777 == 0o600
    params = url_params(out.getvalue())

    err2 = io.StringIO()
    assert main([str(path), "--code", f"{CODE}#not-the-state"], settings=SETTINGS, stdout=io.StringIO(),
                stderr=err2, clock=clock) == 1
    assert "state mismatch" in err2.getvalue() and not path.exists()

    rc = main([str(path), "--code", f"{CODE}#{params['state']}"], settings=SETTINGS, stdout=io.StringIO(),
              stderr=io.StringIO(), clock=clock)
    assert rc == 0
    exchange = json.loads(responses.calls[0].request.body)
    assert challenge_of(exchange["code_verifier"]) == params["code_challenge"]  # the first run's verifier
    assert json.loads(path.read_text())["oauth"]["refreshToken"] == REFRESH
    assert not pending.exists()


def test_code_without_a_pending_login_or_too_late(tmp_path):
    err = io.StringIO()
    assert main([str(tmp_path / "t.json"), "--code", "x#y"], settings=SETTINGS, stdout=io.StringIO(),
                stderr=err, clock=clock) == 1
    assert "no login is waiting" in err.getvalue()
    oauth_login.oauth.atomic_write_json(str(tmp_path / "t.json.login-pending"),
                                        {"verifier": "v" * 50, "state": "y", "created": NOW - 16 * 60})
    err = io.StringIO()
    assert main([str(tmp_path / "t.json"), "--code", "x#y"], settings=SETTINGS, stdout=io.StringIO(),
                stderr=err, clock=clock) == 1
    assert "expired" in err.getvalue()


@responses.activate
def test_failed_exchange_writes_nothing(tmp_path):
    responses.add(responses.POST, TOKEN_URL, status=400,
                  json={"error": "invalid_grant", "error_description": f"Invalid code {CODE}"})
    out, err = Terminal(), io.StringIO()
    path = tmp_path / "team2.json"
    rc = main([str(path), "--no-browser"], settings=SETTINGS, stdin=Paste(out, lambda s: [f"{CODE}#{s}\n"]),
              stdout=out, stderr=err, callback_port=free_port(), clock=clock)
    assert rc == 1
    assert err.getvalue().startswith("oauth-login: token endpoint answered HTTP 400: invalid_grant")
    assert not path.exists()
    assert_no_secret(out.getvalue() + err.getvalue())


@responses.activate
def test_relogin_keeps_the_files_other_fields(tmp_path):
    responses.add(responses.POST, TOKEN_URL, json=token_answer())
    path = tmp_path / "team2.json"
    path.write_text(json.dumps({"type": "api_key", "api_key": "sk-ant-api03-old", "client_api_key": "ck-123456789",
                                "slack": {"channel": "#t2"}}))
    out = Terminal()
    rc = main([str(path), "--no-browser"], settings=SETTINGS, stdin=Paste(out, lambda s: [f"{CODE}#{s}\n"]),
              stdout=out, stderr=io.StringIO(), callback_port=free_port(), clock=clock)
    assert rc == 0
    data = json.loads(path.read_text())
    assert data["type"] == "oauth" and "api_key" not in data
    assert (data["client_api_key"], data["slack"]) == ("ck-123456789", {"channel": "#t2"})


def test_usage_errors_and_help():
    assert main([], stderr=io.StringIO()) == 2
    assert main(["--help"]) == 0
