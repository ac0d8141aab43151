"""Reading a streamed upstream body straight from its socket.

urllib3 and http.client decode a chunked body one HTTP chunk per call, through five layers and a
timeout object per read. A stream of SSE events arrives as one HTTP chunk per event, so that is paid
per event. Here, once urllib3 has parsed the status line and headers, the body is read from the
socket in whole `recv`s and de-chunked in one pass: every event already waiting arrives as one piece
(one write to the client), and an event alone is never held back.

Waiting needs no reader greenlet: `read(wait)` returns None when the upstream was silent for `wait`
seconds, so the caller can send a keep-alive ping. On a plain gevent socket the reader waits on the
socket's own read watcher, with one deadline timer that lives as long as its deadline does (a stream's
reads move the deadline, they do not each build a timer: gevent's socket builds a Timeout per wait, and
a restarted libev timer keeps its first deadline, so neither is reused). TLS and other sockets wait with
the socket's own timeout.

Anything this does not handle (an encoding other than gzip/deflate, a response without a plain
socket) falls back to urllib3's own reads; the caller sees the same interface.
"""
from __future__ import annotations

import _socket
import socket
import ssl
import zlib
from typing import Callable

import gevent
from gevent import getcurrent

from urllib3.exceptions import ProtocolError, ReadTimeoutError

from ..sockets import plain_tcp

RECV_SIZE = 65536
_MAX_SIZE_LINE = 4096  # a chunk-size line (with extensions) longer than this is not HTTP


class SilentUpstream(Exception):
    """Internal: the wait ran out with no byte."""


