"""Passthrough mode end to end: gunicorn + gevent proxy (two workers), a fake Anthropic upstream and OAuth
token endpoint on 127.0.0.1, the `anthropic` SDK as the client and raw HTTP where the bytes matter."""
from __future__ import annotations

import gzip
import http.client
import json
import os
import stat
import threading
import time
import zlib

import anthropic
import pytest
import requests

from tests.e2e.conftest import hang_up_mid_stream

pytestmark = pytest.mark.timeout(180)

MODEL = "claude-sonnet-4-5"
OAUTH_BETA = "oauth-2025-04-20"
CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
TEAM1_KEY = "sk-ant-api03-team1-file-key-AAAA"
TEAM2_ACCESS = "sk-ant-oat01-team2-access-BBBB"
CLIENT_API_KEY = "sk-ant-api03-client-own-key-CCCC"
CLIENT_OAUTH = "sk-ant-oat01-client-own-token-DDDD"
ENV_CLAUDE_KEY = "sk-ant-api03-env-claude-api-key-EEEE"
ENV_PROXY_KEY = "sk-ant-api03-env-proxy-key-FFFF"
HELLO = "Hello from the fake upstream."

# One OAuth credential file per scenario, so each test starts from its own state.
NEAR_RT, R401_RT, BROKEN_RT, BUSY_RT = ("sk-ant-ort01-near-1", "sk-ant-ort01-r401-1",
                                         "sk-ant-ort01-broken-1", "sk-ant-ort01-busy-1")
REVOKED = "sk-ant-oat01-revoked-by-upstream"


def _oauth_file(path, access: str, refresh: str, expires_in_s: float, mode: int = 0o600) -> str:
    data = {"type": "oauth", "label": "kept across refreshes",
            "oauth": {"accessToken": access, "refreshToken": refresh,
                      "expiresAt": int((time.time() + expires_in_s) * 1000),
                      "scopes": ["user:inference"], "isMax": True}}
    path.write_text(json.dumps(data))
    os.chmod(path, mode)
    return str(path)


@pytest.fixture(scope="module")
def cred_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("credentials")
    (d / "team1.json").write_text(json.dumps({"type": "api_key", "api_key": TEAM1_KEY}))
    os.chmod(d / "team1.json", 0o600)
    _oauth_file(d / "team2.json", TEAM2_ACCESS, "sk-ant-ort01-team2", 3600)
    _oauth_file(d / "near.json", "sk-ant-oat01-near-old", NEAR_RT, 30, mode=0o644)
    _oauth_file(d / "on401.json", REVOKED, R401_RT, 3600)
    _oauth_file(d / "broken.json", "sk-ant-oat01-broken-old", BROKEN_RT, -60)
    _oauth_file(d / "busy.json", "sk-ant-oat01-busy-old", BUSY_RT, -60)
    return d


def _mapping(d) -> str:
    return json.dumps({  # team1 first: the lenient fallback lends the first valid credential
        "team1.example.com": str(d / "team1.json"),
        "team2.example.com": str(d / "team2.json"),
        "near.example.com": str(d / "near.json"),
        "on401.example.com": str(d / "on401.json"),
        "broken.example.com": str(d / "broken.json"),
        "busy.example.com": str(d / "busy.json"),
    })


def _env(upstream_url: str, **extra) -> dict:
    env = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": upstream_url,
           "OAUTH_TOKEN_URL": upstream_url + "/v1/oauth/token", "UPSTREAM_MAX_RETRIES": "0",
           "UPSTREAM_READ_TIMEOUT": "20"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def proxy(start_proxy, fake_upstream_server, cred_dir):
    """Two workers, a lenient domain mapping, no env keys."""
    return start_proxy(_env(fake_upstream_server.url, DOMAIN_CREDENTIAL_MAPPING=_mapping(cred_dir)), workers=2)


@pytest.fixture(scope="module")
def strict_proxy(start_proxy, fake_upstream_server, cred_dir):
    mapping = json.dumps({"team1.example.com": str(cred_dir / "team1.json")})
    return start_proxy(_env(fake_upstream_server.url, DOMAIN_CREDENTIAL_MAPPING=mapping,
                            STRICT_DOMAIN_MAPPING="true"))


@pytest.fixture
def fake(fake_upstream):
    return fake_upstream


