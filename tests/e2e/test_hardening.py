"""Access control on every Host, bounded work per event, bounded accounting, and no 500 from odd values,
each reproduced against the proxy as users run it (gunicorn + gevent, tests.fakes.server.ProxyServer)."""
from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fakes.server import FakeUpstream, ProxyServer

pytestmark = pytest.mark.timeout(240)

ADMIN_KEY = "nexus-admin-key-5e1f0a9c8b7d6e5f4a3b2c1d"
TEAM_KEY = "team-a-client-key-1b2c3d4e5f6a7b8c9d0e"
TEAM_B_KEY = "team-b-client-key-0f9e8d7c6b5a4f3e2d1c"
UPSTREAM_KEY = "sk-hardening-upstream-key-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-api03-hardening-env-key-0123456789abcdefghij"
TEAM_ANTHROPIC_KEY = "sk-ant-api03-hardening-team-a-0123456789abcdefghij"
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def fake():
    with FakeUpstream() as upstream:
        yield upstream


def request(proxy: ProxyServer, method: str, path: str, body=None, headers: dict | None = None,
            host: str | None = "127.0.0.1", timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """One request over a raw socket, so the Host header (or its absence, with HTTP/1.0) is the test's choice."""
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    lines = [f"{method} {path} HTTP/{'1.1' if host is not None else '1.0'}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(raw)}"]
    lines.append("Connection: close")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + raw)
        data = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    out_headers = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        out_headers[k.strip().lower()] = v.strip()
    if out_headers.get("transfer-encoding") == "chunked":
        rest = _dechunk(rest)
    return int(status_line.split()[1]), out_headers, rest


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out


def error_of(status: int, body: bytes) -> dict:
    data = json.loads(body)
    assert data["type"] == "error", data
    return data["error"]


def write_cred(path: Path, data) -> str:
    path.write_text(json.dumps(data))
    os.chmod(path, 0o600)
    return str(path)


