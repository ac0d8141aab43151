"""BodyReader against a real socket server that sends exactly the bytes each test scripts.

The proxy runs under gevent, whose timers interrupt a socket wait; `test_all_of_it_under_gevent` runs
this module again in a monkey-patched interpreter, where the silence and timeout cases run too.
"""
from __future__ import annotations

import os

if os.environ.get("NEXUS_TEST_GEVENT"):
    from gevent import monkey

    monkey.patch_all()

import gzip
import socket
import subprocess
import sys
import threading
import time

import pytest
import urllib3
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from app.services.bodyreader import BodyReader


class ScriptedServer:
    """Accepts connections; for each request sends the next script: a list of bytes or float pauses."""

    def __init__(self, scripts):
        self.scripts = list(scripts)
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while self.scripts:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            while self.scripts:
                data = b""
                while not data.endswith(b"\r\n\r\n{}"):
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    data += piece
                script = self.scripts.pop(0)
                for step in script:
                    if isinstance(step, float):
                        time.sleep(step)
                    elif step is None:
                        return  # close the connection here
                    else:
                        conn.sendall(step)

    def close(self):
        self.scripts = []
        self.sock.close()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _open(server, pool=None, timeout=5.0):
    pool = pool or urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=timeout))
    resp = pool.urlopen("POST", "http://127.0.0.1:%d/x" % server.port, body=b"{}", preload_content=False)
    return pool, resp


def _read_all(reader, wait=None):
    out = []
    while True:
        data = reader.read(wait)
        if data is None:
            continue
        if data == b"":
            return out
        out.append(data)


@pytest.fixture
def serve():
    servers = []

    def make(*scripts):
        s = ScriptedServer(scripts)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def test_chunks_already_waiting_arrive_as_one_piece_and_a_lone_chunk_is_not_held(serve):
    events = [b"event: e%d\ndata: {}\n\n" % i for i in range(5)]
    server = serve([CHUNKED + b"".join(_chunk(e) for e in events[:3]), 0.2, _chunk(events[3]), 0.2,
                    _chunk(events[4]) + b"0\r\n\r\n"])
    _, resp = _open(server)
    reader = BodyReader(resp, read_timeout=5)
    pieces = _read_all(reader)
    assert b"".join(pieces) == b"".join(events)
    assert pieces[0] == b"".join(events[:3])  # three events that were waiting: one piece
    assert len(pieces) == 3
    assert reader.complete


def test_chunk_framing_split_anywhere_across_reads(serve):
    body = b"".join(_chunk(b"data: %d\n\n" % i) for i in range(20)) + b"0\r\n\r\n"
    steps = [CHUNKED]
    for i in range(0, len(body), 3):  # a byte-trickle: size lines, data and CRLFs all cut apart
        steps += [body[i:i + 3], 0.002]
    server = serve(steps)
    _, resp = _open(server)
    out = b"".join(_read_all(BodyReader(resp, read_timeout=5)))
    assert out == b"".join(b"data: %d\n\n" % i for i in range(20))


def test_trailers_and_chunk_extensions(serve):
    server = serve([CHUNKED + b"5;ext=1\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n"])
    _, resp = _open(server)
    reader = BodyReader(resp, read_timeout=5)
    assert b"".join(_read_all(reader)) == b"hello"
    assert reader.complete


