"""The one frame every streamed answer is relayed in, and the pieces around it.

`relay_stream` owns the loop: start, read the upstream as it arrives, ping while it is silent, notice the
client going away, turn an upstream failure into an `event: error`, then close the upstream and record
the request. What the bytes become is the job of a `StreamPlug`: translation converts OpenAI chunks into
Anthropic events, passthrough relays them untouched while a side parser reads the usage.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol

from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from .. import logs
from ..errors import ProxyError, error_type_for_status, from_upstream, upstream_error_message
from ..records import RequestRecord
from .bodyreader import BodyReader
from .upstream import close_quietly
from ..translation.stream import PING
from ..usage import Usage, apply_usage


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
                 shutting_down: Callable[[], bool] = lambda: False, host: str = "(unknown)") -> "StreamBody":
    """The body of a streamed reply: `plug` run in the frame, with the cleanup of a client that never read it.

    `host` is the upstream's, named in the error that ends a stream the upstream broke off.
    """
    body = StreamBody(_frame(resp, rec, plug, recorder, ping_interval, shutting_down, host),
                      abandoned(resp, rec, recorder))
    recorder.stream_opened(rec)
    return body


def _frame(resp, rec: RequestRecord, plug: StreamPlug, recorder, ping_interval: float,
           shutting_down: Callable[[], bool], host: str) -> Iterator[bytes]:
    debug = logs.debug_enabled()
    reader = BodyReader(resp)
    wait = ping_interval or None
    first = True  # until the first content event has gone out (time to first token)
    try:
        head = plug.head()
        if head:
            yield head
        while not plug.done:
            chunk = reader.read(wait)
            if chunk is None:  # the upstream was silent for a ping interval
                yield PING
                continue
            if not chunk:
                break
            if debug:
                logs.debug_chunk(rec.request_id, chunk)
            out = plug.feed(chunk)
            if out:
                yield out
                if first and b"content_block_delta" in out:
                    first = False
                    recorder.first_token(rec)
                plug.seen(out)
        if plug.done:
            reader.read_end()
        tail = plug.tail()
        if tail:
            yield tail
    except GeneratorExit:
        rec.error_type = rec.error_type or "client_disconnected"
        raise
    except Exception as exc:
        rec.error_type, rec.error_message = stream_failure(exc, shutting_down(), host)
        rec.upstream_error = failure_kind(exc)
        yield plug.failure(rec.error_type, rec.error_message)
    finally:
        reader.close()
        reusable = reader.complete and plug.reusable and rec.error_type is None
        if reusable:
            reader.finish()
        close_quietly(resp, complete=reusable)
        apply_usage(rec, plug.usage())
        recorder.finish(rec)


def stream_failure(exc: BaseException, shutting_down: bool = False, host: str = "(unknown)") -> tuple[str, str]:
    """The Anthropic error type and message for an upstream that failed after the stream started."""
    if shutting_down:
        return "overloaded_error", "The proxy is shutting down; please retry the request"
    if isinstance(exc, ReadTimeoutError):
        return "timeout_error", from_upstream(host, "stopped sending data (read timeout)")
    if isinstance(exc, (ProtocolError, HTTPError, OSError)):
        return "api_error", from_upstream(host, "dropped the connection mid-stream")
    if isinstance(exc, ProxyError):
        return exc.error_type, exc.message
    return "api_error", f"The stream from upstream {host} failed: {type(exc).__name__}"


def upstream_http_error(status: int, body: bytes, headers, host: str) -> ProxyError:
    """A ProxyError carrying the upstream's status, its Anthropic error type and its own message, naming it."""
    extra = {}
    retry_after = headers.get("retry-after")
    if retry_after:
        extra["retry-after"] = retry_after
    err = ProxyError(status, upstream_error_message(status, body, host), error_type_for_status(status), extra)
    err.upstream_kind = status_kind(status)
    err.upstream_status = status
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


def abandoned(resp, rec: RequestRecord, recorder):
    """The cleanup of a stream the client left before it began."""
    def abandon() -> None:
        close_quietly(resp)
        rec.error_type = rec.error_type or "client_disconnected"
        recorder.finish(rec)

    return abandon
