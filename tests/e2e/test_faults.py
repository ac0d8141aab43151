"""Fault suite: a misbehaving upstream and misbehaving clients against the proxy as users run it.

gunicorn + gevent workers (tests.fakes.server.ProxyServer) in front of the scriptable fake upstream.
Every answer must be a well-formed Anthropic error (HTTP error before streaming, `event: error` after)
or a correct answer; never a hang, a 500 traceback or a stream cut mid-event. After 200 client
disconnects per mode the worker must hold no more greenlets, sockets or memory than before, and the
accounting must match what the upstream reported.

The worker's greenlets are counted by a probe: a `sitecustomize` module (written to a temporary
folder put first on the proxy's PYTHONPATH) that dumps the live greenlets and open sockets of the
process to a file on SIGRTMIN+1. Everything else is read from /proc.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import tempfile
import textwrap
import time
from pathlib import Path

import anthropic
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from tests.fakes.server import REPO_ROOT, CountingListener, FakeUpstream, ProxyServer, free_port

pytestmark = pytest.mark.timeout(180)

UPSTREAM_KEY = "sk-fault-suite-upstream-key-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-api03-fault-suite-key-0123456789abcdefghijklmnop"
ERROR_TYPES = {"invalid_request_error", "authentication_error", "billing_error", "permission_error",
               "not_found_error", "request_too_large", "rate_limit_error", "api_error", "timeout_error",
               "overloaded_error"}
IN_TOKENS, OUT_TOKENS = 111, 22
TEXT_PIECES = ["The ", "answer ", "is ", "forty-two."]
TEXT = "".join(TEXT_PIECES)
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Say it."}]}
ENDPOINT = {"translation": "/chat/completions", "passthrough": "/v1/messages"}

PROBE = textwrap.dedent('''
    """Test probe (tests/e2e/test_faults.py): on SIGRTMIN+1 a forked worker writes its live greenlets and sockets."""
    import os

    def _dump(signum, frame):
        import gc, json, socket
        try:
            import greenlet
            greenlets = sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)
        except Exception:
            greenlets = -1
        try:
            import gevent
            spawned = sum(1 for o in gc.get_objects() if isinstance(o, gevent.Greenlet) and not o.dead)
            pool = gevent.get_hub().threadpool
            threads, max_threads = pool.size, pool.maxsize
        except Exception:
            spawned = threads = max_threads = -1
        sockets = 0
        for o in gc.get_objects():
            try:
                if isinstance(o, socket.socket) and o.fileno() != -1:
                    sockets += 1
            except Exception:
                pass
        path = os.path.join(os.environ["NEXUS_PROBE_DIR"], "%d.json" % os.getpid())
        with open(path + ".tmp", "w") as fh:
            json.dump({"greenlets": greenlets, "spawned": spawned, "threads": threads, "max_threads": max_threads,
                       "sockets": sockets, "time": __import__("time").time()}, fh)
        os.replace(path + ".tmp", path)

    def _install():
        import signal
        signal.signal(signal.SIGRTMIN + 1, _dump)

    if os.environ.get("NEXUS_PROBE_DIR"):
        os.register_at_fork(after_in_child=_install)
''')


# ---------------------------------------------------------------- scripted upstream answers


def openai_chunks(pieces=TEXT_PIECES, finish="stop", usage=True) -> list:
    base = {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 1, "model": "up-model"}
    out = [dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    out += [dict(base, choices=[{"index": 0, "delta": {"content": p}, "finish_reason": None}]) for p in pieces]
    out.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": finish}]))
    if usage:
        out.append(dict(base, choices=[], usage={"prompt_tokens": IN_TOKENS, "completion_tokens": OUT_TOKENS,
                                                 "total_tokens": IN_TOKENS + OUT_TOKENS}))
    return out


def anthropic_events(pieces=TEXT_PIECES, stop=True) -> list:
    msg = {"id": "msg_fault", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
           "stop_reason": None, "stop_sequence": None,
           "usage": {"input_tokens": IN_TOKENS, "output_tokens": 1, "cache_creation_input_tokens": 0,
                     "cache_read_input_tokens": 0}}
    events = [("message_start", {"type": "message_start", "message": msg}), ("ping", {"type": "ping"}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "text_delta", "text": p}}) for p in pieces]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                  "usage": {"output_tokens": OUT_TOKENS}})]
    if stop:
        events.append(("message_stop", {"type": "message_stop"}))
    return [{"event": name, "data": data} for name, data in events]


def stream_script(mode: str, **spec) -> dict:
    return {"sse": openai_chunks() if mode == "translation" else anthropic_events(), **spec}


def json_script(mode: str, **spec) -> dict:
    if mode == "translation":
        body = {"id": "chatcmpl-fault", "object": "chat.completion", "created": 1, "model": "up-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": IN_TOKENS, "completion_tokens": OUT_TOKENS,
                          "total_tokens": IN_TOKENS + OUT_TOKENS}}
    else:
        body = {"id": "msg_fault", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": TEXT}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": IN_TOKENS, "output_tokens": OUT_TOKENS}}
    return {"json": body, **spec}


# ---------------------------------------------------------------- checking what the client got


def parse_sse(raw: bytes) -> list[tuple[str, dict]]:
    """Strict: complete events only, each `event: X` + one JSON `data:` line whose type is X."""
    text = raw.decode("utf-8")
    assert text.endswith("\n\n"), f"stream cut mid-event: ...{text[-300:]!r}"
    events = []
    for block in text[:-2].split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                assert data is None, f"two data lines in {block!r}"
                data = line[6:]
            else:
                raise AssertionError(f"unexpected SSE line {line!r} in {block!r}")
        assert name and data is not None, block
        obj = json.loads(data)
        assert obj["type"] == name, block
        events.append((name, obj))
    return events


def check_stream(raw: bytes) -> tuple[str, object]:
    """("complete", accumulated message) or ("error", error object); asserts well-formedness either way."""
    events = parse_sse(raw)
    assert events and events[0][0] == "message_start", events[:2]
    names = [n for n, _ in events]
    snapshot, bufs = None, {}
    for name, obj in events:
        if name == "error":
            break
        snapshot = accumulate_event(event=obj, current_snapshot=snapshot, json_bufs=bufs)
    if "error" in names:
        assert names.count("error") == 1 and names[-1] == "error", names
        err = events[-1][1]["error"]
        assert err["type"] in ERROR_TYPES and isinstance(err["message"], str) and err["message"], err
        return "error", err
    assert names[-1] == "message_stop" and "message_delta" in names, names
    return "complete", snapshot


def check_json_error(status: int, headers: dict, body: bytes) -> dict:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body[:300])
    obj = json.loads(body)
    assert obj["type"] == "error" and obj["error"]["type"] in ERROR_TYPES and obj["error"]["message"], obj
    assert "Traceback" not in body.decode("utf-8", "replace")
    return obj["error"]


def post(port: int, body: dict, headers: dict | None = None, timeout: float = 30.0,
         path: str = "/v1/messages") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body).encode(), {"content-type": "application/json",
                                                                "anthropic-version": "2023-06-01", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def outcome(status: int, headers: dict, body: bytes, stream: bool) -> tuple[str, object]:
    """("complete", text) / ("http_error", (status, type)) / ("stream_error", type), checked for shape."""
    if status >= 400:
        err = check_json_error(status, headers, body)
        return "http_error", (status, err["type"])
    assert status == 200, (status, body[:500])
    if stream and headers["content-type"].startswith("text/event-stream"):
        kind, value = check_stream(body)
        if kind == "error":
            return "stream_error", value["type"]
        return "complete", "".join(b.text for b in value.content if b.type == "text")
    obj = json.loads(body)
    assert obj["type"] == "message"
    return "complete", "".join(b["text"] for b in obj["content"] if b["type"] == "text")


# ---------------------------------------------------------------- processes and /proc


def worker_pids(master: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{master}/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def the_worker(proxy: ProxyServer) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = worker_pids(proxy.pid)
        if len(pids) == 1:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError(f"expected one worker, found {worker_pids(proxy.pid)}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def tcp_connections_to(pid: int, port: int) -> int:
    """The worker's own TCP sockets (by inode) connected to `port`, in any state but LISTEN."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            if cols[9] in inodes and remote_port == port and cols[3] != "0A":
                count += 1
    return count


