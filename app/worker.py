"""The gunicorn worker: gevent's, plus prompt closing of idle keep-alive connections at shutdown, fair
accepts, and gunicorn's per-request constants worked out once (app/server_tuning.py).

gunicorn's gevent worker waits, on a graceful stop, until every connection is gone, and a keep-alive
connection waiting for its next request counts as busy. Claude Code and nginx keep connections open,
so every restart would take the whole GRACEFUL_TIMEOUT. This worker knows which connections are idle
(waiting for a request line) and shuts those down when the stop begins; requests in flight finish.
"""
from __future__ import annotations

import socket

import gevent
from gevent.server import StreamServer
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

from .server_tuning import tune_gunicorn
from .sockets import one_send


class _OneAcceptServer(StreamServer):
    """Accepts one connection per turn of the loop, as gunicorn's own servers do when there is more than one
    worker. With one worker gevent's default is up to 100, and each accepted request then runs until its first
    wait: a burst of new connections would hold every open stream's next chunk back for the whole batch
    (tens of milliseconds). One at a time, the open streams' chunks go out between the new requests."""

    max_accept = 1


class _IdleWait:
    """The keep-alive wait for the next request on one connection (gunicorn's `timeout_ctx`)."""

    __slots__ = ("worker", "timer", "key")

    def __init__(self, worker: "ProxyWorker") -> None:
        self.worker = worker

    def __enter__(self):
        worker = self.worker
        if not worker.alive:
            raise StopIteration("worker is shutting down")  # gunicorn closes the connection quietly
        self.key = gevent.getcurrent()
        worker.idle.add(self.key)
        self.timer = gevent.Timeout(worker.cfg.keepalive, False)
        self.timer.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.timer.close()
        self.worker.idle.discard(self.key)
        return exc is self.timer  # the keep-alive timeout ends the wait silently, as gevent's worker does


class ProxyWorker(GeventWorker):
    def init_process(self) -> None:
        self.connections: dict = {}
        self.idle: set = set()
        tune_gunicorn(self.cfg)
        ggevent.StreamServer = _OneAcceptServer  # the name GeventWorker.run builds its servers with
        super().init_process()

    def handle(self, listener, client, addr) -> None:
        one_send(client)
        key = gevent.getcurrent()
        self.connections[key] = client
        try:
            super().handle(listener, client, addr)
        finally:
            self.connections.pop(key, None)
            self.idle.discard(key)

    def timeout_ctx(self):
        return _IdleWait(self)

    def close_idle_connections(self) -> int:
        """Shut down connections that are waiting for a request; the client sees a clean close."""
        closed = 0
        for key in list(self.idle):
            client = self.connections.get(key)
            if client is None:
                continue
            try:
                client.shutdown(socket.SHUT_RDWR)
                closed += 1
            except OSError:
                pass
        return closed
