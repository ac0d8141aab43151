"""No secret leaves the proxy: not in a response, a log line (DEBUG on and off), a telemetry event or a Slack post.

Known fake secrets are configured everywhere the proxy takes one: CLAUDE_API_KEY, CLAUDE_CODE_PROXY_API_KEY,
PROXY_API_KEYS, an API-key credential file and an OAuth credential file (each with a client_api_key and a
Slack override), an OAuth token endpoint that hands out new tokens during the test, a Slack webhook URL
and a telemetry endpoint carrying a token. Then every endpoint and error path is driven in both modes,
and everything the outside world got is searched for any 10-character piece of any secret's secret
part (the random text after a public prefix such as `sk-ant-api03-`).
"""
from __future__ import annotations

import json
import os
import re
import secrets as pysecrets
import socket
import string
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import pytest

from tests.fakes.server import FakeUpstream, ProxyServer

pytestmark = pytest.mark.timeout(240)

WINDOW = 10
_ALNUM = string.ascii_letters + string.digits


def rand(n: int = 48) -> str:
    return "".join(pysecrets.choice(_ALNUM) for _ in range(n))


class Recorder:
    """A tiny HTTP server that records every request (telemetry, Slack, the OAuth token endpoint)."""

    def __init__(self, handle=None) -> None:
        self.calls: list[tuple[str, str, bytes]] = []
        self._handle = handle
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                recorder.calls.append((self.command, self.path, body))
                status, payload = recorder._handle(self.path, body) if recorder._handle else (200, b"ok")
                self.send_response(status)
                self.send_header("content-type", "application/json" if payload[:1] == b"{" else "text/plain")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path_prefix: str = "") -> list[bytes]:
        return [body for _, path, body in list(self.calls) if path.startswith(path_prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TokenEndpoint:
    """An OAuth token endpoint with rotating refresh tokens; every token it issues is a secret too."""

    def __init__(self, refresh_token: str, secrets: dict[str, str]) -> None:
        self.refresh_token = refresh_token
        self.secrets = secrets
        self.issued = 0
        self.recorder = Recorder(self._handle)

    def _handle(self, path: str, body: bytes) -> tuple[int, bytes]:
        data = json.loads(body)
        if data.get("grant_type") != "refresh_token" or data.get("refresh_token") != self.refresh_token:
            return 400, json.dumps({"error": "invalid_grant", "error_description": "unknown refresh token"}).encode()
        self.issued += 1
        access, refresh = "sk-ant-oat01-" + rand(), "sk-ant-ort01-" + rand()
        self.secrets[f"issued access token {self.issued}"] = access
        self.secrets[f"issued refresh token {self.issued}"] = refresh
        self.refresh_token = refresh
        return 200, json.dumps({"token_type": "Bearer", "access_token": access, "refresh_token": refresh,
                                "expires_in": 3600, "scope": "user:inference user:profile"}).encode()


def secret_part(value: str) -> str:
    """The random tail: what follows a public prefix (`sk-ant-api03-`, a webhook's host and path, `?token=`)."""
    return re.search(r"[A-Za-z0-9]+$", value).group()


def grams(value: str) -> set[str]:
    part = secret_part(value)
    assert len(part) >= WINDOW and set(part) <= set(_ALNUM), value
    return {part[i:i + WINDOW] for i in range(len(part) - WINDOW + 1)}


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    """Names of the secrets with a 10-character piece of their secret part in `text`."""
    index: dict[str, str] = {}
    for name, value in secrets.items():
        for gram in grams(value):
            index[gram] = name
    found = set()
    for run in re.findall(r"[A-Za-z0-9]{%d,}" % WINDOW, text):
        for i in range(len(run) - WINDOW + 1):
            name = index.get(run[i:i + WINDOW])
            if name:
                found.add(name)
    return sorted(found)


def context_of(text: str, value: str) -> str:
    part = secret_part(value)
    for i in range(len(part) - WINDOW + 1):
        at = text.find(part[i:i + WINDOW])
        if at >= 0:
            return text[max(0, at - 200):at + 200]
    return ""


# ---------------------------------------------------------------- the set-up


@pytest.fixture(scope="module")
def fake():
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def world(tmp_path, fake):
    """Secrets, credential files, the token endpoint and the recording servers for one proxy run."""
    secrets = {
        "CLAUDE_API_KEY": "sk-ant-api03-" + rand(80),
        "CLAUDE_CODE_PROXY_API_KEY": rand(40),  # an OpenAI-compatible key with no recognisable prefix
        "PROXY_API_KEYS": rand(32),
        "api-key file api_key": "sk-ant-api03-" + rand(80),
        "api-key file client_api_key": rand(32),
        "oauth file accessToken": "sk-ant-oat01-" + rand(80),
        "oauth file refreshToken": "sk-ant-ort01-" + rand(80),
        "oauth file client_api_key": rand(32),
        "a client's own API key": rand(40),
    }
    token = TokenEndpoint(secrets["oauth file refreshToken"], secrets)
    telemetry, slack = Recorder(), Recorder()
    secrets["SLACK_WEBHOOK_URL"] = f"{slack.url}/services/T0GLOBAL/B0GLOBAL/{rand(24)}"
    secrets["domain Slack webhook"] = f"{slack.url}/services/T0DOMAIN/B0DOMAIN/{rand(24)}"
    secrets["TELEMETRY_ENDPOINT"] = f"{telemetry.url}/collect?token={rand(24)}"

    key_file = tmp_path / "key-team.json"
    key_file.write_text(json.dumps({"type": "api_key", "api_key": secrets["api-key file api_key"],
                                    "client_api_key": secrets["api-key file client_api_key"],
                                    "slack": {"webhook_url": secrets["domain Slack webhook"], "channel": "#keys"}}))
    oauth_file = tmp_path / "oauth-team.json"
    oauth_file.write_text(json.dumps({
        "type": "oauth", "client_api_key": secrets["oauth file client_api_key"],
        "oauth": {"accessToken": secrets["oauth file accessToken"], "refreshToken": secrets["oauth file refreshToken"],
                  # inside the refresh margin: the first request refreshes it
                  "expiresAt": int(time.time() * 1000) + 20_000, "scopes": ["user:inference"]}}))
    for f in (key_file, oauth_file):
        os.chmod(f, 0o600)
    env = {
        "CLAUDE_API_KEY": secrets["CLAUDE_API_KEY"],
        "CLAUDE_CODE_PROXY_API_KEY": secrets["CLAUDE_CODE_PROXY_API_KEY"],
        "PROXY_API_KEYS": secrets["PROXY_API_KEYS"],
        "DOMAIN_CREDENTIAL_MAPPING": json.dumps({"key.team.test": str(key_file), "oauth.team.test": str(oauth_file)}),
        "OAUTH_TOKEN_URL": f"{token.recorder.url}/v1/oauth/token",
        "SLACK_WEBHOOK_URL": secrets["SLACK_WEBHOOK_URL"],
        "TELEMETRY_ENDPOINT": secrets["TELEMETRY_ENDPOINT"],
        "ANTHROPIC_PROXY_BASE_URL": fake.url,
        "CLAUDE_API_BASE_URL": fake.url,
        "UPSTREAM_MAX_RETRIES": "1", "UPSTREAM_RETRY_MAX_WAIT": "1", "UPSTREAM_READ_TIMEOUT": "5",
        "STREAM_PING_INTERVAL": "1", "GRACEFUL_TIMEOUT": "3",
    }
    yield {"secrets": secrets, "env": env, "token": token, "telemetry": telemetry, "slack": slack,
           "oauth_file": oauth_file}
    for server in (token.recorder, telemetry, slack):
        server.close()


# ---------------------------------------------------------------- driving every path


def exchange(port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None) -> bytes:
    """One raw HTTP/1.1 exchange; returns the whole response (status line, headers, body)."""
    head = f"{method} {path} HTTP/1.1\r\nConnection: close\r\n"
    headers = {"Host": "proxy.test", **(headers or {})}
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
        headers["Content-Length"] = str(len(body))
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(head.encode("latin-1") + (body or b""))
        except (BrokenPipeError, ConnectionResetError):  # answered (413) before the body was all sent
            pass
        out = b""
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                return out
            if not part:
                return out
            out += part


MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 64,
           "messages": [{"role": "user", "content": "Tell me a secret: %s"}]}


def drive(proxy: ProxyServer, fake: FakeUpstream, mode: str, secrets: dict[str, str]) -> list[bytes]:
    """Every endpoint and error path; returns the raw responses."""
    out: list[bytes] = []
    proxy_key = {"x-api-key": secrets["PROXY_API_KEYS"]}
    bearer_key = {"Authorization": "Bearer " + secrets["PROXY_API_KEYS"]}
    endpoint = "/chat/completions" if mode == "translation" else "/v1/messages"
    upstream_key = secrets["CLAUDE_CODE_PROXY_API_KEY"] if mode == "translation" else secrets["CLAUDE_API_KEY"]

    def post(headers, body=None, path="/v1/messages", stream=False):
        payload = body if body is not None else json.dumps(dict(MESSAGE, stream=stream, messages=[
            {"role": "user", "content": "Tell me a story about %s" % rand(8)}])).encode()
        out.append(exchange(proxy.port, "POST", path, headers, payload))

    # the open and the protected operator endpoints
    for headers in ({}, proxy_key, {"x-api-key": "wrong-" + rand(20)}):
        out.append(exchange(proxy.port, "GET", "/", headers))
        out.append(exchange(proxy.port, "HEAD", "/", headers))
        out.append(exchange(proxy.port, "GET", "/token-stats", headers))
    out.append(exchange(proxy.port, "GET", "/client-setup/missing.json", proxy_key))
    out.append(exchange(proxy.port, "GET", "/client-setup/..%2F..%2Fetc%2Fpasswd"))
    out.append(exchange(proxy.port, "GET", "/nowhere", proxy_key))
    out.append(exchange(proxy.port, "DELETE", "/v1/messages", proxy_key))

    # access control failures: no key, wrong key, a team's key on another team's host
    post({})
    post({"x-api-key": "wrong-" + rand(20)})
    post({"Host": "key.team.test", "x-api-key": secrets["oauth file client_api_key"]})
    post({"Host": "oauth.team.test"})

    # successes, JSON and stream: global key, each team (the OAuth one refreshes on its first use)
    for headers in (proxy_key, bearer_key, {"Host": "key.team.test", "x-api-key": secrets["api-key file client_api_key"]},
                    {"Host": "oauth.team.test", "Authorization": "Bearer " + secrets["oauth file client_api_key"]}):
        for stream in (False, True):
            post(headers, stream=stream)
            post(headers, path="/v1/messages/count_tokens")
    if mode == "passthrough":
        out.append(exchange(proxy.port, "GET", "/v1/models", {**proxy_key}))
    # a client's own key next to the proxy key: refused (x-api-key is the one checked), and never logged
    post({"x-api-key": secrets["a client's own API key"], "Authorization": "Bearer " + secrets["PROXY_API_KEYS"]})

    # upstream errors that echo the credential back (some providers do), before and during a stream
    echo = f"Incorrect API key provided: {upstream_key}"
    for status in (401, 429, 500):
        body = ({"error": {"message": echo, "type": "invalid_request_error", "code": "invalid_api_key"}}
                if mode == "translation" else {"type": "error", "error": {"type": "authentication_error",
                                                                          "message": echo}})
        tries = 2 if status == 429 else 1  # UPSTREAM_MAX_RETRIES=1 retries a 429 once
        fake.script(endpoint, [{"status": status, "json": body}] * tries)
        post(proxy_key)
        fake.script(endpoint, [{"status": status, "body": echo}] * tries)
        post(proxy_key, stream=True)
    chunk_error = ({"error": {"message": echo, "code": 401}} if mode == "translation"
                   else {"event": "error", "data": {"type": "error", "error": {"type": "api_error", "message": echo}}})
    fake.script(endpoint, [{"sse": [chunk_error]}])
    post(proxy_key, stream=True)
    fake.script(endpoint, [{"sse": [], "stop_mid_event": True}])
    post(proxy_key, stream=True)

    # bad input
    post(proxy_key, body=b"not json " + secrets["PROXY_API_KEYS"].encode())
    post(proxy_key, body=json.dumps({"model": 5, "api_key": upstream_key}).encode())
    post(proxy_key, body=b"{" + b" " * (33 * 1024 * 1024) + b"}")

    # the anthropic SDK as a client, with the proxy key
    client = anthropic.Anthropic(base_url=proxy.url, api_key=secrets["PROXY_API_KEYS"], max_retries=0, timeout=20)
    with client.messages.stream(**dict(MESSAGE, messages=[{"role": "user", "content": "hello"}])) as s:
        out.append(s.get_final_message().model_dump_json().encode())
    return out


def wait_for_deliveries(world, timeout: float = 20.0) -> None:
    """Until telemetry and Slack have been quiet for 1.5 s (they are sent in the background)."""
    deadline = time.monotonic() + timeout
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(world["telemetry"].calls) + len(world["slack"].calls)
        if count != last:
            last, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since > 1.5:
            return
        time.sleep(0.1)


@pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])
@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_no_secret_reaches_responses_logs_telemetry_or_slack(world, fake, mode, debug):
    fake.reset()
    secrets = world["secrets"]
    env = dict(world["env"], PROXY_MODE=mode, DEBUG="true" if debug else "false")
    with ProxyServer(env) as proxy:
        responses = drive(proxy, fake, mode, secrets)
        wait_for_deliveries(world)
        status = proxy.terminate(timeout=30)
        output = proxy.output()
    assert status == 0, output[-3000:]

    # the set-up did what it claims, so the test can fail
    assert "Token Usage" in output or "nexus.access" in output
    if debug:
        assert "=== Outgoing Request ===" in output and "=== Incoming Request ===" in output
    if mode == "passthrough":
        assert world["token"].issued >= 1, "the OAuth credential was not refreshed"
        stored = json.loads(world["oauth_file"].read_text())["oauth"]
        assert stored["accessToken"] == secrets["issued access token 1"]
        assert any(e["headers"].get("authorization") == "Bearer " + secrets["issued access token 1"]
                   for e in fake.requests("/v1/messages"))
    sent = fake.requests()
    assert sent and all(secrets["PROXY_API_KEYS"] not in json.dumps(e["headers"]) for e in sent)
    telemetry = world["telemetry"].bodies()
    slack = world["slack"].bodies()
    assert telemetry, "no telemetry event was delivered"
    assert slack, "no Slack post was delivered"
    assert world["slack"].bodies("/services/T0DOMAIN"), "the domain's own Slack webhook got nothing"
    assert any(json.loads(t)["error"] for t in telemetry), "no error path reached telemetry"
    assert any(json.loads(t)["status"] == 200 for t in telemetry)

    places = {
        "responses": b"\n".join(responses).decode("utf-8", "replace"),
        "proxy output": output,
        "telemetry": b"\n".join(telemetry).decode("utf-8", "replace"),
        "slack": b"\n".join(slack).decode("utf-8", "replace"),
    }
    problems = []
    for place, text in places.items():
        for name in leaks(text, secrets):
            problems.append(f"{name} in {place}: ...{context_of(text, secrets[name])}...")
    assert not problems, "\n\n".join(problems)