def probe(pid: int, probe_dir: Path) -> dict:
    path = probe_dir / f"{pid}.json"
    before = path.stat().st_mtime_ns if path.exists() else 0
    os.kill(pid, signal.SIGRTMIN + 1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_mtime_ns != before:
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        time.sleep(0.05)
    raise AssertionError("the worker probe did not answer")


def token_stats(port: int, headers: dict | None = None) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/token-stats", headers=headers or {})
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())["stats"]
    finally:
        conn.close()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fake():
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def probe_dir():
    with tempfile.TemporaryDirectory(prefix="nexus-probe-") as tmp:
        path = Path(tmp)
        (path / "site").mkdir()
        (path / "site" / "sitecustomize.py").write_text(PROBE)
        (path / "out").mkdir()
        yield path


def proxy_env(mode: str, upstream: str, **extra) -> dict:
    env = {"PROXY_MODE": mode, "UPSTREAM_CONNECT_TIMEOUT": "2", "UPSTREAM_READ_TIMEOUT": "2",
           "UPSTREAM_MAX_RETRIES": "2", "UPSTREAM_RETRY_MAX_WAIT": "3", "STREAM_PING_INTERVAL": "1",
           "GRACEFUL_TIMEOUT": "3"}
    if mode == "translation":
        env.update(ANTHROPIC_PROXY_BASE_URL=upstream, CLAUDE_CODE_PROXY_API_KEY=UPSTREAM_KEY)
    else:
        env.update(CLAUDE_API_BASE_URL=upstream, CLAUDE_API_KEY=ANTHROPIC_KEY)
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="module")
def proxies(fake, probe_dir):
    started = {}
    try:
        for mode in ("translation", "passthrough"):
            env = proxy_env(mode, fake.url, NEXUS_PROBE_DIR=probe_dir / "out",
                            PYTHONPATH=f"{probe_dir / 'site'}{os.pathsep}{REPO_ROOT}")
            started[mode] = ProxyServer(env).start()
        yield started
    finally:
        for proxy in started.values():
            proxy.stop()