def post(proxy, body: dict | bytes, headers: dict | None = None, path: str = "/v1/messages",
         stream: bool = False) -> requests.Response:
    h = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    h.update(headers or {})
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(proxy.url + path, data=data, headers=h, stream=stream, timeout=30)


def hello(**extra) -> dict:
    return dict({"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}, **extra)


def upstream_headers(fake) -> dict:
    return fake.requests("/v1/messages")[-1]["headers"]


def betas(value: str | None) -> list[str]:
    return [b.strip() for b in (value or "").split(",") if b.strip()]


def sse(name: str, data: dict | str) -> str:
    return "event: %s\ndata: %s\n\n" % (name, data if isinstance(data, str) else json.dumps(data))


def message_start(input_tokens: int, output_tokens: int = 1, cc: int = 0, cr: int = 0) -> str:
    return sse("message_start", {"type": "message_start", "message": {
        "id": "msg_e2e", "type": "message", "role": "assistant", "model": MODEL, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "cache_creation_input_tokens": cc, "cache_read_input_tokens": cr}}})


def text_block(index: int, *pieces: str) -> list[str]:
    out = [sse("content_block_start", {"type": "content_block_start", "index": index,
                                       "content_block": {"type": "text", "text": ""}})]
    out += [sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                        "delta": {"type": "text_delta", "text": p}}) for p in pieces]
    return out + [sse("content_block_stop", {"type": "content_block_stop", "index": index})]


def tool_block(index: int, name: str, args: str) -> list[str]:
    return [sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": "toolu_e2e%d" % index, "name": name, "input": {}}}),
            sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                        "delta": {"type": "input_json_delta", "partial_json": args}}),
            sse("content_block_stop", {"type": "content_block_stop", "index": index})]


def message_end(output_tokens: int, stop: str = "end_turn") -> list[str]:
    return [sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                  "usage": {"output_tokens": output_tokens}}),
            sse("message_stop", {"type": "message_stop"})]


