"""The one frame every streamed answer is relayed in, and the pieces around it.

`relay_stream` owns the loop: start, read the upstream as it arrives, ping while it is silent, notice the
client going away, turn an upstream failure into an `event: error`, then close the upstream and record
the request. What the bytes become is the job of a `StreamPlug`: translation converts OpenAI chunks into
Anthropic events, passthrough relays them untouched while a side parser reads the usage.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol

import gevent
from gevent.queue import Empty, Queue
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from app import logs
from app.errors import ProxyError, error_type_for_status, upstream_error_message
from app.records import RequestRecord
from app.services.upstream import close_quietly, iter_body
from app.translation.stream import PING
from app.usage import Usage, apply_usage

_END = object()


class StreamPlug(Protocol):
    """What one kind of stream does inside the frame."""

    done: bool  # the plug saw the stream's end: stop reading
    reusable: bool  # the upstream was read to a clean end: its connection can go back to the pool

    def head(self) -> bytes:
        """Bytes the client gets before the first upstream chunk."""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes the client gets for one upstream chunk (b"" for none yet)."""

    def seen(self, out: bytes) -> None:
        """Called once `out` has gone to the client: work that must not delay it."""

    def tail(self) -> bytes:
        """The upstream ended (or `done`): the stream's last bytes."""

    def failure(self, error_type: str, message: str) -> bytes:
        """The `event: error` that ends the stream after an upstream failure."""

    def usage(self) -> Usage:
        """What the stream used and said, for the request record."""


def relay_stream(resp, rec: RequestRecord, plug: StreamPlug, recorder, *, ping_interval: float = 0.0,
                 shutting_down: Callable[[], bool] = lambda: False) -> "StreamBody":
    """The body of a streamed reply: `plug` run in the frame, with the cleanup of a client that never read it."""
    return StreamBody(_frame(resp, rec, plug, recorder, ping_interval, shutting_down),
                      abandoned(resp, rec, recorder))


def _frame(resp, rec: RequestRecord, plug: StreamPlug, recorder, ping_interval: float,
           shutting_down: Callable[[], bool]) -> Iterator[bytes]:
    debug = logs.debug_enabled()
    try:
        head = plug.head()
        if head:
            yield head
        for chunk in with_keepalive(iter_body(resp), ping_interval):
            if chunk is None:
                yield PING
                continue
            if debug:
                logs.debug_chunk(rec.request_id, chunk)
            out = plug.feed(chunk)
            if out:
                yield out
                plug.seen(out)
            if plug.done:
                break
        tail = plug.tail()
        if tail:
            yield tail
    except GeneratorExit:
        rec.error_type = rec.error_type or "client_disconnected"
        raise
    except Exception as exc:
        rec.error_type, rec.error_message = stream_failure(exc, shutting_down())
        yield plug.failure(rec.error_type, rec.error_message)
    finally:
        close_quietly(resp, complete=plug.reusable and rec.error_type is None)
        apply_usage(rec, plug.usage())
        recorder.finish(rec)


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
    return ProxyError(status, upstream_error_message(status, body), error_type_for_status(status), extra)


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


def abandoned(resp, rec: RequestRecord, recorder):
    """The cleanup of a stream the client left before it began."""
    def abandon() -> None:
        close_quietly(resp)
        rec.error_type = rec.error_type or "client_disconnected"
        recorder.finish(rec)

    return abandon
