"""Access control: the proxy's own keys, what stays open, and that clients cannot pick the upstream.

Most tests use the Flask test client in front of the real fake upstream (a subprocess), so what the
upstream received can be checked; the start-up warning and raw request lines use the real server.
"""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from app import create_app
from config.settings import Settings
from tests.fakes.server import CountingListener, ProxyServer

PROXY_KEY = "nexus-proxy-key-7f3a9c1e5b2d4f6a8c0e"
OTHER_PROXY_KEY = "nexus-proxy-key-second-0b1c2d3e4f5a6b7c"
TEAM_KEY = "team1-client-key-9d8c7b6a5f4e3d2c1b0a"
UPSTREAM_KEY = "sk-upstream-openai-key-a1b2c3d4e5f6a7b8c9d0"
ANTHROPIC_KEY = "sk-ant-api03-envkey-ZYXWVUTSRQPONMLKJIHGFEDCBA0123456789"
TEAM_ANTHROPIC_KEY = "sk-ant-api03-team1file-0123456789abcdefghijklmnopqrstuv"

MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


def make_client(tmp_path, **env):
    base = {"USAGE_DB_PATH": str(tmp_path / "usage.sqlite3"), "TOKEN_REPORT_INTERVAL": "0",
            "CLIENT_SETUP_DIR": str(tmp_path), "STREAM_PING_INTERVAL": "0"}
    base.update(env)
    return create_app(Settings.from_env(base), start_background=False).test_client()


def translation_client(tmp_path, fake, **env):
    return make_client(tmp_path, ANTHROPIC_PROXY_BASE_URL=fake.url, CLAUDE_CODE_PROXY_API_KEY=UPSTREAM_KEY, **env)


def passthrough_client(tmp_path, fake, **env):
    env.setdefault("CLAUDE_API_KEY", ANTHROPIC_KEY)
    return make_client(tmp_path, PROXY_MODE="passthrough", CLAUDE_API_BASE_URL=fake.url, **env)


def assert_error(resp, status, error_type):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    assert body["error"]["message"]
    return body


def write_cred(path, data, mode=0o600):
    path.write_text(json.dumps(data))
    os.chmod(path, mode)
    return str(path)


def everything_sent(entry) -> str:
    """All the upstream saw of one request, as text: header values and the body."""
    return json.dumps(entry["headers"]) + json.dumps(entry["body"]) + entry["path"] + entry["query"]


# ---------------------------------------------------------------- PROXY_API_KEYS


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("headers", [
    {},
    {"x-api-key": "wrong-key-0000000000000000"},
    {"authorization": "Bearer wrong-key-0000000000000000"},
    {"x-api-key": PROXY_KEY[:-1]},  # a prefix of the real key is not the key
    {"x-api-key": PROXY_KEY + "x"},
    {"authorization": "Basic " + PROXY_KEY},  # only Bearer carries a key
    {"authorization": "Bearer "},
], ids=["none", "wrong-x-api-key", "wrong-bearer", "prefix", "longer", "basic", "empty-bearer"])
def test_v1_without_a_valid_proxy_key_is_401_and_nothing_goes_upstream(tmp_path, fake_upstream, mode, path,
                                                                       headers):
    make = translation_client if mode == "translation" else passthrough_client
    client = make(tmp_path, fake_upstream, PROXY_API_KEYS=f"{PROXY_KEY}, {OTHER_PROXY_KEY}")
    resp = client.post(path, json=MESSAGE, headers=headers)
    body = assert_error(resp, 401, "authentication_error")
    assert PROXY_KEY not in json.dumps(body)
    assert fake_upstream.requests() == []


