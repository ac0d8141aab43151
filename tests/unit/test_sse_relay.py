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



_STREAM = [
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":12,'
    b'"cache_read_input_tokens":3,"output_tokens":1}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":'
    b'{"type":"text","text":""}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
    b'"text":"an error, a message_start and "}}\n\n',
    b'event: ping\ndata: {"type": "ping"}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
    b'"text":"plain words"}}\n\n',
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":'
    b'{"type":"tool_use","id":"t1","name":"Read","input":{}}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":'
    b'"input_json_delta","partial_json":"{}"}}\n\n',
    # a producer that leaves out the event line: the type is in the data
    b'data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":40}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


@pytest.mark.parametrize("pieces", [
    _STREAM,  # one event per read, as tokens arrive
    [b"".join(_STREAM)],  # all at once
    [b"".join(_STREAM)[i:i + 37] for i in range(0, len(b"".join(_STREAM)), 37)],  # cut anywhere
])
def test_passthrough_accounting_skips_only_events_it_does_not_need(pieces):
    from app.services.passthrough import RelayedStream

    skipping, parsing = RelayedStream(False, 1 << 20), RelayedStream(True, 1 << 20)
    for plug in (skipping, parsing):
        relayed = []
        for piece in pieces:
            out = plug.feed(piece)
            if out:
                relayed.append(out)
                plug.seen(out)
        assert b"".join(relayed) == b"".join(_STREAM)  # bytes relayed untouched either way
        assert plug.reusable  # message_stop was seen
    fast, full = skipping.usage(), parsing.usage()
    assert (fast.input_tokens, fast.output_tokens, fast.cache_read_input_tokens) == (12, 40, 3)
    assert fast.tool_names == full.tool_names == ["Read"]
    assert (fast.input_tokens, fast.output_tokens, fast.cache_read_input_tokens) == (
        full.input_tokens, full.output_tokens, full.cache_read_input_tokens)
    assert full.text == "an error, a message_start and plain words" and fast.text == ""


def test_passthrough_accounting_reads_an_error_event_among_deltas():
    from app.services.passthrough import RelayedStream

    plug = RelayedStream(False, 1 << 20)
    out = plug.feed(_STREAM[0] + _STREAM[2] + b'event: error\ndata: {"type":"error","error":{"type":'
                                                b'"overloaded_error","message":"Overloaded"}}\n\n')
    plug.seen(out)
    usage = plug.usage()
    assert (usage.error_type, usage.error_message, plug.reusable) == ("overloaded_error", "Overloaded", True)
