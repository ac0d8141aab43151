"""Helpers for the fleet tests: a switchable TCP forwarder in front of PostgreSQL, and a small client.

`PgForwarder` stands between the proxies and the real PostgreSQL server, so a test can take the
database away (and give it back) without touching the server other tests use. `call()` sends one
Messages request with a chosen Host header and returns the usage the upstream reported.
"""
from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

PG_ADDRESS = ("127.0.0.1", 5432)


class PgForwarder:
    """Accept on 127.0.0.1:<port>, pipe bytes to PostgreSQL. Switches, all effective at once:

    - `down(blackhole=False)`: close every open connection; refuse new ones (accept, then close at
      once), or with `blackhole=True` accept them and never answer (a host that vanished).
    - `up()`: forward again.
    - `stall()` / `release()`: hold the client->server bytes of open connections (a database that is
      slow to answer); `held` is set once a client sent something that is being held.
    """

    def __init__(self, target: tuple[str, int] = PG_ADDRESS, mode: str = "up") -> None:
        self.target = target
        self.mode = mode  # "up", "refuse", "blackhole"
        self.stalled = False
        self.held = threading.Event()
        self.accepted = 0
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._limbo: list[socket.socket] = []  # blackholed clients
        self._closed = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="pg-forwarder", daemon=True)
        self._thread.start()

    def url_for(self, database_url: str) -> str:
        """`database_url` (a pg_url) with its host and port replaced by this forwarder's."""
        parts = urllib.parse.urlsplit(database_url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    # --- switches ------------------------------------------------------------------------------

    def down(self, blackhole: bool = False) -> None:
        with self._lock:
            self.mode = "blackhole" if blackhole else "refuse"
            pairs, self._pairs = self._pairs, set()
        for client, server in pairs:
            _close(client, reset=True)
            _close(server)

    def up(self) -> None:
        with self._lock:
            self.mode = "up"
            limbo, self._limbo = self._limbo, []
        for sock in limbo:
            _close(sock, reset=True)

    def stall(self) -> None:
        self.held.clear()
        self.stalled = True

    def release(self) -> None:
        self.stalled = False

    def close(self) -> None:
        self._closed = True
        self.down()
        self.up()
        _close(self._listener)
        self._thread.join(2)

    def __enter__(self) -> "PgForwarder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.1)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            with self._lock:
                mode = self.mode
                if mode == "blackhole":
                    self._limbo.append(client)
                    continue
            if mode == "refuse":
                _close(client, reset=True)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client, reset=True)
                continue
            pair = (client, server)
            with self._lock:
                if self.mode != "up":  # switched while connecting
                    _close(client, reset=True)
                    _close(server)
                    continue
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, server = pair
        try:
            while True:
                with self._lock:
                    if pair not in self._pairs:
                        return
                stalled = self.stalled
                watch = [server] if stalled else [client, server]
                ready, _, _ = select.select(watch, [], [], 0.05)
                if stalled and not self.held.is_set():
                    waiting, _, _ = select.select([client], [], [], 0)
                    if waiting:
                        self.held.set()
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (server if src is client else client).sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._pairs.discard(pair)
            _close(client)
            _close(server)


def _close(sock: socket.socket, reset: bool = False) -> None:
    try:
        if reset:  # RST instead of FIN: what a crashed or firewalled server looks like to libpq
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# --- a client ------------------------------------------------------------------------------------

@dataclass
class Usage:
    """What one request cost, as the upstream reported it to the client."""
    input_tokens: int = 0
    output_tokens: int = 0
    events: list[str] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)


def message_body(text: str, stream: bool = False, model: str = "claude-sonnet-4-5") -> dict:
    return {"model": model, "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": text}]}


def call(base_url: str, host: str, text: str, stream: bool = False, headers: dict | None = None,
         timeout: float = 30.0, on_event: Callable[[str], None] | None = None) -> Usage:
    """POST /v1/messages through the proxy with `Host: host`; raise unless it is a complete 200."""
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        payload = json.dumps(message_body(text, stream)).encode()
        hdrs = {"host": host, "content-type": "application/json", "anthropic-version": "2023-06-01",
                "accept-encoding": "identity", **(headers or {})}
        conn.request("POST", "/v1/messages", body=payload, headers=hdrs)
        resp = conn.getresponse()
        if resp.status != 200:
            raise AssertionError(f"{base_url} answered {resp.status}: {resp.read()[:500]!r}")
        usage = Usage()
        if not stream:
            body = json.loads(resp.read())
            usage.input_tokens = body["usage"]["input_tokens"]
            usage.output_tokens = body["usage"]["output_tokens"]
            return usage
        name = None
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.rstrip(b"\r\n")
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:") and name:
                data = json.loads(line[5:])
                usage.events.append(name)
                usage.event_times.append(time.monotonic())
                if on_event is not None:
                    on_event(name)
                if name == "message_start":
                    usage.input_tokens = data["message"]["usage"]["input_tokens"]
                elif name == "message_delta":
                    usage.output_tokens = data["usage"]["output_tokens"]
                elif name == "error":
                    raise AssertionError(f"stream error from {base_url}: {data}")
        if not usage.events or usage.events[-1] != "message_stop":
            raise AssertionError(f"incomplete stream from {base_url}: {usage.events}")
        return usage
    finally:
        conn.close()


def get_json(base_url: str, path: str, timeout: float = 15.0) -> tuple[int, Any]:
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, raw
    finally:
        conn.close()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Poll until `predicate()` is truthy; return its value or fail with the last one seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except (OSError, AssertionError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")
        time.sleep(interval)