def test_passthrough_other_paths_are_protected_too(tmp_path, fake_upstream):
    client = passthrough_client(tmp_path, fake_upstream, PROXY_API_KEYS=PROXY_KEY)
    assert_error(client.get("/v1/models"), 401, "authentication_error")
    assert_error(client.delete("/v1/files/file_123"), 401, "authentication_error")
    assert fake_upstream.requests() == []
    assert client.get("/v1/models", headers={"x-api-key": PROXY_KEY}).status_code == 200


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
@pytest.mark.parametrize("key", [PROXY_KEY, OTHER_PROXY_KEY])
@pytest.mark.parametrize("how", ["x-api-key", "bearer", "bearer-lowercase"])
def test_a_valid_proxy_key_is_accepted_and_never_forwarded(tmp_path, fake_upstream, mode, key, how):
    make = translation_client if mode == "translation" else passthrough_client
    client = make(tmp_path, fake_upstream, PROXY_API_KEYS=f"{PROXY_KEY},{OTHER_PROXY_KEY}")
    headers = {"x-api-key": key} if how == "x-api-key" else {
        "authorization": ("Bearer " if how == "bearer" else "bearer ") + key}
    for stream in (False, True):
        resp = client.post("/v1/messages", json=dict(MESSAGE, stream=stream), headers=headers)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        if stream:
            assert resp.get_data(as_text=True).rstrip().endswith('data: {"type":"message_stop"}')
        else:
            assert resp.get_json()["content"][0]["text"] == "Hello from the fake upstream."
    sent = fake_upstream.requests()
    assert len(sent) == 2
    for entry in sent:
        seen = everything_sent(entry)
        assert key not in seen and PROXY_KEY not in seen and OTHER_PROXY_KEY not in seen
        if mode == "translation":
            assert entry["headers"]["authorization"] == "Bearer " + UPSTREAM_KEY
        else:
            # the proxy key is not a credential: the configured key goes upstream instead
            assert entry["headers"]["x-api-key"] == ANTHROPIC_KEY
            assert "authorization" not in entry["headers"]


def test_translation_does_not_use_the_proxy_key_as_the_upstream_key(tmp_path, fake_upstream):
    """Without CLAUDE_CODE_PROXY_API_KEY the client's own key goes upstream, but never the proxy's key."""
    client = make_client(tmp_path, ANTHROPIC_PROXY_BASE_URL=fake_upstream.url, PROXY_API_KEYS=PROXY_KEY)
    assert_error(client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": PROXY_KEY}),
                 401, "authentication_error")
    assert fake_upstream.requests() == []


def test_without_proxy_keys_access_stays_open(tmp_path, fake_upstream):
    client = translation_client(tmp_path, fake_upstream)
    assert client.post("/v1/messages", json=MESSAGE).status_code == 200
    assert client.get("/token-stats").status_code == 200
    assert "credentials" in client.get("/").get_json()


# ---------------------------------------------------------------- operator data


def test_token_stats_is_protected(tmp_path, fake_upstream):
    client = translation_client(tmp_path, fake_upstream, PROXY_API_KEYS=PROXY_KEY)
    assert_error(client.get("/token-stats"), 401, "authentication_error")
    assert_error(client.get("/token-stats", headers={"x-api-key": "nope-nope-nope-nope"}), 401,
                 "authentication_error")
    assert_error(client.get("/token-stats?since=2020-01-01"), 401, "authentication_error")
    for headers in ({"x-api-key": PROXY_KEY}, {"authorization": "Bearer " + PROXY_KEY}):
        resp = client.get("/token-stats", headers=headers)
        assert resp.status_code == 200 and resp.get_json()["status"] == "ok"


def test_health_is_bare_liveness_without_a_key_and_detailed_with_it(tmp_path, fake_upstream):
    cred = write_cred(tmp_path / "team1.json", {"type": "api_key", "api_key": TEAM_ANTHROPIC_KEY})
    client = passthrough_client(tmp_path, fake_upstream, PROXY_API_KEYS=PROXY_KEY,
                                DOMAIN_CREDENTIAL_MAPPING=json.dumps({"team1.example.com": cred}),
                                TELEMETRY_ENDPOINT="http://127.0.0.1:9/telemetry")
    bare = client.get("/")
    assert bare.status_code == 200
    body = bare.get_json()
    assert body["status"] == "ok"
    leaked = set(body) - {"status", "service", "version", "mode", "details"}
    assert not leaked, f"unauthenticated GET / shows {sorted(leaked)}"
    text = bare.get_data(as_text=True)
    for private in ("team1", "127.0.0.1", fake_upstream.url, "credentials", "storage", "telemetry"):
        assert private not in text
    assert client.head("/").status_code == 200  # load balancers' health checks need no key

    for headers in ({"x-api-key": PROXY_KEY}, {"authorization": "Bearer " + PROXY_KEY}):
        detailed = client.get("/", headers=headers).get_json()
        assert detailed["credentials"]["team1.example.com"]["valid"] is True
        assert detailed["upstream"] == fake_upstream.url
        assert detailed["features"]["accessControl"] is True


# ---------------------------------------------------------------- per-domain client_api_key


