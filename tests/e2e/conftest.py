"""Shared end-to-end fixtures: the fake upstream, proxies started on demand, and a slow upstream that
notices when its client goes away (the FakeUpstream's log cannot show a closed socket)."""
from __future__ import annotations

import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, Mapping

import pytest

from tests.fakes.server import ProxyServer


@pytest.fixture(scope="module")
def start_proxy() -> Iterator[Callable[..., ProxyServer]]:
    """`start_proxy(env, workers=1)` -> a running ProxyServer; all are stopped (in parallel) after the module."""
    started: list[ProxyServer] = []

    def start(env: Mapping[str, str], workers: int = 1) -> ProxyServer:
        proxy = ProxyServer(env, workers=workers)
        started.append(proxy)
        return proxy.start()

    yield start
    stoppers = [threading.Thread(target=p.stop) for p in started]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(30)


class SlowUpstream:
    """Streams one SSE event every `gap` s for a long time (OpenAI chunks on /chat/completions, Anthropic
    events on /v1/messages) and records when the connection is closed by the other side."""

    def __init__(self, gap: float = 0.2, events: int = 300) -> None:
        self.gap = gap
        self.events = events
        self.headers: list[dict] = []
        self.streaming = threading.Event()
        self.closed = threading.Event()
        self.sent = 0
        self.closed_at: float | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                owner.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                owner._stream(self.connection, self.path, self.wfile)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self.headers.clear()
        self.streaming.clear()
        self.closed.clear()
        self.closed_at: float | None = None
        self.sent = 0

    def _stream(self, conn: socket.socket, path: str, wfile) -> None:
        try:
            for i, piece in enumerate(_slow_events(path, self.events)):
                wfile.write(piece)
                wfile.flush()
                self.sent = i + 1
                self.streaming.set()
                # Wait one gap while watching the socket: readable now means the peer closed it.
                readable, _, _ = select.select([conn], [], [], self.gap)
                if readable and not conn.recv(4096):
                    self.closed_at = time.monotonic()
                    self.closed.set()
                    return
        except OSError:  # reset or broken pipe: the peer went away
            self.closed_at = time.monotonic()
            self.closed.set()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _slow_events(path: str, count: int) -> Iterator[bytes]:
    if path.endswith("/chat/completions"):
        base = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 1700000000, "model": "slow"}
        yield b"data: " + json.dumps(dict(base, choices=[{"index": 0, "delta": {"role": "assistant"},
                                                         "finish_reason": None}])).encode() + b"\n\n"
        for i in range(count):
            yield b"data: " + json.dumps(dict(base, choices=[{"index": 0, "delta": {"content": "w%d " % i},
                                                             "finish_reason": None}])).encode() + b"\n\n"
        return
    start = {"type": "message_start", "message": {
        "id": "msg_slow", "type": "message", "role": "assistant", "model": "slow", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 0}}}
    yield b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n"
    yield (b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
           b'"content_block":{"type":"text","text":""}}\n\n')
    for i in range(count):
        yield (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
               b'"delta":{"type":"text_delta","text":"w%d "}}\n\n' % i)


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[SlowUpstream]:
    server = SlowUpstream()
    yield server
    server.stop()


def hang_up_mid_stream(proxy: ProxyServer, body: dict, slow_upstream: SlowUpstream) -> None:
    """Stream `body` over a raw socket, leave after two text deltas, and check the proxy hangs up upstream."""
    raw = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(raw) + raw)
    received = b""
    while received.count(b"event: content_block_delta") < 2:
        data = sock.recv(65536)
        assert data, "the proxy closed the stream early"
        received += data
    sock.close()
    sent_then = slow_upstream.sent
    # the slow upstream would go on for a minute; the proxy must hang up on it within a few gaps
    assert slow_upstream.closed.wait(8), "upstream connection still open after the client left"
    assert slow_upstream.sent - sent_then <= 15  # events, 0.2 s apart: closed within ~3 s at worst


class Recorder(BaseHTTPRequestHandler):
    """A telemetry endpoint / Slack webhook that records every JSON POST."""

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.posts.append({"path": self.path, "json": json.loads(body)})
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.posts = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
