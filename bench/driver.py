"""Load driver: a gevent-patched process speaking raw HTTP/1.1 with keep-alive.

Run by bench/run.py as ``python -m bench.driver``; it reads one JSON job per line on stdin and answers one
JSON result per line on stdout. A job::

    {"host": "127.0.0.1", "port": 8080, "path": "/v1/messages", "headers": {...}, "body_file": "/tmp/x.json",
     "concurrency": 32, "requests": 1000, "stream": true, "expect_deltas": 10, "timeout": 60}

Each of `concurrency` greenlets keeps one connection and sends requests until `requests` have been sent.
For every response it records latency (to the last byte), and for streams the time to the first content
delta and the arrival time of each delta (events containing the bench marker ``zq``). Raw sockets and a
minimal parser keep the driver's own cost per request to a few tens of microseconds.
"""
if __name__ == "__main__":  # pragma: no cover
    from gevent import monkey

    monkey.patch_all()

import gc
import json
import socket
import sys
import time
from typing import Any

import gevent

MARKER = b"zq"  # every bench content delta carries one "zqNNN " word
_END_MARKERS = (b"message_stop", b"[DONE]", b"response.completed")


class HttpError(Exception):
    pass


class _Conn:
    """One keep-alive connection."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _request(conn: _Conn, payload: bytes, stream: bool, now=time.perf_counter, marker: bytes = MARKER) -> dict:
    """Send one request and read its response; returns timings (seconds from send)."""
    sock = conn.sock
    t0 = now()
    sock.sendall(payload)
    buf = conn.buf
    while True:
        idx = buf.find(b"\r\n\r\n")
        if idx >= 0:
            break
        data = sock.recv(65536)
        if not data:
            raise HttpError("connection closed before headers")
        buf += data
    t_head = now()
    head = buf[:idx].decode("latin-1")
    buf = buf[idx + 4:]
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = -1
    chunked = False
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    body = bytearray()
    deltas: list[float] = []
    first_byte = None
    pending = b""  # undelivered part of the current SSE event
    # chunked decoder state
    remaining = 0
    state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailer
    done = False
    t_data = t_head
    while True:
        new = b""
        if chunked:
            out = []
            while True:
                if state == 0:
                    i = buf.find(b"\r\n")
                    if i < 0:
                        break
                    size = int(buf[:i].split(b";", 1)[0], 16)
                    buf = buf[i + 2:]
                    if size == 0:
                        state = 3
                    else:
                        remaining, state = size, 1
                elif state == 1:
                    take = buf[:remaining]
                    out.append(take)
                    buf = buf[len(take):]
                    remaining -= len(take)
                    if remaining:
                        break
                    state = 2
                elif state == 2:
                    if len(buf) < 2:
                        break
                    buf = buf[2:]
                    state = 0
                else:
                    i = buf.find(b"\r\n")
                    if i < 0:
                        break
                    line, buf = buf[:i], buf[i + 2:]
                    if not line:
                        done = True
                        break
            new = b"".join(out)
        elif length >= 0:
            need = length - len(body)
            new, buf = buf[:need], buf[need:]
            done = len(body) + len(new) >= length
        else:
            new, buf = buf, b""  # read to close
        if new:
            if first_byte is None:
                first_byte = t_data
            body += new
            if stream:
                pending += new
                if b"\n\n" in pending:
                    parts = pending.split(b"\n\n")
                    pending = parts.pop()
                    for event in parts:
                        if marker in event:
                            deltas.append(t_data)
        if done:
            break
        data = sock.recv(65536)
        t_data = now()
        if not data:
            if length < 0 and not chunked:
                break
            raise HttpError("connection closed mid-body after %d bytes" % len(body))
        buf += data
    t_end = now()
    conn.buf = buf
    return {"status": status, "t0": t0, "head": t_head - t0, "first_byte": (first_byte or t_end) - t0,
            "end": t_end - t0, "deltas": [d - t0 for d in deltas], "body": body, "close": close}


def run_job(job: dict) -> dict:
    """Run one job (see the module docstring) and summarise it."""
    host, port = job["host"], int(job["port"])
    with open(job["body_file"], "rb") as f:
        body = f.read()
    headers = dict(job.get("headers") or {})
    headers.setdefault("content-type", "application/json")
    head = "POST %s HTTP/1.1\r\nHost: %s:%d\r\n" % (job["path"], host, port)
    head += "".join("%s: %s\r\n" % (k, v) for k, v in headers.items())
    head += "Content-Length: %d\r\n\r\n" % len(body)
    payload = head.encode("latin-1") + body
    stream = bool(job.get("stream"))
    # which events are content deltas: the marker word, or (Responses API, whose done events repeat the
    # text) the delta event's type
    marker = str(job.get("marker") or MARKER.decode()).encode()
    expect = int(job.get("expect_deltas") or 0)
    timeout = float(job.get("timeout") or 60)
    total = int(job["requests"])
    concurrency = max(1, min(int(job["concurrency"]), total))
    counter = iter(range(total))
    lat: list[float] = []
    ttfb: list[float] = []
    heads: list[float] = []
    gaps: list[float] = []
    errors: list[str] = []
    started: list[float] = []
    finished: list[float] = []

    def check(r: dict) -> str | None:
        if r["status"] != 200:
            return "status %d: %s" % (r["status"], bytes(r["body"][:200]).decode("utf-8", "replace"))
        if stream:
            if len(r["deltas"]) != expect:
                return "saw %d content deltas, expected %d" % (len(r["deltas"]), expect)
            tail = bytes(r["body"][-200:])
            if not any(m in tail for m in _END_MARKERS):
                return "stream did not end with message_stop/[DONE]: %r" % tail[-80:]
        elif MARKER not in r["body"]:
            return "JSON answer without the bench content: %r" % bytes(r["body"][:200])
        return None

    def worker() -> None:
        conn: _Conn | None = None
        for _ in counter:
            try:
                if conn is None:
                    conn = _Conn(host, port, timeout)
                r = _request(conn, payload, stream, marker=marker)
            except (OSError, HttpError, ValueError) as exc:
                errors.append("%s: %s" % (type(exc).__name__, exc))
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if r["close"]:
                conn.close()
                conn = None
            problem = check(r)
            if problem:
                errors.append(problem)
                continue
            started.append(r["t0"])
            finished.append(r["t0"] + r["end"])
            lat.append(r["end"])
            heads.append(r["head"])
            ds = r["deltas"]
            if stream:
                ttfb.append(ds[0] if ds else r["first_byte"])
                gaps.extend(ds[i] - ds[i - 1] for i in range(1, len(ds)))
            else:
                ttfb.append(r["first_byte"])
        if conn is not None:
            conn.close()

    t_start = time.perf_counter()
    greenlets = [gevent.spawn(worker) for _ in range(concurrency)]
    gevent.joinall(greenlets)
    wall = time.perf_counter() - t_start
    return {"n": len(lat), "errors": len(errors), "error_samples": errors[:5], "wall": wall,
            "lat": lat, "ttfb": ttfb, "head": heads, "gaps": gaps}


def main() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        # The driver's own collections would show up as late chunks of whichever side runs when one comes:
        # collect between jobs, never during one (a job's garbage is bounded by its requests).
        gc.collect()
        gc.disable()
        try:
            result: Any = run_job(job)
        except Exception as exc:  # report, keep serving
            result = {"fatal": "%s: %s" % (type(exc).__name__, exc)}
        finally:
            gc.enable()
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    main()
