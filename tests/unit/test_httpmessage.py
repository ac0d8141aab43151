"""The upstream's response headers: the fast reader builds exactly the message the email parser builds."""
from __future__ import annotations

import http.client
import io

import pytest

from app.services import httpmessage

BLOCKS = [
    b"content-type: application/json\r\ncontent-length: 283\r\n\r\n",
    b"Content-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n\r\n",
    b"date: Wed, 02 Dec 2026 00:57:03 GMT\r\nserver: fake\r\nrequest-id: req_011\r\n"
    b"anthropic-ratelimit-requests-limit: 4000\r\nretry-after:   7  \r\nx-empty:\r\nx-tab:\tvalue\r\n\r\n",
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nset-cookie: c=3\r\n\r\n",
    b"\r\n",  # no headers at all
    # not plain: the email parser reads these, and the fast reader must leave them to it
    b"X-Folded: one\r\n two\r\n\r\n",
    b"X-Latin: caf\xe9\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=x\r\n\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"no colon here\r\n\r\n",
    b": empty name\r\n\r\n",
    b"From nobody\r\nX-A: 1\r\n\r\n",
    b"X-Bare-LF: 1\nX-B: 2\n\n",
    b"X-CR: a\rb\r\n\r\n",
    b"X-A: 1\r\n",  # the connection ended before the blank line
    b"X-Ctl: a\x0bb\r\n\r\n",
]


def shape(msg):
    """A message's state, comparable across two parses (defects and sub-messages by value)."""
    out = dict(vars(msg), defects=[type(d).__name__ for d in msg.defects])
    if isinstance(msg._payload, list):
        out["_payload"] = [shape(m) for m in msg._payload]
    return isinstance(msg, http.client.HTTPMessage), out


@pytest.mark.parametrize("block", BLOCKS)
def test_the_message_is_the_one_http_client_builds(block):
    fast = httpmessage.parse_headers(io.BytesIO(block + b"body"))
    slow = http.client.parse_headers(io.BytesIO(block + b"body"))
    assert shape(fast) == shape(slow)
    assert list(fast.items()) == list(slow.items())
    for name in [k for k, _ in slow.items()] + ["Content-Length", "transfer-encoding", "missing"]:
        for spelling in (name, name.lower(), name.upper()):
            assert fast.get(spelling) == slow.get(spelling)
            assert fast.get(spelling, "default") == slow.get(spelling, "default")
            assert fast[spelling] == slow[spelling]
            assert fast.get_all(spelling) == slow.get_all(spelling)
            assert (spelling in fast) == (spelling in slow)


def test_plain_headers_skip_the_email_parser(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("email parser used")

    monkeypatch.setattr(httpmessage.email.parser.Parser, "parsestr", refuse)
    msg = httpmessage.parse_headers(io.BytesIO(BLOCKS[0]))
    assert msg["Content-Length"] == "283"


def test_the_limits_stay_http_clients():
    with pytest.raises(http.client.HTTPException):
        httpmessage.parse_headers(io.BytesIO(b"X-A: 1\r\n" * 101 + b"\r\n"))
    with pytest.raises(http.client.LineTooLong):
        httpmessage.parse_headers(io.BytesIO(b"X-A: " + b"a" * 70000 + b"\r\n\r\n"))


def test_a_response_reads_the_same_status_headers_and_body():
    raw = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
           b"connection: keep-alive\r\n\r\n{}")

    class Sock:
        def makefile(self, mode):
            return io.BytesIO(raw)

    fast, slow = httpmessage.HTTPResponse(Sock()), http.client.HTTPResponse(Sock())
    fast.begin()
    slow.begin()
    assert (fast.status, fast.reason, fast.length, fast.will_close, fast.chunked) == \
        (slow.status, slow.reason, slow.length, slow.will_close, slow.chunked)
    assert shape(fast.msg) == shape(slow.msg)
    assert fast.read() == slow.read() == b"{}"
