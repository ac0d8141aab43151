"""The upstream's response headers, read into the `http.client.HTTPMessage` http.client would build, without
the email package when they are plain.

http.client hands every response's header block to `email.parser`, a general MIME parser, which costs more
CPU per small answer than anything the proxy does with it. Plain headers (one `Name: value` line each, ASCII,
no folding, no MIME content type that the parser would look into) give the same message when split directly;
anything else still goes to the email parser, so the result is the same either way.

`HTTPResponse` is http.client's response class with only that one function swapped (its `begin` runs with
the fast reader as its `parse_headers`); the upstream client's connections use it.
"""
from __future__ import annotations

import email.parser
import http.client
import re
import types

_LINE = re.compile(rb"([\x21-\x39\x3b-\x7e]+):[ \t]*([\x20-\x7e\t]*)\r\n")  # RFC 9110 field name, ASCII value
_MIME_CONTAINERS = (b"message", b"multipart")  # content types whose (empty) body the email parser inspects


def parse_headers(fp, _class=http.client.HTTPMessage) -> http.client.HTTPMessage:
    """`http.client.parse_headers`, with its limits (line length, header count) and its result."""
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]
    pairs = _plain(lines)
    if pairs is None:
        return email.parser.Parser(_class=_class).parsestr(b"".join(lines).decode("iso-8859-1"))
    msg = (_PlainMessage if _class is http.client.HTTPMessage else _class)()
    for name, value in pairs:
        msg.set_raw(name, value)
    msg.set_payload("")  # what the parser leaves after the blank line that ends the headers
    return msg


def _plain(lines: list[bytes]) -> list[tuple[str, str]] | None:
    if not lines or lines[-1] != b"\r\n":
        return None
    pairs = []
    match = _LINE.fullmatch
    for line in lines[:-1]:
        m = match(line)
        if m is None:
            return None
        name, value = m.group(1), m.group(2)
        if name.lower() == b"content-type" and any(kind in value.lower() for kind in _MIME_CONTAINERS):
            return None
        pairs.append((name.decode("ascii"), value.decode("ascii")))
    return pairs


class _PlainMessage(http.client.HTTPMessage):
    """Headers read by `_plain`: ASCII text, so the email policy's fetch would hand each value back as it
    is, and the reads http.client and urllib3 make of every response (`get`, `items`) skip it."""

    def get(self, name, failobj=None):
        name = name.lower()
        for key, value in self._headers:
            if key.lower() == name:
                return value
        return failobj

    def items(self):
        return list(self._headers)


class HTTPResponse(http.client.HTTPResponse):
    pass


# http.client's own `begin`, reading the headers with `parse_headers` above (its globals, with that one
# name replaced): nothing else about reading a response changes.
HTTPResponse.begin = types.FunctionType(  # type: ignore[method-assign]
    http.client.HTTPResponse.begin.__code__,
    {**vars(http.client), "parse_headers": parse_headers},
    "begin",
    http.client.HTTPResponse.begin.__defaults__,
    http.client.HTTPResponse.begin.__closure__,
)