def stats(proxy: ProxyServer, wait_for=lambda s: True, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = request(proxy, "GET", "/token-stats", headers={"x-api-key": ADMIN_KEY})
        assert status == 200, body
        result = json.loads(body)["stats"]
        if wait_for(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.3)


def everything_sent(fake: FakeUpstream) -> str:
    return json.dumps(fake.requests())


# ---------------------------------------------------------------- access control


@pytest.fixture(scope="module")
def key_only_files(tmp_path_factory) -> dict:
    """Credential files holding only a `client_api_key`, as docs/security.md presents them for translation."""
    folder = tmp_path_factory.mktemp("teams")
    return {"team-a.example.com": write_cred(folder / "a.json", {"client_api_key": TEAM_KEY}),
            "team-b.example.com": write_cred(folder / "b.json", {"client_api_key": TEAM_B_KEY})}


UNMAPPED_HOSTS = ["localhost", "127.0.0.1", "10.1.2.3", "[::1]:3000", "anything.example.org", None]


@pytest.mark.parametrize("strict", ["true", "false"])
def test_translation_with_team_keys_is_not_an_open_relay_for_other_hosts(fake, key_only_files, strict):
    env = {"PROXY_MODE": "translation", "ANTHROPIC_PROXY_BASE_URL": fake.url, "CLAUDE_CODE_PROXY_API_KEY": UPSTREAM_KEY,
           "DOMAIN_CREDENTIAL_MAPPING": json.dumps(key_only_files), "STRICT_DOMAIN_MAPPING": strict}
    with ProxyServer(env) as proxy:
        fake.reset()
        for host in UNMAPPED_HOSTS:
            for headers in ({}, {"x-api-key": "made-up-key-0000000000"}, {"x-api-key": TEAM_KEY}):
                status, _, body = request(proxy, "POST", "/v1/messages", MESSAGE, headers, host=host)
                assert status == 401, (host, headers, body)
                assert error_of(status, body)["type"] == "authentication_error"
        # a team's key opens its own Host only
        status, _, body = request(proxy, "POST", "/v1/messages", MESSAGE, {"x-api-key": TEAM_KEY},
                                  host="team-b.example.com")
        assert status == 401
        assert fake.requests() == []
        status, _, body = request(proxy, "POST", "/v1/messages", MESSAGE, {"authorization": "Bearer " + TEAM_KEY},
                                  host="Team-A.example.com:443")
        assert status == 200, body
        assert TEAM_KEY not in everything_sent(fake)


def test_strict_mapping_refuses_unmapped_hosts_in_translation_mode_even_without_keys(fake, tmp_path):
    team = write_cred(tmp_path / "a.json", {"slack": {"enabled": False}})
    env = {"PROXY_MODE": "translation", "ANTHROPIC_PROXY_BASE_URL": fake.url, "CLAUDE_CODE_PROXY_API_KEY": UPSTREAM_KEY,
           "DOMAIN_CREDENTIAL_MAPPING": json.dumps({"team-a.example.com": team}), "STRICT_DOMAIN_MAPPING": "true"}
    with ProxyServer(env) as proxy:
        fake.reset()
        for host in UNMAPPED_HOSTS:
            status, _, body = request(proxy, "POST", "/v1/messages", MESSAGE, host=host)
            assert status == 401, (host, body)
        assert fake.requests() == []
        assert request(proxy, "POST", "/v1/messages", MESSAGE, host="team-a.example.com")[0] == 200


def test_admin_views_need_an_admin_key_when_only_team_keys_exist(fake, key_only_files):
    env = {"PROXY_MODE": "translation", "ANTHROPIC_PROXY_BASE_URL": fake.url, "CLAUDE_CODE_PROXY_API_KEY": UPSTREAM_KEY,
           "DOMAIN_CREDENTIAL_MAPPING": json.dumps(key_only_files)}
    with ProxyServer(env) as proxy:
        for host in ("team-a.example.com", "localhost", "unmapped.example.org", None):
            for headers in ({}, {"x-api-key": TEAM_KEY}, {"authorization": "Bearer " + TEAM_B_KEY}):
                status, _, body = request(proxy, "GET", "/token-stats", headers=headers, host=host)
                assert status == 401, (host, headers, body)
                status, _, body = request(proxy, "GET", "/", headers=headers, host=host)
                health = json.loads(body)
                assert status == 200 and set(health) <= {"status", "service", "version", "mode", "details"}, health
                assert "a.json" not in body.decode()


@pytest.mark.parametrize("value", [12345, ["team-a-key"], {"k": "v"}, True, "   "])
def test_a_client_api_key_that_is_not_a_string_stops_start_up_naming_the_file(fake, tmp_path, value):
    path = write_cred(tmp_path / "team-a.json", {"type": "api_key", "api_key": TEAM_ANTHROPIC_KEY,
                                                 "client_api_key": value})
    env = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": fake.url,
           "DOMAIN_CREDENTIAL_MAPPING": json.dumps({"team-a.example.com": path})}
    proxy = ProxyServer(env, timeout=15)
    with pytest.raises(RuntimeError) as exc:
        proxy.start()
    assert "exited with 2" in str(exc.value)
    lines = [line for line in proxy.output().splitlines() if line.startswith("Configuration error")]
    assert len(lines) == 1 and "team-a.json" in lines[0] and "client_api_key" in lines[0], proxy.output()
    assert TEAM_ANTHROPIC_KEY not in proxy.output()


