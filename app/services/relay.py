"""Shared pieces of relaying an upstream answer: keep-alive while the upstream is silent, error mapping."""
from __future__ import annotations

from typing import Iterator

import gevent
from gevent.queue import Empty, Queue
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from app.errors import ProxyError, error_type_for_status, upstream_error_message
from app.services.upstream import close_quietly

_END = object()


def with_keepalive(chunks: Iterator[bytes], interval: float) -> Iterator[bytes | None]:
    """Yield the chunks as they come, and None whenever the upstream has been silent for `interval` s.

    The upstream is read in a helper greenlet so a silent upstream (a reasoning model thinking for
    minutes) never blocks the keep-alive; closing this generator kills the reader at once.
    """
    if not interval:
        yield from chunks
        return
    queue: Queue = Queue(maxsize=64)

    def pump() -> None:
        try:
            for chunk in chunks:
                queue.put(chunk)
            queue.put(_END)
        except BaseException as exc:  # handed to the consumer, which decides what it means
            queue.put(exc)

    reader = gevent.spawn(pump)
    try:
        while True:
            try:
                item = queue.get(timeout=interval)
            except Empty:
                yield None
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        reader.kill(block=False)


def stream_failure(exc: BaseException, shutting_down: bool = False) -> tuple[str, str]:
    """The Anthropic error type and message for an upstream that failed after the stream started."""
    if shutting_down:
        return "overloaded_error", "The proxy is shutting down; please retry the request"
    if isinstance(exc, ReadTimeoutError):
        return "timeout_error", "Upstream stopped sending data (read timeout)"
    if isinstance(exc, (ProtocolError, HTTPError, OSError)):
        return "api_error", "Upstream connection dropped mid-stream"
    if isinstance(exc, ProxyError):
        return exc.error_type, exc.message
    return "api_error", f"Upstream stream failed: {type(exc).__name__}"


def upstream_http_error(status: int, body: bytes, headers) -> ProxyError:
    """A ProxyError carrying the upstream's status, its Anthropic error type and its own message."""
    extra = {}
    retry_after = headers.get("retry-after")
    if retry_after:
        extra["retry-after"] = retry_after
    err = ProxyError(status, upstream_error_message(status, body), error_type_for_status(status), extra)
    err.upstream_kind = status_kind(status)
    return err


def status_kind(status: int) -> str:
    """The metrics kind of an upstream's error status."""
    return "status_5xx" if status >= 500 else "status_4xx"


def failure_kind(exc: BaseException) -> str:
    """The metrics kind of an upstream that failed while its answer was being read."""
    return "timeout" if isinstance(exc, ReadTimeoutError) else "mid_stream"


def read_error_body(resp, limit: int = 65536) -> bytes:
    try:
        return resp.read(limit)
    except Exception:
        return b""
    finally:
        try:
            resp.close()
        except Exception:
            pass


class StreamBody:
    """A streamed answer handed to the WSGI server.

    A generator's `finally` only runs once it has started: if the server closes the body before asking
    for the first chunk (the client left at once), `abandon` does the generator's cleanup instead, so the
    upstream connection is closed and the request is still accounted.
    """

    __slots__ = ("_gen", "_started", "_abandon")

    def __init__(self, gen: Iterator[bytes], abandon) -> None:
        self._gen = gen
        self._started = False
        self._abandon = abandon

    def __iter__(self) -> Iterator[bytes]:
        self._started = True
        return self._gen

    def close(self) -> None:
        if not self._started:
            self._started = True
            self._abandon()
        close = getattr(self._gen, "close", None)
        if close is not None:
            close()


def abandoned(resp, rec, recorder, started: float):
    """The cleanup of a stream the client left before it began."""
    def abandon() -> None:
        close_quietly(resp)
        rec.error_type = rec.error_type or "client_disconnected"
        recorder.finish(rec, started)

    return abandon
