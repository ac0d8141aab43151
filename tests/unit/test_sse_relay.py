"""The SSE parser and the relay helpers both modes share."""
import gevent
import pytest
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from app.records import RequestRecord
from app.services.relay import StreamBody, abandoned, stream_failure, with_keepalive
from app.sse import SSEDecoder


def test_events_split_anywhere_come_out_whole():
    raw = (b'event: message_start\ndata: {"a":1}\n\n: comment\n\nevent: ping\ndata: {}\n\n'
           b'data: line one\ndata: line two\n\n')
    for cut in range(1, len(raw)):
        decoder = SSEDecoder()
        events = decoder.feed(raw[:cut]) + decoder.feed(raw[cut:])
        assert events == [("message_start", b'{"a":1}'), ("ping", b"{}"), (None, b"line one\nline two")], cut


def test_crlf_and_missing_space_after_colon():
    events = SSEDecoder().feed(b"event:x\r\ndata:{\"b\":2}\r\n\r\n")
    assert events == [("x", b'{"b":2}')]


def test_an_unterminated_event_stays_pending():
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"half"') == []
    assert decoder.pending == b'data: {"half"'


def test_keepalive_yields_none_while_the_source_is_silent():
    def slow():
        yield b"first"
        gevent.sleep(0.35)
        yield b"second"

    items = list(with_keepalive(slow(), 0.1))
    assert items[0] == b"first" and items[-1] == b"second"
    assert items.count(None) >= 2  # pings while the upstream was silent


def test_keepalive_passes_source_errors_on():
    def broken():
        yield b"a"
        raise ProtocolError("connection broken")

    out = with_keepalive(broken(), 5)
    assert next(out) == b"a"
    with pytest.raises(ProtocolError):
        next(out)


def test_keepalive_off_is_a_plain_iteration():
    assert list(with_keepalive(iter([b"x", b"y"]), 0)) == [b"x", b"y"]


@pytest.mark.parametrize("exc, error_type", [
    (ReadTimeoutError(None, "/", "timed out"), "timeout_error"),
    (ProtocolError("broken"), "api_error"),
    (ConnectionResetError(), "api_error"),
])
def test_mid_stream_failures_map_to_anthropic_types(exc, error_type):
    assert stream_failure(exc)[0] == error_type
    assert stream_failure(exc, shutting_down=True) == (
        "overloaded_error", "The proxy is shutting down; please retry the request")


class FakeResponse:
    closed = False
    connection = None

    def close(self):
        self.closed = True


class FakeRecorder:
    def __init__(self):
        self.finished = []

    def finish(self, rec):
        self.finished.append(rec)


def test_a_stream_closed_before_it_started_is_still_accounted_and_closed():
    resp, recorder = FakeResponse(), FakeRecorder()
    rec = RequestRecord(request_id="r", timestamp=0, domain="d", mode="translation")
    ran = []

    def gen():
        ran.append(True)
        yield b"never"

    body = StreamBody(gen(), abandoned(resp, rec, recorder))
    body.close()
    assert resp.closed and recorder.finished == [rec] and rec.error_type == "client_disconnected"
    assert ran == []


def test_a_started_stream_cleans_up_itself_only():
    resp, recorder = FakeResponse(), FakeRecorder()
    rec = RequestRecord(request_id="r", timestamp=0, domain="d", mode="translation")
    body = StreamBody(iter([b"a", b"b"]), abandoned(resp, rec, recorder))
    assert list(body) == [b"a", b"b"]
    body.close()
    assert not resp.closed and recorder.finished == []


def test_the_decoder_agrees_with_sseclient_py_on_a_real_stream():
    """sseclient-py, an independent parser, reads a translated stream the same way, however it is split."""
    import random

    import sseclient

    from app.translation.stream import StreamTranslator

    translator = StreamTranslator(model="claude-x", input_tokens=12)
    raw = translator.start()
    raw += translator.feed({"choices": [{"index": 0, "delta": {"reasoning_content": "think\nhard"}}]})
    raw += translator.feed({"choices": [{"index": 0, "delta": {"content": "héllo ☃"}}]})
    raw += translator.feed({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "Read", "arguments": '{"a":'}}]}}]})
    raw += translator.feed({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": '"b"}'}}]}, "finish_reason": "tool_calls"}]})
    raw += translator.finish()
    theirs = [(e.event, e.data) for e in sseclient.SSEClient(iter([raw])).events()]
    rng = random.Random(7)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(raw)), 5))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        decoder = SSEDecoder()
        ours = [(event, data.decode()) for piece in pieces for event, data in decoder.feed(piece)]
        assert ours == theirs
    assert [e for e, _ in theirs][:2] == ["message_start", "ping"] and theirs[-1][0] == "message_stop"