def test_a_team_key_is_never_forwarded_from_an_unmapped_or_missing_host(fake, tmp_path):
    team = write_cred(tmp_path / "a.json", {"type": "api_key", "api_key": TEAM_ANTHROPIC_KEY,
                                            "client_api_key": TEAM_KEY})
    env = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": fake.url, "CLAUDE_API_KEY": ANTHROPIC_KEY,
           "DOMAIN_CREDENTIAL_MAPPING": json.dumps({"team-a.example.com": team})}
    with ProxyServer(env) as proxy:
        fake.reset()
        for host in ("nginx-upstream", "localhost", None):
            for headers in ({"x-api-key": TEAM_KEY}, {"authorization": "Bearer " + TEAM_KEY},
                            {"x-api-key": " ", "authorization": "Bearer " + TEAM_KEY}):
                status, _, body = request(proxy, "POST", "/v1/messages", MESSAGE, headers, host=host)
                assert status == 401, (host, headers, body)
        assert TEAM_KEY not in everything_sent(fake)
        status, _, body = request(proxy, "POST", "/v1/messages", MESSAGE, {"x-api-key": TEAM_KEY},
                                  host="team-a.example.com")
        assert status == 200, body
        sent = fake.requests()
        assert sent[-1]["headers"]["x-api-key"] == TEAM_ANTHROPIC_KEY and TEAM_KEY not in everything_sent(fake)


# ---------------------------------------------------------------- one huge event


class HugeEventUpstream:
    """Answers every POST with a stream whose second event is `size` bytes long, written as fast as it goes."""

    def __init__(self, size: int) -> None:
        self.size = size
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                try:
                    owner._stream(self.path, self.wfile)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _stream(self, path: str, wfile) -> None:
        if path.endswith("/chat/completions"):
            first = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
                     b'"delta":{"role":"assistant","content":"start "},"finish_reason":null}]}\n\n')
            head = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"'
            tail = b'"},"finish_reason":null}]}\n\ndata: [DONE]\n\n'
        else:
            first = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
                     b'"role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,'
                     b'"usage":{"input_tokens":5,"output_tokens":1}}}\n\n')
            head = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                    b'"delta":{"type":"text_delta","text":"')
            tail = b'"}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
        wfile.write(first + head)
        piece = b"x" * 65536
        for _ in range(self.size // len(piece)):
            wfile.write(piece)
        wfile.write(tail)
        wfile.flush()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def huge_upstream():
    server = HugeEventUpstream(20 * 1024 * 1024)
    yield server
    server.stop()


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_one_huge_event_ends_its_stream_with_an_error_and_the_worker_keeps_serving(huge_upstream, mode):
    env = {"PROXY_MODE": mode, "ANTHROPIC_PROXY_BASE_URL": huge_upstream.url, "CLAUDE_API_BASE_URL": huge_upstream.url,
           "CLAUDE_CODE_PROXY_API_KEY": UPSTREAM_KEY, "CLAUDE_API_KEY": ANTHROPIC_KEY, "STREAM_PING_INTERVAL": "0"}
    with ProxyServer(env) as proxy:  # one worker: the huge stream and the other clients share it
        result = {}

        def big() -> None:
            result["answer"] = request(proxy, "POST", "/v1/messages", dict(MESSAGE, stream=True), timeout=120)

        reader = threading.Thread(target=big)
        reader.start()
        slowest = 0.0
        while reader.is_alive():
            t0 = time.monotonic()
            status, _, _ = request(proxy, "GET", "/", timeout=60)
            slowest = max(slowest, time.monotonic() - t0)
            assert status == 200
            time.sleep(0.05)
        reader.join()
        assert slowest < 2.0, f"another client waited {slowest:.1f}s while one stream carried a 20 MB event"
        status, _, body = result["answer"]
        assert status == 200
        assert body.rstrip().endswith(b"}"), body[-300:]
        last = body.rstrip().rsplit(b"\n\n", 1)[-1]
        assert last.startswith(b"event: error\ndata: "), last[:300]
        error = json.loads(last.split(b"data: ", 1)[1])["error"]
        assert error["type"] == "api_error" and "MAX_SSE_EVENT_MB" in error["message"]
        assert len(body) < 18 * 1024 * 1024
        # the worker is the same one and still answers
        assert request(proxy, "GET", "/")[0] == 200
        assert "Traceback" not in proxy.output()


# ---------------------------------------------------------------- bounded accounting


def test_refused_requests_go_to_one_bucket_and_made_up_hosts_are_bounded(fake, tmp_path):
    team = write_cred(tmp_path / "a.json", {"type": "api_key", "api_key": TEAM_ANTHROPIC_KEY,
                                            "client_api_key": TEAM_KEY})
    env = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": fake.url, "PROXY_API_KEYS": ADMIN_KEY,
           "DOMAIN_CREDENTIAL_MAPPING": json.dumps({"team-a.example.com": team}), "USAGE_MAX_UNMAPPED_HOSTS": "3"}
    with ProxyServer(env) as proxy:
        for _ in range(25):
            assert request(proxy, "POST", "/v1/messages", MESSAGE, host="team-a.example.com")[0] == 401
        for i in range(300):
            assert request(proxy, "POST", "/v1/messages", MESSAGE, host=f"made-up-{i}.example.net")[0] == 401
        assert request(proxy, "POST", "/v1/messages", MESSAGE, {"x-api-key": TEAM_KEY},
                       host="team-a.example.com")[0] == 200
        # the admin key passes on any Host: 10 distinct unmapped names, at most 3 of them tracked
        for i in range(10):
            assert request(proxy, "POST", "/v1/messages", MESSAGE, {"x-api-key": ADMIN_KEY},
                           host=f"host-{i}.example.net")[0] == 401  # no credential for an unmapped host
        result = stats(proxy, lambda s: s.get("unauthenticated", {}).get("requestCount", 0) >= 325
                       and sum(d["requestCount"] for d in s.values()) >= 336)
        assert result["team-a.example.com"]["requestCount"] == 1
        assert result["team-a.example.com"]["errorCount"] == 0
        assert result["unauthenticated"]["requestCount"] == 325 and result["unauthenticated"]["errorCount"] == 325
        others = {d for d in result if d.startswith("host-")}
        assert len(others) == 3 and result["other-hosts"]["requestCount"] == 7
        assert len(result) == 1 + 1 + 3 + 1, sorted(result)


