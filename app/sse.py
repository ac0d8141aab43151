"""A small incremental Server-Sent Events parser: bytes in as they arrive, complete events out.

Used for the OpenAI stream in translation mode and for the side copy of a passthrough stream.
(sseclient-py wants to own the read loop; here the relay owns it, so the parser is push-based.)

The work is linear in the bytes fed: a read is scanned once for an event boundary and kept as a piece
until its event completes, so a 20 MB event costs what its bytes cost, not a rescan per read. One event
larger than `max_event` bytes raises `SSEEventTooLarge`.
"""
from __future__ import annotations

from .errors import ProxyError

DEFAULT_MAX_EVENT = 16 * 1024 * 1024


class SSEEventTooLarge(ProxyError):
    def __init__(self, limit: int) -> None:
        super().__init__(502, f"Upstream sent one stream event larger than {limit // (1024 * 1024) or limit} "
                              f"{'MB' if limit >= 1024 * 1024 else 'bytes'} (MAX_SSE_EVENT_MB); the stream was "
                              "ended", "api_error")


class SSEDecoder:
    __slots__ = ("_parts", "_size", "_cr", "max_event")

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._parts: list[bytes] = []  # the event not yet complete, as it arrived
        self._size = 0
        self._cr = False  # the last read ended in "\r": its "\n" may be the next read's first byte
        self.max_event = max_event

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        """Return the `(event name or None, data bytes)` of every event completed by `chunk`."""
        complete = self._complete(chunk)
        return _events(complete, True) if complete else []

    def _complete(self, chunk: bytes) -> bytes:
        """The bytes of every event `chunk` completes (b"" if none); the rest is kept for the next read."""
        if self._cr:
            self._cr = False
            chunk = b"\r" + chunk
        if b"\r" in chunk:
            if chunk[-1:] == b"\r":
                self._cr = True
                chunk = chunk[:-1]
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = chunk.rfind(b"\n\n")
        if cut >= 0:
            cut += 2
        elif self._parts and chunk[:1] == b"\n" and self._parts[-1][-1:] == b"\n":
            cut = 1  # the blank line straddles two reads
        else:
            if chunk:
                self._parts.append(chunk)
                self._size += len(chunk)
                if self._size > self.max_event:
                    raise SSEEventTooLarge(self.max_event)
            return b""
        if self._parts:
            self._parts.append(chunk[:cut])
            complete = b"".join(self._parts)
        else:
            complete = chunk[:cut] if cut < len(chunk) else chunk
        rest = chunk[cut:]
        self._parts = [rest] if rest else []
        self._size = len(rest)
        if self._size > self.max_event:
            raise SSEEventTooLarge(self.max_event)
        return complete

    @property
    def idle(self) -> bool:
        """Nothing of an unfinished event is held: the next bytes start a new event."""
        return not self._parts and not self._cr

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated (an upstream that stopped mid-event leaves some)."""
        return b"".join(self._parts) + (b"\r" if self._cr else b"")


class RawNameSSEDecoder(SSEDecoder):
    """An SSEDecoder whose event names stay bytes, for a reader that only compares them to names it knows.

    A stream that names every event (the Responses API's `event: <type>` then one `data:` line) is cut
    here by looking for line ends only: a few single-byte searches and two slices per event, however large
    it is, where splitting on the blank line is a slower two-byte search over every byte (an event that
    repeats a whole conversation is 70 KB). An event of any other shape goes through the general parser.
    """

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[tuple[bytes | None, bytes]]:  # type: ignore[override]
        """Return the `(event name bytes or None, data bytes)` of every event completed by `chunk`."""
        complete = self._complete(chunk)
        events = []
        pos, size = 0, len(complete)  # `complete` ends with the blank line of its last event
        while pos < size:
            if complete.startswith(b"event: ", pos):
                nl = complete.find(b"\n", pos + 7)
                if complete.startswith(b"data: ", nl + 1):
                    end = complete.find(b"\n", nl + 7)
                    if complete.startswith(b"\n", end + 1):  # the blank line: the event is these two lines
                        events.append((complete[pos + 7:nl].strip(), complete[nl + 7:end]))
                        pos = end + 2
                        continue
            end = complete.find(b"\n\n", pos)
            end = size if end < 0 else end
            events.extend(_events(complete[pos:end], False))
            pos = end + 2
        return events


def _events(complete: bytes, decode_names: bool) -> list:
    """The `(event name, data)` of each event in `complete` (whole events); names decoded if asked."""
    events = []
    for block in complete.split(b"\n\n"):
        if not block:
            continue
        event = None
        data = []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
            elif line.startswith(b"event:"):
                event = line[6:].strip()
                if decode_names:
                    event = event.decode("utf-8", "replace")
            # comments (":") and other fields (id, retry) carry nothing we use
        if data or event:
            events.append((event, b"\n".join(data)))
    return events