@pytest.fixture
def team_files(tmp_path):
    """team1 has its own proxy key; team2 has none."""
    team1 = write_cred(tmp_path / "team1.json", {"type": "api_key", "api_key": TEAM_ANTHROPIC_KEY,
                                                 "client_api_key": TEAM_KEY})
    team2 = write_cred(tmp_path / "team2.json", {"type": "api_key",
                                                 "api_key": "sk-ant-api03-team2file-abcdefghijklmnopqrstuvwxyz01234"})
    return {"team1.example.com": team1, "team2.example.com": team2}


def test_domain_client_api_key_is_required_for_that_domain(tmp_path, fake_upstream, team_files):
    client = passthrough_client(tmp_path, fake_upstream, DOMAIN_CREDENTIAL_MAPPING=json.dumps(team_files))
    team1 = {"Host": "team1.example.com"}
    assert_error(client.post("/v1/messages", json=MESSAGE, headers=team1), 401, "authentication_error")
    assert_error(client.post("/v1/messages", json=MESSAGE, headers={**team1, "x-api-key": "sk-ant-api03-"
                                                                     "someone-elses-key-0123456789abc"}),
                 401, "authentication_error")
    # the port does not matter, nor the case of the host
    assert_error(client.post("/v1/messages", json=MESSAGE, headers={"Host": "TEAM1.example.com:8443"}),
                 401, "authentication_error")
    assert fake_upstream.requests() == []

    for headers in ({"x-api-key": TEAM_KEY}, {"authorization": "Bearer " + TEAM_KEY}):
        resp = client.post("/v1/messages", json=MESSAGE, headers={"Host": "team1.example.com:8443", **headers})
        assert resp.status_code == 200, resp.get_data(as_text=True)
    sent = fake_upstream.requests()
    assert len(sent) == 2
    for entry in sent:
        assert entry["headers"]["x-api-key"] == TEAM_ANTHROPIC_KEY
        assert TEAM_KEY not in everything_sent(entry)

    # once any client key exists, every Host needs a key valid for it: team2 has none, so it is closed
    fake_upstream.reset()
    assert_error(client.post("/v1/messages", json=MESSAGE, headers={"Host": "team2.example.com"}),
                 401, "authentication_error")
    # team1's key opens nothing on another domain, and is never sent upstream there
    assert_error(client.post("/v1/messages", json=MESSAGE, headers={"Host": "team2.example.com", "x-api-key": TEAM_KEY}),
                 401, "authentication_error")
    assert fake_upstream.requests() == []


def test_a_domain_client_api_key_is_not_an_admin_key(tmp_path, fake_upstream, team_files):
    """Operator data (every team's usage, the credential files) needs PROXY_API_KEYS, on any Host."""
    client = passthrough_client(tmp_path, fake_upstream, DOMAIN_CREDENTIAL_MAPPING=json.dumps(team_files))
    for host in ("team1.example.com", "stranger.example.net", "localhost"):
        for headers in ({"Host": host}, {"Host": host, "x-api-key": TEAM_KEY}):
            assert_error(client.get("/token-stats", headers=headers), 401, "authentication_error")
            assert "credentials" not in client.get("/", headers=headers).get_json()
    client = passthrough_client(tmp_path, fake_upstream, DOMAIN_CREDENTIAL_MAPPING=json.dumps(team_files),
                                PROXY_API_KEYS=PROXY_KEY)
    admin = {"Host": "stranger.example.net", "authorization": "Bearer " + PROXY_KEY}
    assert client.get("/token-stats", headers=admin).status_code == 200
    assert "credentials" in client.get("/", headers=admin).get_json()


def test_a_protected_teams_credential_is_never_lent_to_an_unmapped_host(tmp_path, fake_upstream):
    team1 = write_cred(tmp_path / "team1.json", {"type": "api_key", "api_key": TEAM_ANTHROPIC_KEY,
                                                 "client_api_key": TEAM_KEY})
    client = make_client(tmp_path, PROXY_MODE="passthrough", CLAUDE_API_BASE_URL=fake_upstream.url,
                         DOMAIN_CREDENTIAL_MAPPING=json.dumps({"team1.example.com": team1}))
    resp = client.post("/v1/messages", json=MESSAGE, headers={"Host": "stranger.example.net"})
    assert_error(resp, 401, "authentication_error")
    assert all(TEAM_ANTHROPIC_KEY not in everything_sent(e) for e in fake_upstream.requests())