# ---------------------------------------------------------------- odd values


@pytest.fixture(scope="module")
def plain(fake):
    """One proxy per mode, without client keys."""
    env = {"ANTHROPIC_PROXY_BASE_URL": fake.url, "CLAUDE_API_BASE_URL": fake.url,
           "CLAUDE_CODE_PROXY_API_KEY": UPSTREAM_KEY, "CLAUDE_API_KEY": ANTHROPIC_KEY}
    with ProxyServer(dict(env, PROXY_MODE="translation")) as translation, \
            ProxyServer(dict(env, PROXY_MODE="passthrough")) as passthrough:
        yield {"translation": translation, "passthrough": passthrough}


@pytest.mark.parametrize("messages", ["5", "1.5", "true", str(2 ** 64), "null", '"text"', '{"a": 1}'])
def test_passthrough_forwards_odd_message_types_for_the_upstream_to_judge(fake, plain, messages):
    proxy = plain["passthrough"]
    host = "odd-%d.example.com" % abs(hash(messages))
    fake.reset()
    fake.script("/v1/messages", [{"status": 400}])
    raw = b'{"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": %s}' % messages.encode()
    status, _, body = request(proxy, "POST", "/v1/messages", raw, host=host)
    assert status == 400 and error_of(status, body)["type"] == "invalid_request_error"
    assert len(fake.requests("/v1/messages")) == 1
    result = stats(proxy, lambda s: host in s)
    assert result[host]["requestCount"] == 1 and result[host]["errorCount"] == 1
    assert "Traceback" not in proxy.output()


HUGE_USAGE_JSON = (b'{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text",'
                   b'"text":"ok"}],"stop_reason":"end_turn","stop_sequence":null,'
                   b'"usage":{"input_tokens":1e999,"output_tokens":3}}')