@pytest.fixture
def upstream(fake):
    fake.reset()
    return fake


def assert_no_traceback(proxy: ProxyServer) -> None:
    output = proxy.output()
    assert "Traceback" not in output and "unhandled error" not in output, output[-5000:]


# ---------------------------------------------------------------- the fault matrix

# name -> (scripted responses for the endpoint, request is a stream, expected outcome kinds)
COMPLETE = {"complete"}


def _faults(mode: str) -> dict:
    return {
        "ok-json": ([json_script(mode)], False, COMPLETE),
        "ok-stream": ([stream_script(mode)], True, COMPLETE),
        "slow-json": ([json_script(mode, delay_ms=800)], False, COMPLETE),
        "slow-first-byte": ([stream_script(mode, first_byte_ms=1000)], True, COMPLETE),
        "slow-stream": ([stream_script(mode, gap_ms=250)], True, COMPLETE),
        "429-json": ([{"status": 429, "headers": {"retry-after": "0"}}] * 3, False, {("http_error", (429, "rate_limit_error"))}),
        "429-stream": ([{"status": 429, "headers": {"retry-after": "0"}}] * 3, True, {("http_error", (429, "rate_limit_error"))}),
        "500-json": ([{"status": 500}], False, {("http_error", (500, "api_error"))}),
        "500-stream": ([{"status": 500}], True, {("http_error", (500, "api_error"))}),
        "500-text-body": ([{"status": 500, "body": "Internal Server Error"}], False, {("http_error", (500, "api_error"))}),
        "502-html": ([{"status": 502, "body": "<html><body>Bad gateway</body></html>",
                       "headers": {"content-type": "text/html"}}], True, {("http_error", (502, "api_error"))}),
        "529-json": ([{"status": 529, "headers": {"retry-after": "0"}}] * 3, False,
                     {("http_error", (529, "overloaded_error"))}),
        "529-stream": ([{"status": 529, "headers": {"retry-after": "0"}}] * 3, True,
                       {("http_error", (529, "overloaded_error"))}),
        "invalid-json-200": ([{"status": 200, "body": '{"id": "x", "choices": [', "headers": {"content-type":
                                                                                          "application/json"}}],
                             False, {("http_error", (502, "api_error"))}),
        "json-to-stream-request": ([json_script(mode)], True, {("stream_error", "api_error"), "complete"}),
        "stop-mid-event": ([stream_script(mode, stop_mid_event=True)], True, {("stream_error", "api_error")}),
        "drop-after-3": ([stream_script(mode, drop_after=3)], True, {("stream_error", "api_error")}),
        "no-done": ([stream_script(mode, no_done=True)] if mode == "translation"
                    else [{"sse": anthropic_events(stop=False)}], True,
                    COMPLETE if mode == "translation" else {("stream_error", "api_error")}),
        "garbage-lines": ([stream_script(mode, garbage="line")], True, COMPLETE),
        "garbage-data": ([stream_script(mode, garbage="data")], True,
                         {("stream_error", "api_error")} if mode == "translation" else COMPLETE),
        "stall-mid-stream": ([stream_script(mode, gap_ms=4000)], True, {("stream_error", "timeout_error")}),
        "hang-json": ([{"hang": True}], False, {("http_error", (504, "timeout_error"))}),
        "hang-stream": ([{"hang": True}], True, {("http_error", (504, "timeout_error"))}),
    }


