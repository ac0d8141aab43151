"""Reading a streamed upstream body straight from its socket.

urllib3 and http.client decode a chunked body one HTTP chunk per call, through five layers and a
timeout object per read. A stream of SSE events arrives as one HTTP chunk per event, so that is paid
per event. Here, once urllib3 has parsed the status line and headers, the body is read from the
socket in whole `recv`s and de-chunked in one pass: every event already waiting arrives as one piece
(one write to the client), and an event alone is never held back.

Waiting uses the socket's own timeout, so keep-alive pings need no reader greenlet: `read(wait)`
returns None when the upstream was silent for `wait` seconds.

Anything this does not handle (an encoding other than gzip/deflate, a response without a plain
socket) falls back to urllib3's own reads; the caller sees the same interface.
"""
from __future__ import annotations

import socket
import ssl
import zlib
from typing import Callable

import gevent

from urllib3.exceptions import ProtocolError, ReadTimeoutError

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
                 "_decoder", "complete", "_fallback", "_first", "_trailer")

    def __init__(self, resp, read_timeout: float | None = None, decode_content: bool = True) -> None:
        self._resp = resp
        self._read_timeout = read_timeout
        self._silent = 0.0
        self.complete = False
        self._buf = b""
        self._first = True
        self._trailer = False
        self._decoder = None
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
        # gevent tries the read first and builds a timer only when it has to wait
        self._sock.settimeout(timeout)
        try:
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
