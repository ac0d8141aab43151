"""The SSE parser and the relay helpers both modes share."""
import pytest
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from app.records import RequestRecord
from app.services.relay import StreamBody, abandoned, stream_failure
from app.sse import RawNameSSEDecoder, SSEDecoder


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


def test_the_raw_name_decoder_cuts_what_the_general_one_does():
    raw = (b'event: response.created\ndata: {"a":1}\n\n: comment\n\nevent: response.output_text.delta\n'
           b'data: {"d":"x"}\n\n\nevent:ping\ndata:{}\n\ndata: line one\ndata: line two\n\n'
           b'id: 4\nevent: x\ndata: 1\n\nevent: a\nevent: b\ndata: 2\n\nevent: \xff\ndata: 3\r\n\r\n'
           b'event: only\n\n\n\n')
    for cut in range(0, len(raw) + 1):
        general, raw_names = SSEDecoder(), RawNameSSEDecoder()
        expected = general.feed(raw[:cut]) + general.feed(raw[cut:])
        events = raw_names.feed(raw[:cut]) + raw_names.feed(raw[cut:])
        assert [(name.decode("utf-8", "replace") if name is not None else None, data)
                for name, data in events] == expected, cut
        assert raw_names.pending == general.pending
    assert RawNameSSEDecoder().feed(raw)[:2] == [(b"response.created", b'{"a":1}'),
                                                 (b"response.output_text.delta", b'{"d":"x"}')]


@pytest.mark.parametrize("exc, error_type", [
    (ReadTimeoutError(None, "/", "timed out"), "timeout_error"),
    (ProtocolError("broken"), "api_error"),
    (ConnectionResetError(), "api_error"),
])
def test_mid_stream_failures_map_to_anthropic_types(exc, error_type):
    error, message = stream_failure(exc, False, "llm.example.com")
    assert error == error_type
    assert message.startswith("upstream llm.example.com ")  # the upstream failed, not the proxy
    assert stream_failure(exc, True, "llm.example.com") == (
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


def test_a_blank_line_split_across_reads_ends_the_event():
    d = SSEDecoder()
    assert d.feed(b"event: a\ndata: 1\n") == []
    assert d.feed(b"\nevent: b\ndata: 2\r") == [("a", b"1")]
    assert d.feed(b"\n\r\n") == [("b", b"2")]  # "\r\n" split across reads is one line end, then a blank line
    assert d.pending == b""


def test_one_event_over_the_cap_raises_and_under_it_is_whole():
    from app.sse import SSEEventTooLarge

    d = SSEDecoder(max_event=1000)
    piece = b"x" * 300
    d.feed(b"data: " + piece)
    d.feed(piece)
    assert d.feed(piece + b"\n\n") == [(None, piece * 3)]
    with pytest.raises(SSEEventTooLarge) as exc:
        for _ in range(5):
            d.feed(b"data: " + piece)
    assert exc.value.error_type == "api_error" and "MAX_SSE_EVENT_MB" in exc.value.message