def test_an_upstream_usage_of_1e999_is_relayed_untouched_in_passthrough(fake, plain):
    stream = [
        {"event": "message_start", "data": {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 7, "output_tokens": 1}}}},
        'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        '"usage":{"output_tokens":1e999}}',
        {"event": "message_stop", "data": {"type": "message_stop"}},
    ]
    proxy = plain["passthrough"]
    fake.reset()
    fake.script("/v1/messages", [{"body": HUGE_USAGE_JSON.decode(), "headers": {"content-type": "application/json"}},
                                 {"sse": stream}])
    status, _, body = request(proxy, "POST", "/v1/messages", MESSAGE, host="huge-usage.example.com")
    assert status == 200 and body == HUGE_USAGE_JSON
    status, _, body = request(proxy, "POST", "/v1/messages", dict(MESSAGE, stream=True), host="huge-usage.example.com")
    assert status == 200
    assert b'"usage":{"output_tokens":1e999}}' in body and body.endswith(b'data: {"type":"message_stop"}\n\n')
    assert b"event: error" not in body
    result = stats(proxy, lambda s: s.get("huge-usage.example.com", {}).get("requestCount") == 2)
    assert result["huge-usage.example.com"]["errorCount"] == 0
    # 3 from the JSON answer, 1 from message_start: the infinite count in message_delta counts as nothing
    assert result["huge-usage.example.com"]["outputTokens"] == 4
    assert "Traceback" not in proxy.output()


def test_an_upstream_usage_of_1e999_in_translation_is_answered(fake, plain):
    answer = ('{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
              '"message":{"role":"assistant","content":"ok","tool_calls":[{"id":"call_1","type":"function",'
              '"function":{"name":"f","arguments":"{\\"n\\": 1e999}"}}]},"finish_reason":"tool_calls"}],'
              '"usage":{"prompt_tokens":1e999,"completion_tokens":2,"total_tokens":1e999}}')
    fake.reset()
    fake.script("/chat/completions", [{"body": answer, "headers": {"content-type": "application/json"}}])
    status, _, body = request(plain["translation"], "POST", "/v1/messages", MESSAGE)
    assert status == 200, body
    message = json.loads(body, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert message["usage"]["output_tokens"] == 2
    assert message["content"][1]["input"] == {"_raw": '{"n": 1e999}'}


@pytest.mark.parametrize("value", ["1e400", "nan", "NaN", "inf", "-inf", "-1e20", "1e300"])
@pytest.mark.parametrize("name", ["since", "until"])
def test_token_stats_with_an_impossible_time_is_a_400_naming_it(plain, value, name):
    status, headers, body = request(plain["translation"], "GET", f"/token-stats?{name}={value}")
    assert status == 400, body
    error = error_of(status, body)
    assert error["type"] == "invalid_request_error" and error["message"].startswith(name + ":")


def test_a_number_too_large_for_json_is_a_400_not_infinity_upstream(fake, plain):
    stats_proxy = plain["translation"]
    fake.reset()
    tool = b'{"name": "calc", "description": "d", "input_schema": {"type": "object", "properties": {"n": {"type": "number", "maximum": 1e999}}}}'
    raw = (b'{"model": "claude-sonnet-4-5", "max_tokens": 8, "tools": [%s], '
           b'"messages": [{"role": "user", "content": "hi"}]}' % tool)
    status, _, body = request(stats_proxy, "POST", "/v1/messages", raw)
    assert status == 400, body
    assert "1e999" in error_of(status, body)["message"]
    tool_use = (b'{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
                b'"content": [{"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"n": 1e999}}]}, '
                b'{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]}')
    status, _, body = request(stats_proxy, "POST", "/v1/messages", tool_use)
    assert status == 400, body
    assert fake.requests() == []


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
@pytest.mark.parametrize("path", ["/v1//messages", "/v1/messages//count_tokens", "/v1//models"])
def test_a_doubled_slash_is_an_anthropic_404_never_a_redirect(fake, plain, mode, path):
    fake.reset()
    status, headers, body = request(plain[mode], "POST", path, MESSAGE, host="evil.example.com")
    assert status == 404, (status, headers, body)
    assert "location" not in headers and headers["content-type"].startswith("application/json")
    assert error_of(status, body)["type"] == "not_found_error"
    assert fake.requests() == []
