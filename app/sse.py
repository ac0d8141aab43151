"""A small incremental Server-Sent Events parser: bytes in as they arrive, complete events out.

Used for the OpenAI stream in translation mode and for the side copy of a passthrough stream.
(sseclient-py wants to own the read loop; here the relay owns it, so the parser is push-based.)
"""
from __future__ import annotations


class SSEDecoder:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        """Return the `(event name or None, data bytes)` of every event completed by `chunk`."""
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        if b"\n\n" not in buf:
            self._buf = buf
            return []
        *blocks, self._buf = buf.split(b"\n\n")
        events = []
        for block in blocks:
            event = None
            data = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value[:1] == b" " else value)
                elif line.startswith(b"event:"):
                    event = line[6:].strip().decode("utf-8", "replace")
                # comments (":") and other fields (id, retry) carry nothing we use
            if data or event:
                events.append((event, b"\n".join(data)))
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated (an upstream that stopped mid-event leaves some)."""
        return self._buf