def test_strict_mapping_refuses_unmapped_hosts(tmp_path, fake_upstream, team_files):
    client = passthrough_client(tmp_path, fake_upstream, DOMAIN_CREDENTIAL_MAPPING=json.dumps(team_files),
                                STRICT_DOMAIN_MAPPING="true")
    assert_error(client.post("/v1/messages", json=MESSAGE, headers={"Host": "stranger.example.net"}),
                 401, "authentication_error")
    assert fake_upstream.requests() == []


def test_translation_mode_honours_a_domain_client_api_key(tmp_path, fake_upstream):
    """A credential file used in translation mode for its client key (and Slack block) still protects the domain."""
    cred = write_cred(tmp_path / "team1.json", {"type": "api_key", "api_key": "unused-in-translation-0123456789",
                                                "client_api_key": TEAM_KEY})
    client = translation_client(tmp_path, fake_upstream, DOMAIN_CREDENTIAL_MAPPING=json.dumps({"team1.example.com": cred}))
    assert_error(client.post("/v1/messages", json=MESSAGE, headers={"Host": "team1.example.com"}), 401,
                 "authentication_error")
    resp = client.post("/v1/messages", json=MESSAGE, headers={"Host": "team1.example.com", "x-api-key": TEAM_KEY})
    assert resp.status_code == 200
    assert TEAM_KEY not in everything_sent(fake_upstream.requests()[0])


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_a_client_api_key_in_a_file_without_a_credential_still_protects_the_domain(tmp_path, fake_upstream, mode):
    """Translation mode needs no Anthropic credential, so a team's file may hold only its client key and
    Slack block; the key must not be ignored because the credential part is absent (it used to be: fail-open)."""
    cred = write_cred(tmp_path / "team1.json", {"client_api_key": TEAM_KEY, "slack": {"enabled": False}})
    make = translation_client if mode == "translation" else passthrough_client
    client = make(tmp_path, fake_upstream, DOMAIN_CREDENTIAL_MAPPING=json.dumps({"team1.example.com": cred}))
    assert_error(client.post("/v1/messages", json=MESSAGE, headers={"Host": "team1.example.com"}), 401,
                 "authentication_error")
    assert_error(client.get("/token-stats", headers={"Host": "team1.example.com"}), 401, "authentication_error")
    assert fake_upstream.requests() == []
    if mode == "translation":
        resp = client.post("/v1/messages", json=MESSAGE, headers={"Host": "team1.example.com", "x-api-key": TEAM_KEY})
        assert resp.status_code == 200


# ---------------------------------------------------------------- the upstream is the operator's choice


@pytest.fixture
def canary():
    c = CountingListener()
    yield c
    c.close()


def _steering_headers(target: str) -> dict:
    return {"Host": target, "X-Forwarded-Host": target, "X-Forwarded-Proto": "http", "X-Forwarded-Port":
            target.rsplit(":", 1)[-1], "Forwarded": f"host={target};proto=http", "X-Original-URL":
            f"http://{target}/v1/messages", "X-Rewrite-URL": f"http://{target}/v1/messages",
            "X-Upstream": f"http://{target}", "X-Base-URL": f"http://{target}",
            "anthropic-base-url": f"http://{target}", "openai-base-url": f"http://{target}"}


def _steering_body(target: str) -> dict:
    url = f"http://{target}"
    return dict(MESSAGE, base_url=url, api_base=url, baseURL=url, url=url, endpoint=url + "/chat/completions",
                upstream=url, host=target, metadata={"user_id": "u", "base_url": url})


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_no_header_or_body_field_changes_where_the_proxy_connects(tmp_path, fake_upstream, canary, mode):
    make = translation_client if mode == "translation" else passthrough_client
    client = make(tmp_path, fake_upstream)
    target = f"127.0.0.1:{canary.port}"
    for stream in (False, True):
        resp = client.post("/v1/messages", json=dict(_steering_body(target), stream=stream),
                           headers=_steering_headers(target))
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert b"message_stop" in resp.get_data() or resp.get_json()["type"] == "message"
    if mode == "passthrough":
        for path in (f"/v1/messages/..%2F..%2F@{target}", f"/v1//{target}/v1/messages", "/v1/models"):
            client.get(path, headers=_steering_headers(target))
    time.sleep(0.3)
    assert canary.count == 0
    assert len(fake_upstream.requests()) >= 2