FAULT_NAMES = list(_faults("translation"))


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
@pytest.mark.parametrize("fault", FAULT_NAMES)
def test_fault_gives_a_well_formed_answer(proxies, upstream, mode, fault):
    script, stream, expected = _faults(mode)[fault]
    upstream.script(ENDPOINT[mode], script)
    proxy = proxies[mode]
    started = time.monotonic()
    status, headers, body = post(proxy.port, dict(MESSAGE, stream=stream))
    elapsed = time.monotonic() - started
    if mode == "passthrough" and fault in ("garbage-lines", "garbage-data"):
        # Passthrough relays the upstream's bytes unchanged: the garbage reaches the client as sent, the
        # client's SSE parser skips it, and the proxy's side parser for accounting must survive it.
        assert status == 200 and body.rstrip().endswith(b'data: {"type":"message_stop"}'), body[-500:]
        got = ("complete", TEXT) if TEXT_PIECES[-1].encode() in body else ("broken", None)
    else:
        got = outcome(status, headers, body, stream)
    if mode == "translation" and stream and status == 200:
        assert headers["content-type"].startswith("text/event-stream")
    kinds = {got[0] if got[0] == "complete" else got}
    assert kinds & expected, f"{fault}: got {got}, expected one of {expected}"
    if got[0] == "complete":
        assert got[1] == TEXT
    assert elapsed < 20, f"{fault} took {elapsed:.1f}s"
    assert_no_traceback(proxy)


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_the_anthropic_sdk_gets_an_api_error_for_a_broken_stream(proxies, upstream, mode):
    """What a real client sees: an APIStatusError carrying the proxy's message, not a JSON or parse crash."""
    proxy = proxies[mode]
    client = anthropic.Anthropic(base_url=proxy.url, api_key="client-key-not-used", max_retries=0, timeout=20)
    for spec in ({"stop_mid_event": True}, {"drop_after": 4}):
        upstream.script(ENDPOINT[mode], [stream_script(mode, **spec)])
        with pytest.raises(anthropic.APIStatusError) as info:
            with client.messages.stream(**MESSAGE) as s:
                s.get_final_message()
        assert info.value.body["error"]["type"] == "api_error"
    upstream.script(ENDPOINT[mode], [stream_script(mode, garbage="data")])
    if mode == "passthrough":
        with client.messages.stream(**MESSAGE) as s:
            assert s.get_final_message().content[0].text == TEXT
    assert_no_traceback(proxy)


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_429_with_retry_after_is_retried_and_the_client_gets_200(proxies, upstream, mode):
    upstream.script(ENDPOINT[mode], [{"status": 429, "headers": {"retry-after": "1"}}, json_script(mode)])
    started = time.monotonic()
    status, headers, body = post(proxies[mode].port, MESSAGE)
    assert outcome(status, headers, body, False) == ("complete", TEXT)
    assert time.monotonic() - started >= 0.9  # retry-after was honoured
    assert len(upstream.requests(ENDPOINT[mode])) == 2


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
@pytest.mark.parametrize("stream", [False, True])
def test_529_twice_then_success(proxies, upstream, mode, stream):
    script = [{"status": 529}, {"status": 529}, (stream_script if stream else json_script)(mode)]
    upstream.script(ENDPOINT[mode], script)
    status, headers, body = post(proxies[mode].port, dict(MESSAGE, stream=stream))
    assert outcome(status, headers, body, stream) == ("complete", TEXT)
    assert len(upstream.requests(ENDPOINT[mode])) == 3


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_a_retry_after_above_the_cap_is_relayed_not_waited(proxies, upstream, mode):
    upstream.script(ENDPOINT[mode], [{"status": 429, "headers": {"retry-after": "30"}}, json_script(mode)])
    started = time.monotonic()
    status, headers, body = post(proxies[mode].port, MESSAGE)
    assert outcome(status, headers, body, False) == ("http_error", (429, "rate_limit_error"))
    assert headers.get("retry-after") == "30"
    assert time.monotonic() - started < 10
    assert len(upstream.requests(ENDPOINT[mode])) == 1


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_a_started_stream_is_never_retried(proxies, upstream, mode):
    upstream.script(ENDPOINT[mode], [stream_script(mode, drop_after=4), stream_script(mode)])
    status, headers, body = post(proxies[mode].port, dict(MESSAGE, stream=True))
    assert outcome(status, headers, body, True) == ("stream_error", "api_error")
    assert TEXT_PIECES[0].encode() in body  # the first deltas did reach the client
    assert len(upstream.requests(ENDPOINT[mode])) == 1


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_refused_connections_are_retried_then_502(mode):
    port = free_port()  # nothing listens there
    with ProxyServer(proxy_env(mode, f"http://127.0.0.1:{port}")) as proxy:
        for stream in (False, True):
            started = time.monotonic()
            status, headers, body = post(proxy.port, dict(MESSAGE, stream=stream))
            assert time.monotonic() - started < 15
            kind, (code, err_type) = outcome(status, headers, body, stream)
            assert (kind, code, err_type) == ("http_error", 502, "api_error")
            # it names the upstream, so nobody takes it for the proxy refusing
            assert json.loads(body)["error"]["message"].startswith(f"upstream 127.0.0.1:{port} is unreachable")
        time.sleep(0.2)
        output = proxy.output()
    # two retries per request (UPSTREAM_MAX_RETRIES=2), each logged
    assert len(re.findall(r"retrying in [\d.]+s \(attempt [23]\)", output)) == 4, output


