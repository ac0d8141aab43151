"""Random and malformed input: always a 4xx Anthropic error (or a correct answer), never a 500 or a traceback.

Bodies go through the Flask test client (both modes, DEBUG on and off) in front of the real fake
upstream; what only the real server decides (body limits on the wire, header limits, HTTP/1.0 without
Host, repeated headers) is sent to gunicorn on raw sockets.
"""
from __future__ import annotations

import functools
import json
import os
import socket
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from app import create_app
from config.settings import Settings
from tests.fakes.server import FakeUpstream, ProxyServer

VALID = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
ERROR_TYPES = {"invalid_request_error", "authentication_error", "billing_error", "permission_error",
               "not_found_error", "request_too_large", "rate_limit_error", "api_error", "timeout_error",
               "overloaded_error"}
HYPOTHESIS = settings(max_examples=150, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fake():
    with FakeUpstream() as server:
        yield server


_TMP = tempfile.mkdtemp(prefix="bad-input-")


@functools.lru_cache(maxsize=None)
def _app(mode: str, debug: bool, upstream: str):
    env = {"USAGE_DB_PATH": ":memory:", "TOKEN_REPORT_INTERVAL": "0", "CLIENT_SETUP_DIR": _TMP,
           "STREAM_PING_INTERVAL": "0", "UPSTREAM_MAX_RETRIES": "0", "DEBUG": "true" if debug else "false",
           "PROXY_MODE": mode}
    if mode == "translation":
        env.update(ANTHROPIC_PROXY_BASE_URL=upstream, CLAUDE_CODE_PROXY_API_KEY="sk-bad-input-upstream-0123456789")
    else:
        env.update(CLAUDE_API_BASE_URL=upstream, CLAUDE_API_KEY="sk-ant-api03-bad-input-0123456789abcdefghij")
    return create_app(Settings.from_env(env), start_background=False)


def client(mode: str, fake, debug: bool = False):
    return _app(mode, debug, fake.url).test_client()


def check(resp, allow_ok: bool = False) -> int:
    """A well-formed Anthropic error with a 4xx status (or, if allowed, a 200 answer); never 5xx."""
    data = resp.get_data()
    assert b"Traceback" not in data
    if allow_ok and resp.status_code == 200:
        return 200
    assert 400 <= resp.status_code < 500, (resp.status_code, data[:500])
    body = json.loads(data)
    assert body["type"] == "error" and body["error"]["type"] in ERROR_TYPES, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return resp.status_code


def check_passthrough(resp) -> int:
    """Passthrough relays the upstream's verdict (this fake answers some bodies with its own 500); the proxy
    itself must still never fail: no "Internal proxy error", every answer Anthropic-shaped."""
    if resp.status_code >= 500:
        message = json.loads(resp.get_data())["error"]["message"]
        assert message.startswith("Upstream returned HTTP 5"), message
        return resp.status_code
    return check(resp, allow_ok=True)


def nested(depth: int, open_: str = "[", close: str = "]", leaf: str = "1") -> str:
    return open_ * depth + leaf + close * depth


def with_raw(field: str, raw: str) -> bytes:
    """VALID with one field's value replaced by raw JSON text (for things json.dumps cannot write)."""
    return json.dumps(dict(VALID, **{field: "@@"})).replace('"@@"', raw).encode()


MALFORMED = {
    "not-json": b"hello there",
    "empty": b"",
    "whitespace": b"   \n ",
    "array": b"[1, 2, 3]",
    "string": b'"a message"',
    "number": b"42",
    "null": b"null",
    "truncated": json.dumps(VALID).encode()[:-7],
    "trailing-garbage": json.dumps(VALID).encode() + b"}}",
    "invalid-utf8": b'{"model": "\xff\xfe", "max_tokens": 1, "messages": []}',
    "invalid-utf8-in-text": json.dumps(VALID).encode().replace(b'"hi"', b'"h\xc3\x28i"'),
    "utf16": json.dumps(VALID).encode("utf-16"),
    "nan": with_raw("temperature", "NaN"),
    "infinity": with_raw("top_p", "Infinity"),
    "huge-float": with_raw("max_tokens", "1e400"),
    "huge-int": with_raw("max_tokens", "9" * 5000),
    "big-int": with_raw("max_tokens", str(2 ** 64)),
    "negative": with_raw("max_tokens", "-1"),
    "zero": with_raw("max_tokens", "0"),
    "float-tokens": with_raw("max_tokens", "1.5"),
    "bool-tokens": with_raw("max_tokens", "true"),
    "deep-list-10000": with_raw("metadata", nested(10_000)),
    "deep-object-10000": with_raw("metadata", nested(10_000, '{"a":', "}", "1")),
    "deep-body-10000": nested(10_000).encode(),
    "lone-surrogate": json.dumps(VALID).encode().replace(b'"hi"', b'"\\ud800 hi"'),
    "nul-in-text": json.dumps(VALID).encode().replace(b'"hi"', b'"\\u0000"'),
}

WRONG_TYPES = {
    "model-number": {"model": 1},
    "model-empty": {"model": ""},
    "model-missing": {"model": None},
    "max_tokens-string": {"max_tokens": "10"},
    "max_tokens-missing": {"max_tokens": None},
    "messages-object": {"messages": {"role": "user", "content": "hi"}},
    "messages-empty": {"messages": []},
    "messages-of-numbers": {"messages": [1, 2]},
    "message-role": {"messages": [{"role": "bot", "content": "hi"}]},
    "message-no-content": {"messages": [{"role": "user"}]},
    "message-content-number": {"messages": [{"role": "user", "content": 5}]},
    "message-content-null": {"messages": [{"role": "user", "content": None}]},
    "block-not-object": {"messages": [{"role": "user", "content": ["hi"]}]},
    "block-no-type": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
    "block-unknown-type": {"messages": [{"role": "user", "content": [{"type": "hologram"}]}]},
    "text-not-string": {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
    "image-bad-source": {"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]},
    "tool-result-no-id": {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
    "tool-use-no-name": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "input": {}}]}]},
    "system-number": {"system": 5},
    "system-blocks-wrong": {"system": [{"type": "image"}]},
    "tools-object": {"tools": {"name": "x"}},
    "tool-no-name": {"tools": [{"input_schema": {"type": "object"}}]},
    "tool-schema-string": {"tools": [{"name": "x", "input_schema": "object"}]},
    "tool_choice-string": {"tool_choice": "auto"},
    "tool_choice-unknown": {"tool_choice": {"type": "sometimes"}},
    "tool_choice-tool-no-name": {"tool_choice": {"type": "tool"}},
    "thinking-string": {"thinking": "on"},
    "thinking-no-type": {"thinking": {"budget_tokens": 1024}},
    "stream-string": {"stream": "yes"},
    "temperature-string": {"temperature": "hot"},
    "temperature-high": {"temperature": 3},
    "top_p-high": {"top_p": 2},
    "top_k-negative": {"top_k": -1},
    "stop-string": {"stop_sequences": "STOP"},
    "stop-numbers": {"stop_sequences": [1, 2]},
    "metadata-list": {"metadata": ["u"]},
}


@pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_bodies_get_a_4xx_in_translation(fake, name, path, debug):
    resp = client("translation", fake, debug).post(path, data=MALFORMED[name], content_type="application/json")
    # count_tokens takes no max_tokens, and counts text without sending it anywhere
    only_messages = {"huge-float", "big-int", "negative", "zero", "float-tokens", "bool-tokens", "lone-surrogate"}
    allow_ok = name == "nul-in-text" or (path.endswith("count_tokens") and name in only_messages)
    check(resp, allow_ok=allow_ok)


@pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_bodies_never_500_in_passthrough(fake, name, debug):
    """Passthrough forwards the body for the API to judge; the proxy itself must not fail on it."""
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        resp = client("passthrough", fake, debug).post(path, data=MALFORMED[name], content_type="application/json")
        check_passthrough(resp)


@pytest.mark.parametrize("name", list(WRONG_TYPES))
def test_wrong_types_are_400_naming_the_field(fake, name):
    body = {k: v for k, v in dict(VALID, **WRONG_TYPES[name]).items() if v is not None}
    resp = client("translation", fake).post("/v1/messages", json=body)
    assert check(resp) == 400
    field = next(iter(WRONG_TYPES[name]))
    assert field.split("-")[0] in resp.get_json()["error"]["message"], resp.get_json()


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
@pytest.mark.parametrize("depth", [400, 900, 980])
def test_deep_but_parseable_nesting_is_answered_with_debug_on(fake, mode, depth):
    """Just under the JSON parser's limit: the masked debug dump used to hit the recursion limit (a 500)."""
    for field, raw in (("metadata", '{"x": %s}' % nested(depth)), ("context_management", nested(depth))):
        resp = client(mode, fake, debug=True).post("/v1/messages", data=with_raw(field, raw),
                                                   content_type="application/json")
        if mode == "passthrough":
            check_passthrough(resp)
        elif check(resp, allow_ok=True) != 200:  # over the parser's own limit: said so, as a 400
            assert "nested too deeply" in resp.get_json()["error"]["message"]