class BodyReader:
    """The decoded body of one urllib3 response, read as it arrives.

    `read(wait)` returns the next bytes (possibly several HTTP chunks' worth), b"" at the end of the body,
    or None when nothing came within `wait` seconds. `complete` tells whether the body was read to its
    end (so the connection can go back to the pool).
    """

    __slots__ = ("_resp", "_sock", "_fp", "_read_timeout", "_silent", "_chunked", "_left", "_buf",
                 "_decoder", "complete", "_fallback", "_first", "_trailer", "_wait")

    def __init__(self, resp, read_timeout: float | None = None, decode_content: bool = True) -> None:
        self._resp = resp
        self._read_timeout = read_timeout
        self._silent = 0.0
        self.complete = False
        self._buf = b""
        self._first = True
        self._trailer = False
        self._decoder = None
        self._wait: _SocketWait | None = None
        self._fallback: Callable[[], bytes] | None = None
        hc = getattr(resp, "_fp", None)
        conn = getattr(resp, "connection", None)
        sock = getattr(conn, "sock", None) if conn is not None else None
        encoding = (resp.headers.get("content-encoding") or "").strip().lower() if decode_content else ""
        if hc is None or getattr(hc, "fp", None) is None or not isinstance(sock, socket.socket) \
                or encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            self._fallback = lambda: resp.read1(RECV_SIZE, decode_content=decode_content)
            self._sock = self._fp = None
            self._chunked, self._left = False, None
            return
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = _DeflateDecoder()
        self._sock = sock
        if plain_tcp(sock) and isinstance(getattr(sock, "_sock", None), _socket.socket):
            self._wait = _SocketWait(sock)  # plain TCP under gevent (TLS decrypts in its own recv)
        if read_timeout is None:
            self._read_timeout = sock.gettimeout()  # what urllib3 set from the client's read timeout
        self._fp = hc.fp
        self._chunked = bool(hc.chunked)
        # http.client's count of body bytes still expected (None: until the server closes)
        self._left = hc.length if not self._chunked else 0

    # -- public ---------------------------------------------------------------------------------
    def read(self, wait: float | None = None) -> bytes | None:
        if self._fallback is not None:
            return self._read_fallback()
        while True:
            if self.complete:
                return b""
            raw = self._recv(wait)
            if raw is None:
                return None
            data = self._dechunk(raw) if self._chunked else self._delimit(raw)
            if self._decoder is not None:
                data = self._decoder.decompress(data) + (self._decoder.flush() if self.complete else b"")
            if data or self.complete:
                return data
            # only framing arrived (a chunk-size line without its data): keep reading

    def read_end(self, wait: float = 0.05) -> None:
        """The caller saw the stream's last event: take what is left of the framing, so the connection is
        clean for reuse. Stops at the first silence; a body with more data than framing is not reusable."""
        if self._fallback is not None:
            return
        try:
            while not self.complete:
                data = self.read(wait)
                if data:
                    return  # more than the terminator: leave it, the connection will be closed
                if data is None:
                    return
        except Exception:
            return

    def close(self) -> None:
        """The stream is over, however it ended: drop the deadline timer."""
        if self._wait is not None:
            self._wait.close()

    def finish(self) -> None:
        """After the end of the body: close http.client's view of it, so the connection can be reused."""
        hc = getattr(self._resp, "_fp", None)
        if self.complete and hc is not None and self._fallback is None:
            try:
                self._sock.settimeout(self._read_timeout)  # as urllib3 left it, for the next request
                hc.close()  # drops the makefile reader only; the socket stays with the connection
            except Exception:
                pass

    # -- socket ---------------------------------------------------------------------------------
    def _recv(self, wait: float | None) -> bytes | None:
        if self._first:
            # Bytes read with the headers wait in http.client's buffer; take them without blocking.
            self._first = False
            self._sock.settimeout(0.0)
            try:
                early = self._fp.read1(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                early = b""  # nothing buffered, nothing on the socket yet
            finally:
                self._sock.settimeout(self._read_timeout)
            if early:
                self._silent = 0.0
                return early
        timeout = self._read_timeout
        if wait:
            timeout = wait if timeout is None else min(wait, max(timeout - self._silent, 0.001))
        try:
            if self._wait is not None:
                raw = self._wait.recv(timeout)
            else:
                # gevent tries the read first and builds a timer only when it has to wait
                self._sock.settimeout(timeout)
                raw = self._sock.recv(RECV_SIZE)
        except socket.timeout:
            if wait and (self._read_timeout is None or self._silent + timeout < self._read_timeout):
                self._silent += timeout
                return None
            raise ReadTimeoutError(None, None, "Read timed out.") from None
        except OSError as exc:
            raise ProtocolError("Connection broken: %r" % (exc,), exc) from None
        self._silent = 0.0
        if len(raw) >= RECV_SIZE // 2:
            # A flood (one huge event, a fast upstream): let the other streams of this worker run.
            gevent.sleep(0)
        if not raw:
            if self._chunked or self._left:
                raise ProtocolError("Connection broken: the upstream closed the body before its end")
            self.complete = True  # a body delimited by the close of the connection
        return raw

    # -- framing --------------------------------------------------------------------------------
    def _delimit(self, raw: bytes) -> bytes:
        if self._left is None:
            return raw
        if len(raw) >= self._left:
            raw = raw[: self._left]
            self._left = 0
            self.complete = True
        else:
            self._left -= len(raw)
        return raw

    def _dechunk(self, raw: bytes) -> bytes:
        """Payload of every chunk in `buf + raw`; an incomplete size line or chunk waits for more."""
        if self._left == 0 and not self._buf and not self._trailer:
            # The usual read of a stream: exactly one whole chunk (one event), framing and all.
            nl = raw.find(b"\n", 0, _MAX_SIZE_LINE)
            if nl > 0 and raw.endswith(b"\r\n"):
                try:
                    size = int(raw[:nl], 16)  # like the loop below: spaces and the CR around it are allowed
                except ValueError:
                    size = 0  # an extension or a bad size: the loop below tells which
                if size > 0 and len(raw) == nl + size + 3:
                    return raw[nl + 1:nl + 1 + size]
        buf = self._buf + raw if self._buf else raw
        out = []
        pos, end = 0, len(buf)
        while pos < end:
            if self._left > 0:  # inside a chunk's data
                take = min(self._left, end - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self._left = -2  # its CRLF comes next
                continue
            if self._left == -2:
                if end - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise ProtocolError("Malformed chunked body: missing CRLF after a chunk")
                pos += 2
                self._left = 0
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if end - pos > _MAX_SIZE_LINE:
                    raise ProtocolError("Malformed chunked body: chunk-size line too long")
                break
            line = buf[pos:nl].rstrip(b"\r")
            pos = nl + 1
            if self._trailer:
                if not line:
                    self.complete = True
                    pos = end  # nothing follows the body on this connection
                continue
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError("Malformed chunked body: bad chunk size %r" % size_text[:20]) from None
            if size < 0:
                raise ProtocolError("Malformed chunked body: negative chunk size")
            if size == 0:
                self._trailer = True
            else:
                self._left = size
        self._buf = buf[pos:] if pos < end else b""
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _read_fallback(self) -> bytes:
        data = self._fallback()
        if not data:
            self.complete = True
        return data


class _SocketWait:
    """Reads of one plain gevent socket: the read is tried first, and only a wait touches the loop.

    The deadline timer is made when a wait needs one and kept while it fires no later than the current
    wait's deadline: each read pushes the deadline on, and a timer that fires early, with the deadline
    moved, is replaced by one for what is left. A stream whose reads come within the timeout makes one
    timer per timeout period, not one per read.
    """

    __slots__ = ("_raw", "_event", "_hub", "_loop", "_timer", "_timer_at", "_deadline", "_waiter", "_drained")

    def __init__(self, sock) -> None:
        self._raw = sock._sock  # the non-blocking socket under gevent's
        self._event = sock._read_event
        self._hub = sock.hub
        self._loop = sock.hub.loop
        self._timer = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._waiter = None  # the greenlet waiting for the socket, while it waits
        # The last read took all there was: a read now would almost always find nothing (the next event
        # comes a token later), so wait for the socket first and spare that syscall.
        self._drained = False

    def recv(self, timeout: float | None) -> bytes:
        """Bytes from the socket (b"" at its end); socket.timeout after `timeout` seconds with none."""
        raw = self._raw
        if not self._drained:
            try:
                data = raw.recv(RECV_SIZE)
            except BlockingIOError:
                pass
            else:
                self._drained = len(data) < RECV_SIZE
                return data
        deadline = None if timeout is None else self._loop.now() + timeout
        while True:
            if not self._wait_readable(deadline):
                raise socket.timeout("timed out")
            try:
                data = raw.recv(RECV_SIZE)
            except BlockingIOError:
                continue  # woken with nothing to read: wait on for the same deadline
            self._drained = len(data) < RECV_SIZE
            return data

    def _wait_readable(self, deadline: float | None) -> bool:
        if deadline is not None:
            self._deadline = deadline
            if self._timer is None or self._timer_at > deadline:
                self._arm(deadline)
        event = self._event
        if event.callback is not None:
            raise OSError("the upstream socket is read by another greenlet")
        waiter = self._waiter = getcurrent()
        event.start(waiter.switch, True)
        try:
            return self._hub.switch() is not False
        finally:
            event.stop()
            self._waiter = None

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.close()
        self._timer = timer = self._loop.timer(max(deadline - self._loop.now(), 0.0), ref=False)
        self._timer_at = deadline
        timer.start(self._expired)

    def _expired(self) -> None:
        self._timer.close()
        self._timer = None
        waiter = self._waiter
        if waiter is None:
            return  # not waiting now: the next wait makes a timer for its own deadline
        if self._deadline - self._loop.now() > 0.0005:
            self._arm(self._deadline)  # reads since pushed the deadline on
            return
        waiter.switch(False)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None


class _DeflateDecoder:
    """HTTP "deflate" is zlib-wrapped by the standard, raw deflate by some servers: try both, like urllib3."""

    __slots__ = ("_obj", "_first", "_pending")

    def __init__(self) -> None:
        self._obj = zlib.decompressobj()
        self._first = True
        self._pending = b""

    def decompress(self, data: bytes) -> bytes:
        if not self._first:
            return self._obj.decompress(data)
        self._pending += data
        try:
            out = self._obj.decompress(self._pending)
        except zlib.error:
            self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._obj.decompress(self._pending)
        self._first = False
        self._pending = b""
        return out

    def flush(self) -> bytes:
        return self._obj.flush()