def test_connections_reset_by_the_upstream_are_retried_and_counted():
    server = CountingListener(reset=True)
    try:
        with ProxyServer(proxy_env("translation", f"http://127.0.0.1:{server.port}")) as proxy:
            status, headers, body = post(proxy.port, MESSAGE)
            assert outcome(status, headers, body, False) == ("http_error", (502, "api_error"))
            assert server.count == 3  # one attempt and UPSTREAM_MAX_RETRIES=2 retries
            assert_no_traceback(proxy)
    finally:
        server.close()


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_an_upstream_that_never_answers_ends_with_504_in_bounded_time(fake, mode):
    fake.reset()
    with ProxyServer(proxy_env(mode, fake.url, UPSTREAM_READ_TIMEOUT="1")) as proxy:
        fake.script(ENDPOINT[mode], [{"hang": True}, {"hang": True}])
        for stream in (False, True):
            started = time.monotonic()
            status, headers, body = post(proxy.port, dict(MESSAGE, stream=stream))
            assert time.monotonic() - started < 10
            assert outcome(status, headers, body, stream) == ("http_error", (504, "timeout_error"))
        # a read timeout is not retried: the upstream may be working on it
        assert len(fake.requests(ENDPOINT[mode])) == 2
    fake.reset()


# ---------------------------------------------------------------- graceful shutdown


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_shutdown_ends_a_long_stream_with_an_error_event(fake, mode):
    fake.reset()
    long_pieces = [f"word{i} " for i in range(80)]
    sse = (openai_chunks(long_pieces) if mode == "translation" else anthropic_events(long_pieces))
    fake.script(ENDPOINT[mode], [{"sse": sse, "gap_ms": 250}])  # ~20 s of streaming
    proxy = ProxyServer(proxy_env(mode, fake.url, GRACEFUL_TIMEOUT="3", UPSTREAM_READ_TIMEOUT="30")).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        conn.request("POST", "/v1/messages", json.dumps(dict(MESSAGE, stream=True)),
                     {"content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.read1(65536)
        while b"word1 " not in first:
            first += resp.read1(65536)
        started = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        rest = b""
        while True:
            part = resp.read1(65536)
            if not part:
                break
            rest += part
        ended_after = time.monotonic() - started
        conn.close()
        code = proxy.proc.wait(20)
    finally:
        proxy.stop()
    kind, err = check_stream(first + rest)
    assert kind == "error", (first + rest)[-800:]
    assert err["type"] == "overloaded_error" and "shutting down" in err["message"]
    assert b"word79" not in rest  # it was ended, not finished
    assert ended_after < 15
    assert code == 0, proxy.output()[-3000:]
    fake.reset()


# ---------------------------------------------------------------- misbehaving clients, leaks, accounting


def _disconnect_once(port: int, body: bytes, host: str, rng: random.Random) -> None:
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body)
        want = rng.choice([0, 1, rng.randint(1, 400), rng.randint(400, 3000), rng.randint(1, 3000)])
        got = 0
        while got < want:
            part = s.recv(min(4096, want - got))
            if not part:
                break
            got += len(part)
        if rng.random() < 0.5:  # half of them slam the door (RST) instead of a clean FIN
            import struct

            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _settle(measure, target, timeout: float = 15.0):
    """Poll `measure()` until it is <= target or the time is up; return the last value."""
    deadline = time.monotonic() + timeout
    value = measure()
    while value > target and time.monotonic() < deadline:
        time.sleep(0.2)
        value = measure()
    return value


DISCONNECTS = 200
COMPLETED = 20
MEASURED: dict = {}


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_200_client_disconnects_leak_nothing_and_accounting_stays_exact(proxies, upstream, probe_dir, mode):
    proxy = proxies[mode]
    worker = the_worker(proxy)
    endpoint = ENDPOINT[mode]
    # warm up (imports, pools, caches) so the baseline is a steady state
    for i in range(10):
        upstream.script(endpoint, [stream_script(mode)] if i % 2 else [json_script(mode)])
        post(proxy.port, dict(MESSAGE, stream=bool(i % 2)), {"host": "warmup.test"})
    time.sleep(0.5)
    base = {"fds": fd_count(worker), "rss": rss_kb(worker), "upstream": tcp_connections_to(worker, upstream.port),
            **probe(worker, probe_dir / "out")}
    stats0 = token_stats(proxy.port)

    rng = random.Random(7 if mode == "translation" else 11)
    upstream.reset()
    upstream.script(endpoint, [stream_script(mode, gap_ms=3) for _ in range(DISCONNECTS)])
    body = json.dumps(dict(MESSAGE, stream=True)).encode()
    for _ in range(DISCONNECTS):
        _disconnect_once(proxy.port, body, "disconnect.test", rng)

    # every disconnected request is counted exactly once (the worker may notice a closed client late)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        count = token_stats(proxy.port).get("disconnect.test", {}).get("requestCount", 0)
        if count >= DISCONNECTS:
            break
        time.sleep(0.2)
    disconnected = token_stats(proxy.port)["disconnect.test"]
    assert disconnected["requestCount"] == DISCONNECTS
    print(f"\n{mode}: {disconnected['errorCount']} of {DISCONNECTS} streams were cut by their client")
    assert disconnected["errorCount"] >= DISCONNECTS // 4  # most clients really left mid-stream

    # then complete requests with known upstream usage: the totals must be exact
    for i in range(COMPLETED):
        stream = bool(i % 2)
        upstream.script(endpoint, [stream_script(mode) if stream else json_script(mode)])
        got = outcome(*post(proxy.port, dict(MESSAGE, stream=stream), {"host": "complete.test"}), stream)
        assert got == ("complete", TEXT)
    stats = token_stats(proxy.port)
    done = stats["complete.test"]
    assert done["requestCount"] == COMPLETED and done["errorCount"] == 0
    assert done["inputTokens"] == IN_TOKENS * COMPLETED
    assert done["outputTokens"] == OUT_TOKENS * COMPLETED
    assert stats["warmup.test"] == stats0["warmup.test"]  # nothing was double-counted later

    # nothing leaked: sockets, greenlets, upstream connections, memory
    fds = _settle(lambda: fd_count(worker), base["fds"] + 3)
    conns = _settle(lambda: tcp_connections_to(worker, upstream.port), max(base["upstream"], 2))
    after = probe(worker, probe_dir / "out")
    rss = rss_kb(worker)
    MEASURED[mode] = {"before": base, "after": {"fds": fds, "rss": rss, "upstream": conns, **after}}
    print(f"\n{mode}: before {base} after {MEASURED[mode]['after']}")
    assert fds <= base["fds"] + 3, MEASURED[mode]
    assert conns <= max(base["upstream"], 2), MEASURED[mode]
    assert after["sockets"] <= base["sockets"] + 2, MEASURED[mode]
    # Spawned greenlets (handlers, stream pumps, background loops) must be back to the baseline. The other
    # greenlets are gevent's thread pool (DNS lookups for new upstream connections): two per pool thread
    # (its main greenlet and its worker), and the pool is bounded.
    assert after["spawned"] <= base["spawned"] + 1, MEASURED[mode]
    assert after["threads"] <= after["max_threads"], MEASURED[mode]
    assert after["greenlets"] - 2 * after["threads"] <= base["greenlets"] - 2 * base["threads"] + 1, MEASURED[mode]
    assert rss - base["rss"] < 20 * 1024, MEASURED[mode]
    assert worker_pids(proxy.pid) == [worker]  # the worker never died and was replaced

    # and it still answers normally
    upstream.script(endpoint, [stream_script(mode)])
    assert outcome(*post(proxy.port, dict(MESSAGE, stream=True)), True) == ("complete", TEXT)
    assert_no_traceback(proxy)