def test_a_body_over_the_limit_is_413(fake):
    resp = client("translation", fake).post("/v1/messages", data=b"{" + b" " * (50 * 1024 * 1024) + b"}",
                                            content_type="application/json")
    assert check(resp) == 413
    assert resp.get_json()["error"]["type"] == "request_too_large"


# ---------------------------------------------------------------- hypothesis


json_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_any = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=15)
FIELDS = ["model", "max_tokens", "messages", "system", "tools", "tool_choice", "thinking", "stream", "temperature",
          "top_p", "top_k", "stop_sequences", "metadata"]


@HYPOTHESIS
@given(body=st.binary(max_size=300))
def test_random_bytes_get_a_4xx(fake, body):
    check(client("translation", fake).post("/v1/messages", data=body, content_type="application/json"))


@HYPOTHESIS
@given(value=json_any)
def test_random_json_gets_a_4xx(fake, value):
    data = json.dumps(value).encode()  # NaN/Infinity included: Python writes them, strict parsers refuse them
    check(client("translation", fake).post("/v1/messages", data=data, content_type="application/json"))


@st.composite
def mutated_requests(draw):
    """A valid request with some fields (or a message's parts) replaced by random JSON."""
    body = json.loads(json.dumps(dict(VALID, messages=[
        {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "id": "t1",
                                                                          "name": "Read", "input": {"p": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}],
        tools=[{"name": "Read", "input_schema": {"type": "object", "properties": {"p": {"type": "integer"}}}}])))
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["top", "message", "block"]))
        if target == "top":
            body[draw(st.sampled_from(FIELDS))] = draw(json_any)
        elif isinstance(body.get("messages"), list) and body["messages"]:
            i = draw(st.integers(0, len(body["messages"]) - 1))
            message = body["messages"][i]
            if target == "message" or not isinstance(message, dict) or not isinstance(message.get("content"), list) \
                    or not message["content"]:
                if isinstance(message, dict):
                    message[draw(st.sampled_from(["role", "content"]))] = draw(json_any)
            else:
                block = message["content"][draw(st.integers(0, len(message["content"]) - 1))]
                if isinstance(block, dict):
                    block[draw(st.sampled_from(["type", "text", "id", "name", "input", "content", "tool_use_id",
                                                "source", "is_error"]))] = draw(json_any)
    return body


@HYPOTHESIS
@given(body=mutated_requests(), mode=st.sampled_from(["translation", "passthrough"]), debug=st.booleans())
def test_requests_with_wrong_types_anywhere_never_get_a_5xx(fake, body, mode, debug):
    body["stream"] = False if body.get("stream") is not True else True
    resp = client(mode, fake, debug).post("/v1/messages", data=json.dumps(body), content_type="application/json")
    if mode == "passthrough":
        check_passthrough(resp)
    else:
        check(resp, allow_ok=True)


# ---------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def server(fake):
    env = {"ANTHROPIC_PROXY_BASE_URL": fake.url, "CLAUDE_CODE_PROXY_API_KEY": "sk-bad-input-upstream-0123456789"}
    with ProxyServer(env) as proxy:
        yield proxy


