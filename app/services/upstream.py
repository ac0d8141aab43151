"""The pooled HTTP client both modes use to reach their upstream.

Built directly on urllib3's pool (the one `requests` uses underneath): the proxy's hot path needs
keep-alive, timeouts, raw byte streaming and nothing else, and skipping requests' per-call layers
measurably lowers the CPU per request. Retries happen only before the first byte reaches the client.
"""
from __future__ import annotations

import logging
import random
import time
import weakref
from typing import Iterator, Mapping

import gevent
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from app.errors import ProxyError
from config.settings import Settings

log = logging.getLogger("nexus.upstream")

RETRY_STATUSES = frozenset({429, 503, 529})
READ_SIZE = 65536
_BUSY_READ = READ_SIZE // 2


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
        self._sleep = sleep or time.sleep
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
        retry_statuses: frozenset = RETRY_STATUSES,
        max_retries: int | None = None,
        timeout: urllib3.Timeout | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Send a request and return the response with its body unread.

        Connection failures and `retry_statuses` answers (429/503/529) are retried `max_retries` times with
        backoff, honouring `retry-after` up to `retry_max_wait`. Failures become a ProxyError (502/504).
        A failover layer above passes its own `retry_statuses`, `max_retries` and the `timeout` left to it.
        """
        attempts = (self.settings.max_retries if max_retries is None else max_retries) + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = self.pool.urlopen(
                    method, url, body=body, headers=headers, preload_content=False,
                    decode_content=decode_content, redirect=False, retries=False,
                    **({"timeout": timeout} if timeout is not None else {}),
                )
            except (ConnectTimeoutError, NewConnectionError) as exc:
                if last:
                    raise ProxyError(502, f"Upstream unreachable: {_reason(exc)}", "api_error") from None
                self._backoff(attempt, None, f"connection failed ({_reason(exc)})")
                continue
            except ReadTimeoutError:
                raise ProxyError(504, f"Upstream did not answer within {self.settings.read_timeout:g}s", "timeout_error") from None
            except (ProtocolError, HTTPError) as exc:
                # The connection broke before any answer (e.g. a stale keep-alive socket): safe to retry.
                if last:
                    raise ProxyError(502, f"Upstream connection failed: {_reason(exc)}", "api_error") from None
                self._backoff(attempt, None, f"connection error ({_reason(exc)})")
                continue
            if resp.status in retry_statuses and not last:
                wait = _retry_after(resp.headers.get("retry-after"))
                if wait is None or wait <= self.settings.retry_max_wait:
                    resp.drain_conn()
                    resp.release_conn()
                    self._backoff(attempt, wait, f"HTTP {resp.status}")
                    continue
            self._open.add(resp)
            return resp
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: float | None, why: str) -> None:
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


def iter_body(resp: urllib3.BaseHTTPResponse, decode_content: bool = True) -> Iterator[bytes]:
    """Yield the body as the bytes arrive (not in fixed-size blocks), ending at EOF.

    A read that fills most of the buffer means more bytes are waiting, and gevent's socket reads return at
    once without a switch: the loop yields to the other greenlets so one huge answer cannot hold the worker.
    """
    read1 = resp.read1
    while True:
        chunk = read1(READ_SIZE, decode_content=decode_content)
        if not chunk:
            return
        yield chunk
        if len(chunk) >= _BUSY_READ:
            gevent.sleep(0)


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
