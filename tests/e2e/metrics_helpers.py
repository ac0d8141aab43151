"""Helpers for the metrics and killed-worker tests: requests of each kind, scrapes parsed with
prometheus_client's own parser, and the gunicorn workers of a running proxy."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.server import ProxyServer

BODY = {"model": "claude-sonnet-4", "max_tokens": 50, "messages": [{"role": "user", "content": "Hello there"}]}


def post(proxy: ProxyServer, body: dict | None = None, host: str | None = None, path: str = "/v1/messages",
         headers: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)
    try:
        sent = {"content-type": "application/json", **(headers or {})}
        if host:
            sent["host"] = host
        conn.request("POST", path, body=json.dumps(body or BODY).encode(), headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get(proxy: ProxyServer, path: str, headers: dict | None = None, host: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        sent = dict(headers or {})
        if host:
            sent["host"] = host
        conn.request("GET", path, headers=sent)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def hang_up_after_first_delta(proxy: ProxyServer, body: dict) -> None:
    """Stream `body`, leave once the first text delta arrived."""
    raw = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(raw) + raw)
    received = b""
    while b"event: content_block_delta" not in received:
        data = sock.recv(65536)
        assert data, "the proxy closed the stream early"
        received += data
    sock.close()


class Scrape:
    """One /metrics answer, parsed by prometheus_client's text parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name: str) -> list:
        family = name
        for suffix in ("_total", "_bucket", "_count", "_sum"):
            if name.endswith(suffix) and name[: -len(suffix)] in self.families:
                family = name[: -len(suffix)]
        if family not in self.families:
            return []
        return [s for s in self.families[family].samples if s.name == name]

    def total(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples(name)
                   if all(s.labels.get(k) == v for k, v in labels.items()))

    def label_values(self, name: str, label: str) -> set:
        return {s.labels[label] for s in self.samples(name) if label in s.labels}


def scrape(proxy: ProxyServer, headers: dict | None = None) -> Scrape:
    status, body = get(proxy, "/metrics", headers)
    assert status == 200, body[:500]
    return Scrape(body.decode())


def wait_for(predicate: Callable, timeout: float = 20.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def workers(proxy: ProxyServer) -> set[int]:
    """The pids of the gunicorn master's children (its workers; a replay child lives for a moment only)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == proxy.pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def kill_workers(proxy: ProxyServer, count: int) -> set[int]:
    """SIGKILL every worker, wait until gunicorn has `count` new ones answering; returns the new pids."""
    old = workers(proxy)
    assert len(old) >= count, old
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    new = wait_for(lambda: (lambda now: now if len(now - old) >= count and not (now & old) else None)(workers(proxy)),
                   timeout=30)
    assert new, "gunicorn did not start new workers"
    assert wait_for(lambda: get(proxy, "/")[0] == 200, timeout=30)
    return new