def raw_exchange(port: int, data: bytes, read_timeout: float = 15.0) -> bytes:
    """Send raw bytes (tolerating a server that answers early and closes), return everything read."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while True:
                part = s.recv(65536)
                if not part:
                    break
                out += part
        except ConnectionResetError:
            pass
        return out


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response[:200]
    return int(response.split(b" ", 2)[1])


def still_answers(proxy: ProxyServer) -> None:
    body = json.dumps(VALID).encode()
    response = raw_exchange(proxy.port, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert status_of(response) == 200
    assert "Traceback" not in proxy.output()


def anthropic_error_of(response: bytes) -> dict:
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert body["type"] == "error" and body["error"]["type"] in ERROR_TYPES
    return body["error"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_50_mb_body_on_the_wire_is_413(server, chunked):
    size = 50 * 1024 * 1024
    payload = b'{"model": "m", "pad": "' + b"x" * size + b'"}'
    if chunked:
        step = 1024 * 1024
        body = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + step]), payload[i:i + step])
                        for i in range(0, len(payload), step)) + b"0\r\n\r\n"
        head = b"Transfer-Encoding: chunked\r\n"
    else:
        body, head = payload, b"Content-Length: %d\r\n" % len(payload)
    response = raw_exchange(server.port, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            + head + b"Connection: close\r\n\r\n" + body, read_timeout=60)
    assert status_of(response) == 413
    assert anthropic_error_of(response)["type"] == "request_too_large"
    still_answers(server)


def test_a_chunked_body_of_exactly_the_limit_is_accepted(server):
    """The over-limit check must not refuse a body that ends exactly at the limit."""
    limit = 32 * 1024 * 1024  # MAX_REQUEST_BODY_MB default
    text = json.dumps(VALID).encode()
    payload = text[:-1] + b" " * (limit - len(text)) + b"}"
    step = 1024 * 1024
    body = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + step]), payload[i:i + step])
                    for i in range(0, len(payload), step)) + b"0\r\n\r\n"
    response = raw_exchange(server.port, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body, read_timeout=60)
    assert status_of(response) == 200, response[:400]


def test_http10_without_host_is_answered(server):
    body = json.dumps(VALID).encode()
    response = raw_exchange(server.port, b"POST /v1/messages HTTP/1.0\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert status_of(response) == 200, response[:500]
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["type"] == "message"
    response = raw_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n")
    assert status_of(response) == 200
    still_answers(server)


HEADER_ABUSE = {
    "header-value-20k": b"X-Big: " + b"a" * 20_000 + b"\r\n",
    "cookie-100k": b"Cookie: " + b"c=" + b"v" * 100_000 + b"\r\n",
    "150-headers": b"".join(b"X-H%d: v\r\n" % i for i in range(150)),
    "header-name-20k": b"X-" + b"n" * 20_000 + b": v\r\n",
    "nul-in-header": b"X-Bad: a\x00b\r\n",
    "no-colon": b"this is not a header\r\n",
}


@pytest.mark.parametrize("name", list(HEADER_ABUSE))
def test_header_abuse_gets_a_4xx_and_the_worker_survives(server, name):
    head = HEADER_ABUSE[name]
    body = json.dumps(VALID).encode()
    response = raw_exchange(server.port, b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n" + head +
                            b"Content-Type: application/json\r\nConnection: close\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert 400 <= status_of(response) < 500, response[:300]
    still_answers(server)


def test_a_very_long_request_line_gets_a_4xx(server):
    response = raw_exchange(server.port, b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert 400 <= status_of(response) < 500
    still_answers(server)


def test_odd_anthropic_beta_lists_in_passthrough(fake, tmp_path):
    cred = tmp_path / "team.json"
    cred.write_text(json.dumps({"type": "oauth", "oauth": {"accessToken": "sk-ant-oat01-" + "t" * 40,
                                                           "refreshToken": "sk-ant-ort01-" + "r" * 40,
                                                           "expiresAt": 4102444800000}}))
    os.chmod(cred, 0o600)
    env = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": fake.url, "CLAUDE_API_KEY": "sk-ant-api03-" + "k" * 40,
           "DOMAIN_CREDENTIAL_MAPPING": json.dumps({"team.example.com": str(cred)})}
    body = json.dumps(VALID).encode()
    with ProxyServer(env) as proxy:
        cases = [
            (b"team.example.com", [b"anthropic-beta: a, ,b,,a ,oauth-2025-04-20, "], ["a", "b", "oauth-2025-04-20"]),
            (b"team.example.com", [b"anthropic-beta: ,,, "], ["oauth-2025-04-20"]),
            (b"team.example.com", [b"anthropic-beta: x-1", b"anthropic-beta: y-2, x-1"], ["x-1", "y-2",
                                                                                           "oauth-2025-04-20"]),
            # a client bringing its own API key: its list goes upstream as it is (no OAuth beta)
            (b"other.example.com\r\nx-api-key: sk-ant-api03-" + b"c" * 40, [b"anthropic-beta: c, ,d,,c "],
             ["c", "d"]),
            (b"other.example.com\r\nx-api-key: sk-ant-api03-" + b"c" * 40,
             [b"anthropic-beta: x-1", b"anthropic-beta: y-2"], ["x-1", "y-2"]),
        ]
        for host, beta_lines, expected in cases:
            fake.reset()
            response = raw_exchange(proxy.port, b"POST /v1/messages HTTP/1.1\r\nHost: " + host + b"\r\n" +
                                    b"".join(line + b"\r\n" for line in beta_lines) +
                                    b"Content-Type: application/json\r\nConnection: close\r\n"
                                    b"Content-Length: %d\r\n\r\n" % len(body) + body)
            assert status_of(response) == 200, response[:500]
            sent = fake.requests("/v1/messages")[0]["headers"].get("anthropic-beta", "")
            betas = [b.strip() for b in sent.split(",") if b.strip()]
            assert list(dict.fromkeys(betas)) == expected, (beta_lines, sent)
            if host == b"team.example.com":
                assert betas == expected, f"OAuth merge must drop empty and duplicate items: {sent!r}"
        assert "Traceback" not in proxy.output()
