"""The pooled HTTP client both modes use to reach their upstream.

Built directly on urllib3's pool (the one `requests` uses underneath): the proxy's hot path needs
keep-alive, timeouts, raw byte streaming and nothing else, and skipping requests' per-call layers
measurably lowers the CPU per request. Retries happen only before the first byte reaches the client.
"""
from __future__ import annotations

import _socket
import logging
import random
import ssl
import threading
import time
import weakref
from typing import Mapping

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.url import parse_url

from ..errors import ProxyError, from_upstream, upstream_host
from ..sockets import one_send
from .httpmessage import HTTPResponse as FastHeadersResponse
from ..settings import Settings

log = logging.getLogger("nexus.upstream")

RETRY_STATUSES = frozenset({429, 503, 529})
_ROUTES = 256  # URLs whose pool and target are remembered (passthrough paths and query strings vary)

_PEEK = _socket.MSG_PEEK | _socket.MSG_DONTWAIT
# The callback of the request being sent in this greenlet (gevent patches threading.local).
_sending = threading.local()


class _NotifyingHTTPConnection(HTTPConnection):
    """Calls the sender's `on_sent` once the whole request is written to the socket: from then on the
    upstream has it even if this process dies, which is when the accounting journals the request."""

    response_class = FastHeadersResponse

    def _new_conn(self):  # type: ignore[override]
        sock = super()._new_conn()
        one_send(sock)
        return sock

    def request(self, *args, **kwargs):  # type: ignore[override]
        super().request(*args, **kwargs)
        _notify_sent()

    @property
    def is_connected(self) -> bool:
        # urllib3 asks before reusing a pooled connection: "not readable" (no EOF, no stray bytes) means
        # alive. Its answer is a poll, which under gevent builds a watcher per call; a non-blocking peek
        # on the OS socket says the same.
        sock = self.sock
        if sock is None:
            return False
        raw = getattr(sock, "_sock", sock)  # gevent's cooperative socket wraps the OS one (non-blocking)
        if (not isinstance(raw, _socket.socket) or isinstance(raw, ssl.SSLSocket)
                or _socket.socket.gettimeout(raw) != 0.0):  # a timeout would make the peek wait
            return super().is_connected
        try:
            _socket.socket.recv(raw, 1, _PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False


class _NotifyingHTTPSConnection(HTTPSConnection):
    response_class = FastHeadersResponse

    def request(self, *args, **kwargs):  # type: ignore[override]
        super().request(*args, **kwargs)
        _notify_sent()


def _notify_sent() -> None:
    callback = getattr(_sending, "callback", None)
    if callback is not None:
        _sending.callback = None
        callback()


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _NotifyingHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _NotifyingHTTPSConnection


class UpstreamClient:
    def __init__(self, settings: Settings, sleep=None) -> None:
        self.settings = settings
        self.timeout = urllib3.Timeout(connect=settings.connect_timeout or None, read=settings.read_timeout or None)
        self.pool = urllib3.PoolManager(
            num_pools=16,
            maxsize=max(10, settings.worker_connections),
            block=False,
            retries=False,
            timeout=self.timeout,
        )
        self.pool.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        self._routes: dict[str, tuple[HTTPConnectionPool, str]] = {}
        self._sleep = sleep or time.sleep
        self.on_retry = None  # called with the reason of each retry (metrics)
        # Open streaming responses, so a shutdown that runs out of time can end them cleanly.
        self._open: "weakref.WeakSet[urllib3.BaseHTTPResponse]" = weakref.WeakSet()
        self.shutting_down = False

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        decode_content: bool = True,
        on_sent=None,
        retry_statuses: frozenset = RETRY_STATUSES,
        max_retries: int | None = None,
        timeout: urllib3.Timeout | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Send a request and return the response with its body unread. `on_sent()` is called once the
        request is on the wire (each attempt).

        Connection failures and `retry_statuses` answers (429/503/529) are retried `max_retries` times with
        backoff, honouring `retry-after` up to `retry_max_wait`. Failures become a ProxyError (502/504).
        A failover layer above passes its own `retry_statuses`, `max_retries` and the `timeout` left to it.
        """
        attempts = (self.settings.max_retries if max_retries is None else max_retries) + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            _sending.callback = on_sent
            try:
                pool, target = self._route(url)
                resp = pool.urlopen(
                    method, target, body=body, headers=headers, preload_content=False,
                    decode_content=decode_content, redirect=False, retries=False, assert_same_host=False,
                    **({"timeout": timeout} if timeout is not None else {}),
                )
            except (ConnectTimeoutError, NewConnectionError) as exc:
                if last:
                    raise _upstream(ProxyError(502, from_upstream(upstream_host(url), f"is unreachable: {_reason(exc)}"),
                                               "api_error"), "connect") from None
                self._backoff(attempt, None, f"connection failed ({_reason(exc)})", "connect")
                continue
            except ReadTimeoutError:
                raise _upstream(ProxyError(504, from_upstream(upstream_host(url),
                                                              f"did not answer within {self.settings.read_timeout:g}s"),
                                           "timeout_error"), "timeout") from None
            except (ProtocolError, HTTPError) as exc:
                # The connection broke before any answer (e.g. a stale keep-alive socket): safe to retry.
                if last:
                    raise _upstream(ProxyError(502, from_upstream(upstream_host(url), f"connection failed: {_reason(exc)}"),
                                               "api_error"), "connect") from None
                self._backoff(attempt, None, f"connection error ({_reason(exc)})", "connection_error")
                continue
            finally:
                _sending.callback = None
            if resp.status in retry_statuses and not last:
                wait = _retry_after(resp.headers.get("retry-after"))
                if wait is None or wait <= self.settings.retry_max_wait:
                    resp.drain_conn()
                    resp.release_conn()
                    self._backoff(attempt, wait, f"HTTP {resp.status}", f"status_{resp.status}")
                    continue
            self._open.add(resp)
            return resp
        raise AssertionError("unreachable")

    def time_left(self, started: float, budget: float) -> urllib3.Timeout:
        """A failover try's timeouts: the configured ones, cut to what is left of the request's `budget`
        seconds (from `started`, a perf_counter time), so the tries together stay inside the request's time."""
        s = self.settings
        if not budget:
            return urllib3.Timeout(connect=s.connect_timeout or None, read=s.read_timeout or None)
        left = max(0.5, budget - (time.perf_counter() - started))
        return urllib3.Timeout(connect=min(s.connect_timeout or left, left), read=min(s.read_timeout or left, left))

    def _route(self, url: str) -> tuple[HTTPConnectionPool, str]:
        """The pool for `url`'s origin and the request target: what `PoolManager.urlopen` works out on every
        call (it parses the URL and looks the pool up), worked out once per URL."""
        route = self._routes.get(url)
        if route is None or route[0].pool is None:  # new, or closed (the manager let the pool go)
            u = parse_url(url)
            route = (self.pool.connection_from_host(u.host, port=u.port, scheme=u.scheme), u.request_uri)
            if len(self._routes) >= _ROUTES:
                self._routes.clear()
            self._routes[url] = route
        return route

    def _backoff(self, attempt: int, retry_after: float | None, why: str, reason: str) -> None:
        if self.on_retry is not None:
            self.on_retry(reason)
        delay = retry_after if retry_after is not None else min(0.5 * 2 ** attempt, 8.0) * (0.5 + random.random() / 2)
        delay = min(delay, self.settings.retry_max_wait)
        log.info("upstream %s; retrying in %.2fs (attempt %d)", why, delay, attempt + 2)
        self._sleep(delay)

    def close_open_streams(self) -> int:
        """Close every response still streaming (graceful shutdown ran out of time). Returns how many."""
        self.shutting_down = True
        count = 0
        for resp in list(self._open):
            try:
                if not resp.closed:
                    resp.close()
                    count += 1
            except Exception:  # closing is best effort
                pass
        return count


def close_quietly(resp: urllib3.BaseHTTPResponse | None, complete: bool = False) -> None:
    """Release a fully read response to the pool; close (drop the socket of) one that was cut short."""
    if resp is None:
        return
    try:
        if complete:
            resp.release_conn()
        else:
            resp.close()
            if resp.connection is not None:
                resp.connection.close()
    except Exception:
        pass


def _upstream(err: ProxyError, kind: str) -> ProxyError:
    err.upstream_kind = kind
    return err


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _reason(exc: Exception) -> str:
    text = str(getattr(exc, "reason", None) or exc)
    # urllib3 messages embed the pool repr; the tail is the useful part.
    return text.split(": ", 1)[-1][:200] if ": " in text else text[:200]