def events_of(raw: bytes) -> list[tuple[str | None, str]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            lines = block.split("\n")
            name = next((ln[6:].strip() for ln in lines if ln.startswith("event:")), None)
            data = next((ln[5:].strip() for ln in lines if ln.startswith("data:")), "")
            out.append((name, data))
    return out


def token_stats(proxy, domain: str, requests_expected: int, timeout: float = 10.0) -> dict | None:
    """The domain's counters once `requests_expected` requests are in (accounting runs after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        got = requests.get(proxy.url + "/token-stats", timeout=5).json()["stats"].get(domain)
        if (got and got["requestCount"] >= requests_expected) or time.monotonic() >= deadline:
            return got
        time.sleep(0.05)


# -- relayed unchanged --------------------------------------------------------------------------------


def test_json_relayed_byte_for_byte(proxy, fake):
    # unusual spacing and key order, non-ASCII text: any re-serialisation would show
    body = ('{ "type" : "message", "id":"msg_bytes1", "role":"assistant", "model":"%s",\n'
            '  "content":[{"type":"text","text":"Gr\\u00fc\\u00dfe \u2014 ok"}], "stop_reason":"end_turn",'
            '"stop_sequence":null, "usage":{"output_tokens":4,"input_tokens":12}}\n' % MODEL).encode()
    spec = {"body": body.decode(), "headers": {"content-type": "application/json", "retry-after": "3"}}
    fake.script("/v1/messages", [spec, spec])
    resp = post(proxy, hello(), {"x-api-key": CLIENT_API_KEY})
    assert resp.status_code == 200
    assert resp.content == body
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["request-id"].startswith("req_fake")
    assert resp.headers["anthropic-ratelimit-requests-limit"] == "4000"
    assert resp.headers["anthropic-ratelimit-requests-remaining"] == "3999"
    assert resp.headers["retry-after"] == "3"
    # and the SDK parses the same relay
    with anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_API_KEY, max_retries=0) as c:
        msg = c.messages.create(**hello())
    assert (msg.id, msg.content[0].text, msg.usage.input_tokens, msg.usage.output_tokens) == (
        "msg_bytes1", "Grüße — ok", 12, 4)


def test_stream_relayed_byte_for_byte(proxy, fake):
    pieces = ([message_start(25).replace('": ', '":  '), ": a comment line the proxy must not touch\n\n",
               sse("ping", {"type": "ping"})]
              + text_block(0, "Hel", "lo ", "there") + message_end(7))
    spec = {"sse": pieces, "gap_ms": 300}
    fake.script("/v1/messages", [spec, dict(spec, gap_ms=0)])
    resp = post(proxy, hello(stream=True), {"x-api-key": CLIENT_API_KEY}, stream=True)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    reads = [c for c in resp.iter_content(chunk_size=None) if c]
    assert b"".join(reads) == "".join(pieces).encode()
    assert len(reads) > 1  # relayed as the events came, not gathered until the end
    with anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_API_KEY, max_retries=0) as c:
        with c.messages.stream(**hello()) as s:
            final = s.get_final_message()
    assert final.content[0].text == "Hello there"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (25, 7)


def test_upstream_error_relayed_with_status_and_headers(proxy, fake):
    fake.script("/v1/messages", [{"status": 429, "headers": {"retry-after": "17"}}])
    with anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_API_KEY, max_retries=0) as c:
        with pytest.raises(anthropic.RateLimitError) as info:
            c.messages.create(**hello())
    assert info.value.response.headers["retry-after"] == "17"
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert "fake upstream 429" in info.value.body["error"]["message"]


# -- which credential reaches the upstream -------------------------------------------------------------


@pytest.mark.parametrize("host, client_headers, expect_key, expect_bearer, expect_betas", [
    ("team1.example.com", {"x-api-key": CLIENT_API_KEY}, TEAM1_KEY, None, None),
    ("team2.example.com", {"authorization": "Bearer " + CLIENT_API_KEY,
                           "anthropic-beta": "prompt-caching-2024-07-31, " + OAUTH_BETA},
     None, TEAM2_ACCESS, ["prompt-caching-2024-07-31", OAUTH_BETA]),
    (None, {"x-api-key": CLIENT_API_KEY}, CLIENT_API_KEY, None, None),
    (None, {"authorization": "Bearer " + CLIENT_API_KEY}, CLIENT_API_KEY, None, None),
    (None, {"authorization": "Bearer " + CLIENT_OAUTH,
            "anthropic-beta": "fine-grained-tool-streaming-2025-05-14,interleaved-thinking-2025-05-14,"
                              "fine-grained-tool-streaming-2025-05-14"},
     None, CLIENT_OAUTH, ["fine-grained-tool-streaming-2025-05-14", "interleaved-thinking-2025-05-14", OAUTH_BETA]),
], ids=["domain-api-key-file", "domain-oauth-file", "client-x-api-key", "client-bearer-api-key",
        "client-bearer-oauth"])
def test_credential_sources(proxy, fake, host, client_headers, expect_key, expect_bearer, expect_betas):
    headers = dict(client_headers)
    if host:
        headers["host"] = host
    resp = post(proxy, hello(), headers)
    assert resp.status_code == 200, resp.text
    up = upstream_headers(fake)
    assert up.get("x-api-key") == expect_key
    assert up.get("authorization") == (None if expect_bearer is None else "Bearer " + expect_bearer)
    if expect_betas is not None:
        assert betas(up.get("anthropic-beta")) == expect_betas
    else:
        assert OAUTH_BETA not in betas(up.get("anthropic-beta"))


def test_forwarded_headers(proxy, fake):
    body = json.dumps(hello()).encode()
    resp = requests.post(proxy.url + "/v1/messages", data=body, timeout=30, headers={
        "content-type": "application/json", "x-api-key": CLIENT_API_KEY,
        "user-agent": "claude-cli/2.1.197 (external, cli)", "x-stainless-lang": "js",
        "x-stainless-retry-count": "0", "x-app": "cli", "x-custom-team": "blue",
        "anthropic-beta": "claude-code-20250219",
        "connection": "keep-alive, x-hop-secret", "x-hop-secret": "hop", "keep-alive": "timeout=5",
        "te": "trailers", "proxy-authorization": "Basic c2VjcmV0", "proxy-connection": "keep-alive",
    })
    assert resp.status_code == 200
    [req] = fake.requests("/v1/messages")
    up = req["headers"]
    assert req["body"] == json.loads(body)
    assert up["anthropic-version"] == "2023-06-01"  # set when the client sent none
    assert up["user-agent"] == "claude-cli/2.1.197 (external, cli)"
    assert (up["x-stainless-lang"], up["x-stainless-retry-count"]) == ("js", "0")
    assert (up["x-app"], up["x-custom-team"]) == ("cli", "blue")
    assert betas(up["anthropic-beta"]) == ["claude-code-20250219"]
    assert up["content-type"] == "application/json"
    assert int(up["content-length"]) == len(body)
    assert up["host"] == fake_host(fake)
    for hop in ("keep-alive", "te", "proxy-authorization", "proxy-connection", "x-hop-secret"):
        assert hop not in up, hop
    assert "x-hop-secret" not in up.get("connection", "")
    # a client's own anthropic-version is kept
    post(proxy, hello(), {"x-api-key": CLIENT_API_KEY, "anthropic-version": "2023-01-01"})
    assert upstream_headers(fake)["anthropic-version"] == "2023-01-01"


def fake_host(fake) -> str:
    return "127.0.0.1:%d" % fake.port


def create_and_stream(client: anthropic.Anthropic) -> None:
    """One messages.create and one messages.stream through the proxy; both must parse to the answer."""
    msg = client.messages.create(**hello())
    with client.messages.stream(**hello()) as s:
        final = s.get_final_message()
    assert msg.content[0].text == HELLO and final.content[0].text == HELLO


def test_sdk_with_api_key(proxy, fake):
    with anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_API_KEY, max_retries=0,
                             default_headers={"x-custom-team": "green"}) as c:
        create_and_stream(c)
    for req in fake.requests("/v1/messages"):
        up = req["headers"]
        assert up["x-api-key"] == CLIENT_API_KEY and "authorization" not in up
        assert up["user-agent"].startswith("Anthropic/Python")
        assert up["x-stainless-lang"] == "python"
        assert up["x-custom-team"] == "green"


def test_sdk_with_auth_token(proxy, fake):
    with anthropic.Anthropic(base_url=proxy.url, auth_token=CLIENT_OAUTH, max_retries=0,
                             default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"}) as c:
        create_and_stream(c)
    for req in fake.requests("/v1/messages"):
        up = req["headers"]
        assert up["authorization"] == "Bearer " + CLIENT_OAUTH and "x-api-key" not in up
        assert betas(up["anthropic-beta"]) == ["interleaved-thinking-2025-05-14", OAUTH_BETA]


@pytest.mark.parametrize("host, expect_key, expect_bearer", [
    ("Team1.Example.com:3000", TEAM1_KEY, None),
    ("TEAM1.EXAMPLE.COM", TEAM1_KEY, None),
    ("team1.example.com.:443", TEAM1_KEY, None),
    ("TEAM2.example.COM:8443", None, TEAM2_ACCESS),
])
def test_host_mapping_ignores_port_and_case(proxy, fake, host, expect_key, expect_bearer):
    resp = post(proxy, hello(), {"host": host, "x-api-key": CLIENT_API_KEY})
    assert resp.status_code == 200
    up = upstream_headers(fake)
    assert up.get("x-api-key") == expect_key
    assert up.get("authorization") == (None if expect_bearer is None else "Bearer " + expect_bearer)


def test_unmapped_host_lenient_uses_first_mapped_credential_and_warns_once(proxy, fake):
    for _ in range(4):
        resp = post(proxy, hello(), {"host": "Stranger.example.org:8080"})
        assert resp.status_code == 200
        assert upstream_headers(fake).get("x-api-key") == TEAM1_KEY
    warning = "No credential mapping found for host 'stranger.example.org'"
    count = proxy.output().count(warning)
    assert 1 <= count <= 2  # once per worker process at most, not once per request


def test_unmapped_host_strict_is_401(strict_proxy, fake):
    resp = post(strict_proxy, hello(), {"host": "stranger.example.org"})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    assert "stranger.example.org" in resp.json()["error"]["message"]
    assert fake.requests("/v1/messages") == []
    # the mapped host still works, and a client bringing its own key is not lent anything
    assert post(strict_proxy, hello(), {"host": "team1.example.com"}).status_code == 200
    assert upstream_headers(fake)["x-api-key"] == TEAM1_KEY
    assert post(strict_proxy, hello(), {"host": "other.example.org", "x-api-key": CLIENT_API_KEY}).status_code == 200
    assert upstream_headers(fake)["x-api-key"] == CLIENT_API_KEY


def test_env_keys_rank_after_the_client(start_proxy, fake_upstream_server, fake):
    both = start_proxy(_env(fake_upstream_server.url, CLAUDE_API_KEY=ENV_CLAUDE_KEY,
                            CLAUDE_CODE_PROXY_API_KEY=ENV_PROXY_KEY))
    only_proxy_key = start_proxy(_env(fake_upstream_server.url, CLAUDE_CODE_PROXY_API_KEY=ENV_PROXY_KEY))
    assert post(both, hello()).status_code == 200
    assert upstream_headers(fake)["x-api-key"] == ENV_CLAUDE_KEY  # CLAUDE_API_KEY before CLAUDE_CODE_PROXY_API_KEY
    assert post(both, hello(), {"x-api-key": CLIENT_API_KEY}).status_code == 200
    assert upstream_headers(fake)["x-api-key"] == CLIENT_API_KEY  # the client's own key before both
    assert post(only_proxy_key, hello()).status_code == 200
    up = upstream_headers(fake)
    assert up["x-api-key"] == ENV_PROXY_KEY and "authorization" not in up


# -- OAuth refresh ------------------------------------------------------------------------------------


def _read(path) -> dict:
    return json.loads(open(path).read())


def test_oauth_refresh_near_expiry(proxy, fake, cred_dir):
    fake.oauth(refresh_token=NEAR_RT)
    path = cred_dir / "near.json"
    before = time.time()
    for _ in range(4):
        assert post(proxy, hello(), {"host": "near.example.com"}).status_code == 200
    assert fake.oauth_calls() == 1
    [call] = fake.requests("/v1/oauth/token")
    assert call["body"] == {"grant_type": "refresh_token", "refresh_token": NEAR_RT, "client_id": CLIENT_ID}
    saved = _read(path)
    new_access = saved["oauth"]["accessToken"]
    assert new_access.startswith("sk-ant-oat01-fake-")
    assert saved["oauth"]["refreshToken"] == fake.oauth_state()["refresh_token"]  # the rotated one
    assert saved["oauth"]["expiresAt"] >= (before + 3000) * 1000
    assert saved["oauth"]["isMax"] is True and saved["label"] == "kept across refreshes"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for req in fake.requests("/v1/messages"):
        assert req["headers"]["authorization"] == "Bearer " + new_access
        assert OAUTH_BETA in betas(req["headers"]["anthropic-beta"])


def test_oauth_refresh_on_upstream_401_then_retry_once(proxy, fake, cred_dir):
    # the upstream accepts only tokens the token endpoint issues from now on: the file's token is refused
    fake.oauth(refresh_token=R401_RT, valid_tokens=["sk-ant-oat01-not-the-files"])
    with anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0,
                             default_headers={"Host": "on401.example.com"}) as c:
        msg = c.messages.create(**hello())
    assert msg.content[0].text == HELLO
    assert fake.oauth_calls() == 1
    new_access = _read(cred_dir / "on401.json")["oauth"]["accessToken"]
    sent = [r["headers"]["authorization"] for r in fake.requests("/v1/messages")]
    assert sent == ["Bearer " + REVOKED, "Bearer " + new_access]


def test_oauth_refresh_failure_is_401_and_not_hammered(proxy, fake):
    fake.oauth(refresh_token="sk-ant-ort01-something-else")  # the file's refresh token is no longer valid
    with anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0,
                             default_headers={"Host": "broken.example.com"}) as c:
        for _ in range(5):
            with pytest.raises(anthropic.AuthenticationError) as info:
                c.messages.create(**hello())
            err = info.value.body["error"]
            assert err["type"] == "authentication_error"
            assert "refresh" in err["message"].lower() and "broken.example.com" in err["message"]
            assert BROKEN_RT not in err["message"]
    assert fake.requests("/v1/messages") == []  # an expired token is not sent at all
    assert 1 <= fake.oauth_calls() <= 2  # at most once per worker, then backed off


def test_oauth_single_flight_across_two_workers(proxy, fake, cred_dir):
    fake.oauth(refresh_token=BUSY_RT)
    # a slow token endpoint: the other 59 requests arrive while the one refresh is in flight
    fake.script("/v1/oauth/token", [{"delay_ms": 700}])
    n = 60
    barrier = threading.Barrier(n)
    statuses: list[int] = []

    def one() -> None:
        barrier.wait(10)
        statuses.append(post(proxy, hello(), {"host": "busy.example.com"}).status_code)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * n
    assert fake.oauth_calls() == 1
    new_access = _read(cred_dir / "busy.json")["oauth"]["accessToken"]
    sent = {r["headers"]["authorization"] for r in fake.requests("/v1/messages")}
    assert sent == {"Bearer " + new_access}
    assert len(fake.requests("/v1/messages")) == n


# -- compression, other paths -------------------------------------------------------------------------


def _raw(proxy, body: dict, headers: dict) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        conn.request("POST", "/v1/messages", body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _decode(headers: dict, raw: bytes) -> bytes:
    encoding = headers.get("content-encoding", "identity")
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    assert encoding == "identity", "a body the client cannot decode: %s" % encoding
    return raw


def test_gzip_from_upstream_decodable_and_accounted(proxy, fake):
    fake.compress(True)
    domain = "gzip.example.com"
    message = {"id": "msg_gz", "type": "message", "role": "assistant", "model": MODEL,
               "content": [{"type": "text", "text": "squeezed"}], "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 111, "output_tokens": 22}}
    fake.script("/v1/messages", [{"json": message},
                                 {"sse": [message_start(333, 0)] + text_block(0, "squ", "eezed") + message_end(44)}])
    headers = {"host": domain, "x-api-key": CLIENT_API_KEY, "content-type": "application/json",
               "anthropic-version": "2023-06-01", "accept-encoding": "gzip, deflate, br, zstd"}
    status, h, raw = _raw(proxy, hello(), headers)
    assert status == 200
    assert json.loads(_decode(h, raw)) == message
    status, h, raw = _raw(proxy, hello(stream=True), headers)
    assert status == 200
    events = events_of(_decode(h, raw))
    assert events[-1][0] == "message_stop"
    assert "".join(json.loads(d)["delta"]["text"] for n, d in events if n == "content_block_delta") == "squeezed"
    # the fake compressed only because gzip was asked for
    assert all("gzip" in r["headers"].get("accept-encoding", "") for r in fake.requests("/v1/messages"))
    got = token_stats(proxy, domain, 2)
    assert got and (got["requestCount"], got["inputTokens"], got["outputTokens"]) == (2, 444, 66)


def test_models_list_forwarded(proxy, fake):
    with anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_API_KEY, max_retries=0) as c:
        ids = [m.id for m in c.models.list()]
    assert ids == ["claude-opus-4-8", "claude-sonnet-4-5", "claude-haiku-4-5"]
    [req] = fake.requests("/v1/models")
    assert req["method"] == "GET" and req["headers"]["x-api-key"] == CLIENT_API_KEY


def test_count_tokens_forwarded(proxy, fake):
    fake.script("/v1/messages/count_tokens", [{"json": {"input_tokens": 4242}}])
    tools = [{"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {
        "file_path": {"type": "string"}}}}]
    system = [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "read /etc/hosts"}]
    with anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_API_KEY, max_retries=0) as c:
        got = c.messages.count_tokens(model=MODEL, system=system, tools=tools, messages=messages)
    assert got.input_tokens == 4242
    [req] = fake.requests("/v1/messages/count_tokens")
    assert req["body"] == {"model": MODEL, "system": system, "tools": tools, "messages": messages}
    assert req["headers"]["x-api-key"] == CLIENT_API_KEY


# -- faults -------------------------------------------------------------------------------------------


def test_client_disconnect_closes_upstream(start_proxy, slow_upstream):
    proxy = start_proxy(_env(slow_upstream.url, CLAUDE_API_KEY=ENV_CLAUDE_KEY))
    slow_upstream.reset()
    hang_up_mid_stream(proxy, hello(stream=True), slow_upstream)
    assert slow_upstream.headers[0]["x-api-key"] == ENV_CLAUDE_KEY
    assert requests.get(proxy.url + "/", timeout=5).status_code == 200


@pytest.mark.parametrize("fault", ["drop", "stop_mid_event", "clean_close_early"])
def test_upstream_dropping_mid_stream_ends_with_error_event(proxy, fake, fault):
    pieces = [message_start(9)] + text_block(0, "par", "tial", "text") + message_end(5)
    spec = {"drop": {"sse": pieces, "drop_after": 3},
            "stop_mid_event": {"sse": pieces[:4], "stop_mid_event": True},
            "clean_close_early": {"sse": pieces[:3]}}[fault]
    fake.script("/v1/messages", [spec, spec])
    resp = post(proxy, hello(stream=True), {"x-api-key": CLIENT_API_KEY})
    assert resp.status_code == 200
    raw = resp.content
    assert raw.startswith("".join(pieces[:3]).encode())  # what arrived went through unchanged
    events = events_of(raw)
    assert events[-1][0] == "error"
    assert json.loads(events[-1][1])["error"]["type"] in ("api_error", "overloaded_error")
    assert raw.endswith(b"\n\n")
    with anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_API_KEY, max_retries=0, timeout=30) as c:
        with pytest.raises(anthropic.APIStatusError):
            with c.messages.stream(**hello()) as s:
                for _ in s:
                    pass


def test_accounting_after_json_stream_failed_and_cut_off(proxy, fake):
    domain = "acct.example.com"
    fake.script("/v1/messages", [
        {"json": {"id": "msg_a1", "type": "message", "role": "assistant", "model": MODEL, "stop_reason": "tool_use",
                  "stop_sequence": None,
                  "content": [{"type": "text", "text": "x"},
                              {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a"}}],
                  "usage": {"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 5,
                            "cache_read_input_tokens": 7}}},
        {"sse": [message_start(50, 1, cc=3, cr=4)] + tool_block(0, "Bash", '{"command":"ls"}')
         + message_end(30, "tool_use")},
        {"status": 429},
        {"sse": [message_start(10, 0)] + text_block(0, "cut", "off", "here"), "drop_after": 3},
    ])
    headers = {"host": domain, "x-api-key": CLIENT_API_KEY}
    assert post(proxy, hello(system="You are terse."), headers).status_code == 200
    assert post(proxy, hello(system="You are terse.", stream=True), headers).content.endswith(
        b"event: message_stop\ndata: {\"type\": \"message_stop\"}\n\n")
    assert post(proxy, hello(system="You are terse."), headers).status_code == 429
    assert b"event: error" in post(proxy, hello(system="You are terse.", stream=True), headers).content
    got = token_stats(proxy, domain, 4)
    assert got is not None
    assert got["requestCount"] == 4
    assert got["inputTokens"] == 160
    assert got["outputTokens"] == 50
    assert got["cacheCreationInputTokens"] == 8
    assert got["cacheReadInputTokens"] == 11
    assert got["toolCallCount"] == 2
    assert got["errorCount"] == 2
    assert (got["queryEvaluationCount"], got["inferenceCount"]) == (4, 0)
    assert isinstance(got["lastUpdated"], int)
    body = requests.get(proxy.url + "/token-stats", timeout=5).json()
    assert body["status"] == "ok" and "timestamp" in body


def test_thinking_signed_by_the_proxy_is_not_sent_to_anthropic(proxy, fake):
    # A conversation that began in translation: its assistant turns carry the proxy's thinking signature,
    # which Anthropic cannot verify (the fake refuses it as the real API does).
    ours = {"type": "thinking", "thinking": "reasoned elsewhere", "signature": "nxp1.Y2hhdDp4.bWFj"}
    anthropic_own = {"type": "thinking", "thinking": "Claude's own", "signature": "EqQBCkYIBRgCKkBvalid"}
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": [ours, {"type": "text", "text": "hello"}]},
                {"role": "user", "content": "and?"},
                {"role": "assistant", "content": [dict(ours, thinking="only thinking")]},
                {"role": "user", "content": "go on"},
                {"role": "assistant", "content": [anthropic_own, {"type": "text", "text": "sure"}]},
                {"role": "user", "content": "thanks"}]
    with anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_API_KEY, max_retries=0) as c:
        msg = c.messages.create(model=MODEL, max_tokens=64, messages=messages)
        assert msg.content[0].type == "text"
        assert c.messages.count_tokens(model=MODEL, messages=messages).input_tokens > 0
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        [req] = fake.requests(path)
        assert req["body"]["messages"] == [
            messages[0], {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
            messages[2], messages[4], messages[5], messages[6]], path