def test_content_length_and_close_delimited_bodies(serve):
    server = serve([b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello", 0.05, b" world"])
    _, resp = _open(server)
    assert b"".join(_read_all(BodyReader(resp, read_timeout=5))) == b"hello world"
    server = serve([b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil", 0.05, b" close", None])
    _, resp = _open(server)
    assert b"".join(_read_all(BodyReader(resp, read_timeout=5))) == b"until close"


def test_gzip_body_is_decoded(serve):
    raw = b"".join(b"event: delta\ndata: {\"i\": %d}\n\n" % i for i in range(50))
    packed = gzip.compress(raw)
    head = CHUNKED.replace(b"\r\n\r\n", b"\r\ncontent-encoding: gzip\r\n\r\n")
    server = serve([head + _chunk(packed[:40]), 0.05, _chunk(packed[40:]) + b"0\r\n\r\n"])
    _, resp = _open(server)
    assert b"".join(_read_all(BodyReader(resp, read_timeout=5))) == raw


UNDER_GEVENT = bool(os.environ.get("NEXUS_TEST_GEVENT"))


def test_all_of_it_under_gevent():
    if UNDER_GEVENT:
        pytest.skip("this is the run under gevent")
    env = dict(os.environ, NEXUS_TEST_GEVENT="1")
    out = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout


@pytest.mark.skipif(not UNDER_GEVENT, reason="gevent timers time the waits (run by test_all_of_it_under_gevent)")
def test_silence_gives_none_and_the_read_timeout_still_holds(serve):
    server = serve([CHUNKED + _chunk(b"a"), 0.35, _chunk(b"b") + b"0\r\n\r\n"])
    _, resp = _open(server)
    reader = BodyReader(resp, read_timeout=5)
    assert reader.read(0.1) == b"a"
    nones = 0
    while (data := reader.read(0.1)) is None:
        nones += 1
    assert data == b"b" and nones >= 2

    server = serve([CHUNKED + _chunk(b"a"), 2.0, _chunk(b"late")])
    _, resp = _open(server, timeout=0.3)
    reader = BodyReader(resp, read_timeout=0.3)
    assert reader.read(0.1) == b"a"
    with pytest.raises(ReadTimeoutError):
        while reader.read(0.1) is None:
            pass


def test_cut_or_malformed_bodies_are_protocol_errors(serve):
    server = serve([CHUNKED + b"10\r\nonly-part", None])
    _, resp = _open(server)
    with pytest.raises(ProtocolError):
        _read_all(BodyReader(resp, read_timeout=5))
    server = serve([CHUNKED + b"zz\r\nhello\r\n"])
    _, resp = _open(server)
    with pytest.raises(ProtocolError):
        _read_all(BodyReader(resp, read_timeout=5))
    server = serve([CHUNKED + b"5\r\nhelloXX"])
    _, resp = _open(server)
    with pytest.raises(ProtocolError):
        _read_all(BodyReader(resp, read_timeout=5))


def test_a_fully_read_body_leaves_the_connection_reusable(serve):
    body = _chunk(b"data: 1\n\n") + b"0\r\n\r\n"
    server = serve([CHUNKED + body], [CHUNKED + body])
    pool, resp = _open(server)
    reader = BodyReader(resp, read_timeout=5)
    assert b"".join(_read_all(reader)) == b"data: 1\n\n"
    reader.finish()
    resp.release_conn()
    _, resp2 = _open(server, pool)
    assert b"".join(_read_all(BodyReader(resp2, read_timeout=5))) == b"data: 1\n\n"
    assert server.connections == 1


@pytest.mark.skipif(not UNDER_GEVENT, reason="gevent timers time the waits (run by test_all_of_it_under_gevent)")
def test_reads_push_the_read_timeout_on_and_silence_after_them_still_times_out(serve):
    # Events 0.1 s apart for longer than the timeout: the deadline moves with each one; then silence.
    steps = [CHUNKED]
    for i in range(8):
        steps += [_chunk(b"data: %d\n\n" % i), 0.1]
    steps += [3.0, _chunk(b"late")]
    server = serve(steps)
    _, resp = _open(server, timeout=0.3)
    reader = BodyReader(resp, read_timeout=0.3)
    got = b""
    with pytest.raises(ReadTimeoutError):
        while True:
            data = reader.read()
            got += data
            last = time.monotonic()
    assert got == b"".join(b"data: %d\n\n" % i for i in range(8))
    assert 0.25 <= time.monotonic() - last < 1.0  # the timeout counted from the last event, not the first
    reader.close()


@pytest.mark.skipif(not UNDER_GEVENT, reason="the socket wait exists under gevent (run by test_all_of_it_under_gevent)")
def test_the_proxys_upstream_connections_are_read_without_a_timer_per_event(serve, monkeypatch):
    import gevent

    from app.services import upstream

    steps = [CHUNKED]
    for i in range(20):
        steps += [_chunk(b"data: %d\n\n" % i), 0.01]
    server = serve(steps + [b"0\r\n\r\n"])
    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=5))
    pool.pool_classes_by_scheme = {"http": upstream._HTTPPool}
    _, resp = _open(server, pool)
    timers = []
    real_init = gevent.Timeout.__init__

    def counting_init(self, *args, **kwargs):
        timers.append(args)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(gevent.Timeout, "__init__", counting_init)
    reader = BodyReader(resp, read_timeout=5)
    assert b"".join(_read_all(reader, wait=15.0)) == b"".join(b"data: %d\n\n" % i for i in range(20))
    reader.close()
    # gevent's socket builds a Timeout for each wait of a read with a timeout; the reader's wait does not.
    assert len(timers) < 3, timers