def test_absolute_uri_request_lines_do_not_change_the_upstream(fake_upstream, canary):
    """`POST http://evil/v1/messages HTTP/1.1` on the real server: still the configured upstream."""
    target = f"127.0.0.1:{canary.port}"
    env = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": fake_upstream.url, "CLAUDE_API_KEY": ANTHROPIC_KEY}
    with ProxyServer(env) as proxy:
        body = json.dumps(MESSAGE).encode()
        for line in (f"POST http://{target}/v1/messages HTTP/1.1", f"POST //{target}/v1/messages HTTP/1.1"):
            request = (f"{line}\r\nHost: {target}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(request)
                data = b""
                while True:
                    part = s.recv(65536)
                    if not part:
                        break
                    data += part
            status = int(data.split(b" ", 2)[1])
            assert status == 200 or 400 <= status < 500, data[:500]
        time.sleep(0.3)
        assert canary.count == 0


def _raw_request(port: int, head: str, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode("latin-1") + body)
        data = b""
        while True:
            part = s.recv(65536)
            if not part:
                return data
            data += part


def test_passthrough_paths_cannot_leave_the_api_tree(fake_upstream):
    """Dot segments, however spelled, must not reach upstream endpoints outside /v1/ with the operator's key.

    The client's path used to be forwarded percent-decoded, so `/v1/..%2F..%2Fapi/oauth/profile` reached
    `/api/oauth/profile` (and `%3F`, `%23` turned into a query string or a fragment)."""
    env = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": fake_upstream.url + "/base",
           "CLAUDE_API_KEY": ANTHROPIC_KEY}
    with ProxyServer(env) as proxy:
        for path in ("/v1/..%2F..%2Fapi%2Foauth%2Fprofile", "/v1/../api/x", "/v1/%2e%2e/%2e%2e/api/y",
                     "/v1/%2E%2E%2F%2E%2E%2Fapi", "/v1/models/..", "/v1/./models/%2e./..%2f..%2fz"):
            data = _raw_request(proxy.port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert data.startswith(b"HTTP/1.1 4"), (path, data[:300])
            assert b'"type": "error"' in data or b'"type":"error"' in data
        for path, upstream in (("/v1/models%3Fa=b", "/base/v1/models?a=b"), ("/v1/x%23frag", "/base/v1/x#frag")):
            _raw_request(proxy.port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert fake_upstream.requests()[-1]["path"] == upstream
            assert fake_upstream.requests()[-1]["query"] == ""
    paths = [e["path"] for e in fake_upstream.requests()]
    assert all(p.startswith("/base/v1/") for p in paths), paths


# ---------------------------------------------------------------- credential file permissions


def test_world_readable_credential_file_gets_a_startup_warning(tmp_path, fake_upstream):
    loose = write_cred(tmp_path / "loose.json", {"type": "api_key", "api_key": TEAM_ANTHROPIC_KEY}, mode=0o644)
    tight = write_cred(tmp_path / "tight.json", {"type": "api_key",
                                                 "api_key": "sk-ant-api03-tightfile-abcdefghijklmnopqrstuvwxyz012"})
    env = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": fake_upstream.url,
           "DOMAIN_CREDENTIAL_MAPPING": json.dumps({"loose.example.com": loose, "tight.example.com": tight})}
    with ProxyServer(env) as proxy:
        deadline = time.monotonic() + 10
        while "accessible by other users" not in proxy.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        output = proxy.output()
    lines = [line for line in output.splitlines() if "accessible by other users" in line]
    assert lines, output
    assert all("loose.example.com" in line and "chmod 600" in line for line in lines)
    assert not any("tight.example.com" in line for line in lines)
    assert TEAM_ANTHROPIC_KEY not in output


def test_a_mapped_domain_whose_file_cannot_be_read_fails_closed(tmp_path):
    """Its file may hold the client_api_key that protects it: unknown means refused, not open."""
    from app import create_app
    from config.settings import Settings

    settings = Settings.from_env({
        "USAGE_DB_PATH": str(tmp_path / "u.sqlite3"), "TOKEN_REPORT_INTERVAL": "0",
        "CLAUDE_CODE_PROXY_API_KEY": "upstream-key-for-translation",
        "DOMAIN_CREDENTIAL_MAPPING": json.dumps({"team.example.com": str(tmp_path / "missing.json")}),
    })
    client = create_app(settings, start_background=False).test_client()
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    resp = client.post("/v1/messages", json=body, headers={"Host": "team.example.com"})
    assert resp.status_code == 401 and resp.get_json()["error"]["type"] == "authentication_error"
    assert "cannot be read" in resp.get_json()["error"]["message"]
