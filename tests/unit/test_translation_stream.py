"""OpenAI stream chunks -> Anthropic SSE: event order, block well-formedness, and the real anthropic SDK accumulating it."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.translation.stream import PING, StreamTranslator, format_sse

# -- helpers -----------------------------------------------------------------------------------


def parse(raw: bytes) -> list[tuple[str, dict]]:
    events = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk:
            continue
        lines = chunk.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ") and len(lines) == 2, chunk
        event, data = lines[0][7:], json.loads(lines[1][6:])
        assert event == data["type"], chunk
        events.append((event, data))
    return events


def check_well_formed(events) -> list[dict]:
    """Assert the Anthropic event grammar; return the accumulated content blocks."""
    names = [e for e, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    blocks: list[dict] = []
    open_index = None
    for event, data in events[1:-2]:
        if event == "ping":
            continue
        if event == "content_block_start":
            assert open_index is None, "a block started while another was open"
            assert data["index"] == len(blocks)
            open_index = data["index"]
            block = dict(data["content_block"])
            block["_json"] = ""
            blocks.append(block)
        elif event == "content_block_delta":
            assert data["index"] == open_index, "delta for a block that is not open"
            delta, block = data["delta"], blocks[open_index]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                assert block["type"] == "tool_use"
                block["_json"] += delta["partial_json"]
            else:
                raise AssertionError(delta)
        elif event == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        else:
            raise AssertionError(f"unexpected {event}")
    assert open_index is None
    for block in blocks:
        raw = block.pop("_json")
        if block["type"] == "tool_use":
            block["input"] = json.loads(raw) if raw else {}
    return blocks


def run(chunks, **kw) -> tuple[StreamTranslator, bytes]:
    kw.setdefault("model", "claude-sonnet-4-5")
    tr = StreamTranslator(**kw)
    raw = tr.start() + b"".join(tr.feed(c) for c in chunks) + tr.finish()
    return tr, raw


def delta(**d):
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": None}]}


def finish(reason):
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


def usage(prompt=0, completion=0, cached=None):
    u = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"choices": [], "usage": u}


def tc(index, args=None, call_id=None, name=None):
    fn = {}
    if name is not None:
        fn["name"] = name
    if args is not None:
        fn["arguments"] = args
    call = {"index": index, "function": fn}
    if call_id:
        call.update(id=call_id, type="function")
    return delta(tool_calls=[call])


def split(text, size):
    return [text[i:i + size] for i in range(0, len(text), size)]


# -- basics ------------------------------------------------------------------------------------


def test_format_sse_is_compact():
    assert format_sse("ping", {"type": "ping", "x": "é"}) == 'event: ping\ndata: {"type":"ping","x":"é"}\n\n'.encode()


def test_start_sends_message_start_with_estimate_then_ping_once():
    tr = StreamTranslator(model="claude-x", message_id="msg_1", input_tokens=1234)
    raw = tr.start()
    (_, start), (ping, _) = parse(raw)
    assert start["message"] == {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1234, "output_tokens": 0},
    }
    assert ping == "ping" and raw.endswith(PING)
    assert tr.start() == b""  # started once only


def test_generated_message_id():
    tr = StreamTranslator(model="m")
    assert parse(tr.start())[0][1]["message"]["id"].startswith("msg_")


def test_text_stream_events_in_order():
    tr, raw = run([delta(role="assistant", content=""), delta(content="Hel"), delta(content="lo"), finish("stop"), usage(10, 2)])
    events = parse(raw)
    assert [e for e, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]
    assert check_well_formed(events) == [{"type": "text", "text": "Hello"}]
    assert events[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2][1]["usage"] == {"output_tokens": 2, "input_tokens": 10}
    assert tr.text == "Hello" and tr.stop_reason == "end_turn"


def test_each_event_comes_out_of_the_feed_that_caused_it():
    tr = StreamTranslator(model="m")
    tr.start()
    first = parse(tr.feed(delta(content="A")))
    assert [e for e, _ in first] == ["content_block_start", "content_block_delta"]
    assert parse(tr.feed(delta(content="B"))) == [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "B"}})]
    assert tr.feed(delta(content="")) == b""
    assert tr.feed(finish("stop")) == b""


def test_reasoning_then_text():
    for field in ("reasoning_content", "reasoning"):
        _, raw = run([delta(**{field: "Think "}), delta(**{field: "hard."}), delta(content="Answer"), finish("stop")])
        events = parse(raw)
        blocks = check_well_formed(events)
        assert blocks == [{"type": "thinking", "thinking": "Think hard.", "signature": ""}, {"type": "text", "text": "Answer"}]
        # The thinking block ends with a signature_delta like the real API's.
        stop_at = [i for i, (e, d) in enumerate(events) if e == "content_block_stop"][0]
        assert events[stop_at - 1][1]["delta"] == {"type": "signature_delta", "signature": ""}


def test_tool_arguments_are_forwarded_exactly_as_fragments_arrive():
    args = json.dumps({"file_path": "/home/dev/project/hello.txt", "limit": 20})
    fragments = split(args, 3)
    tr, raw = run([tc(0, "", "call_abc", "Read"), *[tc(0, f) for f in fragments], finish("tool_calls"), usage(50, 9)])
    events = parse(raw)
    sent = [d["delta"]["partial_json"] for e, d in events if e == "content_block_delta"]
    assert sent == fragments
    assert check_well_formed(events) == [
        {"type": "tool_use", "id": "call_abc", "name": "Read", "input": {"file_path": "/home/dev/project/hello.txt", "limit": 20}}
    ]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert (tr.tool_calls, tr.tool_names) == (1, ["Read"])


def test_two_sequential_parallel_calls_become_two_blocks():
    chunks = [delta(content="Both."), tc(0, "", "call_1", "Read"), tc(0, '{"file_path":'), tc(0, '"/a"}'),
              tc(1, "", "call_2", "Bash"), tc(1, '{"command"'), tc(1, ':"ls"}'), finish("tool_calls")]
    tr, raw = run(chunks)
    assert check_well_formed(parse(raw)) == [
        {"type": "text", "text": "Both."},
        {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"file_path": "/a"}},
        {"type": "tool_use", "id": "call_2", "name": "Bash", "input": {"command": "ls"}},
    ]
    assert tr.tool_names == ["Read", "Bash"]


def test_second_call_streams_live_once_the_first_is_complete():
    tr = StreamTranslator(model="m")
    tr.start()
    tr.feed(tc(0, '{"a":1}', "call_1", "A"))
    live = parse(tr.feed(tc(1, '{"b":', "call_2", "B")))
    assert [e for e, _ in live] == ["content_block_stop", "content_block_start", "content_block_delta"]


def test_interleaved_parallel_calls_stay_well_formed():
    chunks = [tc(0, "", "call_1", "Read"), tc(1, "", "call_2", "Bash"), tc(0, '{"file_'), tc(1, '{"comm'),
              tc(0, 'path":"/a"'), tc(1, 'and":"ls"}'), tc(0, "}"), finish("tool_calls")]
    _, raw = run(chunks)
    assert check_well_formed(parse(raw)) == [
        {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"file_path": "/a"}},
        {"type": "tool_use", "id": "call_2", "name": "Bash", "input": {"command": "ls"}},
    ]


def test_call_that_never_completes_does_not_lose_the_others():
    # Call 0 keeps empty arguments (some upstreams do that for no-argument tools).
    chunks = [tc(0, "", "call_1", "TaskList"), tc(1, '{"x":', "call_2", "B"), delta(content="tail"), tc(1, "1}"), finish("tool_calls")]
    _, raw = run(chunks)
    assert check_well_formed(parse(raw)) == [
        {"type": "tool_use", "id": "call_1", "name": "TaskList", "input": {}},
        {"type": "tool_use", "id": "call_2", "name": "B", "input": {"x": 1}},
        {"type": "text", "text": "tail"},
    ]


def test_text_after_an_unfinished_call_waits_for_it():
    chunks = [tc(0, '{"a":', "call_1", "A"), delta(content="hi"), tc(0, '"b"}'), finish("tool_calls")]
    _, raw = run(chunks)
    assert check_well_formed(parse(raw)) == [
        {"type": "tool_use", "id": "call_1", "name": "A", "input": {"a": "b"}},
        {"type": "text", "text": "hi"},
    ]


def test_late_garbage_for_a_closed_call_is_not_emitted_into_another_block():
    chunks = [tc(0, '{"a":1}', "call_1", "A"), tc(1, '{"b":2}', "call_2", "B"), tc(0, "  "), finish("tool_calls")]
    _, raw = run(chunks)
    assert [b["input"] for b in check_well_formed(parse(raw))] == [{"a": 1}, {"b": 2}]


def test_tool_calls_without_index_use_ids():
    chunks = [delta(tool_calls=[{"id": "c1", "function": {"name": "A", "arguments": '{"a":'}}]),
              delta(tool_calls=[{"function": {"arguments": "1}"}}]),
              delta(tool_calls=[{"id": "c2", "function": {"name": "B", "arguments": "{}"}}]), finish("tool_calls")]
    _, raw = run(chunks)
    assert check_well_formed(parse(raw)) == [
        {"type": "tool_use", "id": "c1", "name": "A", "input": {"a": 1}},
        {"type": "tool_use", "id": "c2", "name": "B", "input": {}},
    ]


def test_name_arriving_after_arguments_and_missing_id():
    chunks = [tc(0, '{"q":'), tc(0, '"x"}', name="Search"), finish("tool_calls")]
    _, raw = run(chunks)
    (block,) = check_well_formed(parse(raw))
    assert block["name"] == "Search" and block["input"] == {"q": "x"} and block["id"].startswith("toolu_")


def test_tool_call_never_named_is_still_reported():
    _, raw = run([tc(0, '{"q":1}', "call_1"), finish("tool_calls")])
    (block,) = check_well_formed(parse(raw))
    assert block == {"type": "tool_use", "id": "call_1", "name": "", "input": {"q": 1}}


# -- stop reasons and usage --------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks, expected",
    [
        ([delta(content="x"), finish("length")], "max_tokens"),
        ([delta(content="x"), finish("content_filter")], "refusal"),
        ([delta(content="x")], "end_turn"),
        ([tc(0, "{}", "c", "A")], "tool_use"),
        ([tc(0, "{}", "c", "A"), finish("stop")], "tool_use"),
    ],
)
def test_stop_reason(chunks, expected):
    tr, raw = run(chunks)
    assert parse(raw)[-2][1]["delta"]["stop_reason"] == expected == tr.stop_reason


def test_vllm_stop_reason_gives_stop_sequence():
    chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "###"}]}
    _, raw = run([delta(content="x"), chunk], stop_sequences=["###"])
    assert parse(raw)[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "###"}


def test_usage_chunk_with_cache():
    tr, raw = run([delta(content="x"), finish("stop"), usage(1000, 40, cached=900)], input_tokens=5)
    assert parse(raw)[-2][1]["usage"] == {"output_tokens": 40, "input_tokens": 100, "cache_read_input_tokens": 900}
    assert (tr.input_tokens, tr.output_tokens, tr.cache_read_input_tokens) == (100, 40, 900)


def test_usage_on_the_finish_chunk_is_used():
    chunk = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
    tr, _ = run([delta(content="x"), chunk])
    assert (tr.input_tokens, tr.output_tokens) == (7, 3)


def test_without_usage_the_estimates_are_used():
    tr, raw = run([delta(content="x" * 400), finish("stop")], input_tokens=77)
    assert parse(raw)[-2][1]["usage"] == {"output_tokens": 100}
    assert (tr.input_tokens, tr.output_tokens, tr.cache_read_input_tokens) == (77, 100, 0)


def test_usage_without_cache_details_reports_zero_cache_reads():
    tr, raw = run([delta(content="x"), finish("stop"), usage(30, 2)])
    assert "cache_read_input_tokens" not in parse(raw)[-2][1]["usage"]
    assert (tr.input_tokens, tr.cache_read_input_tokens) == (30, 0)


def test_stop_reason_is_known_as_soon_as_the_upstream_finishes():
    tr = StreamTranslator(model="m")
    tr.start()
    tr.feed(delta(content="x"))
    assert tr.stop_reason is None  # a stream cut here is incomplete
    tr.feed(finish("length"))
    assert tr.stop_reason == "max_tokens"
    tr.finish()
    assert tr.stop_reason == "max_tokens"


def test_text_property_is_capped():
    tr, _ = run([delta(content="a" * 3000), delta(content="b" * 3000)])
    assert len(tr.text) == 4000 and tr.text.endswith("b" * 1000)


# -- finish and errors -------------------------------------------------------------------------


def test_finish_is_idempotent_and_valid_without_any_chunk():
    tr = StreamTranslator(model="m")
    raw = tr.finish()
    assert [e for e, _ in parse(raw)] == ["message_start", "ping", "message_delta", "message_stop"]
    assert tr.finish() == b"" and tr.feed(delta(content="late")) == b""
    assert tr.stop_reason == "end_turn"


def test_feed_before_start_starts_the_message():
    tr = StreamTranslator(model="m")
    assert [e for e, _ in parse(tr.feed(delta(content="x")))][:2] == ["message_start", "ping"]
    assert tr.start() == b""


def test_finish_closes_an_open_block():
    _, raw = run([delta(content="partial")])
    names = [e for e, _ in parse(raw)]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


@pytest.mark.parametrize(
    "error, expected_type",
    [
        ({"message": "Rate limit exceeded", "code": 429}, "rate_limit_error"),
        ({"message": "Provider overloaded", "code": "503"}, "overloaded_error"),
        ({"message": "Boom", "type": "server_error"}, "api_error"),
        ({"message": "Slow down", "type": "rate_limit_exceeded"}, "rate_limit_error"),
        ("plain string", "api_error"),
    ],
)
def test_error_chunk_becomes_error_event_and_ends_the_stream(error, expected_type):
    tr = StreamTranslator(model="m")
    tr.start()
    tr.feed(delta(content="partial"))
    raw = tr.feed({"error": error})
    ((event, data),) = parse(raw)
    assert event == "error" and data["error"]["type"] == expected_type
    assert data["error"]["message"] == (error["message"] if isinstance(error, dict) else error)
    assert tr.failed and tr.error_type == expected_type and tr.error_message == data["error"]["message"]
    assert tr.feed(delta(content="more")) == b"" and tr.finish() == b""


def test_openrouter_finish_reason_error_ends_the_stream():
    tr = StreamTranslator(model="m")
    tr.start()
    raw = tr.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": "error"}]})
    assert parse(raw)[-1][0] == "error" and tr.failed


def test_error_method():
    tr = StreamTranslator(model="m")
    tr.start()
    assert tr.error_type is None and tr.error_message is None
    raw = tr.error("overloaded_error", "upstream went away")
    assert (tr.error_type, tr.error_message) == ("overloaded_error", "upstream went away")
    assert parse(raw) == [("error", {"type": "error", "error": {"type": "overloaded_error", "message": "upstream went away"}})]
    assert tr.failed and tr.error("api_error", "again") == b"" and tr.finish() == b""


def test_error_after_finish_is_ignored():
    tr = StreamTranslator(model="m")
    tr.finish()
    assert tr.error("api_error", "x") == b"" and not tr.failed


def test_non_dict_chunk_is_ignored():
    tr = StreamTranslator(model="m")
    tr.start()
    assert tr.feed([]) == b"" and tr.feed({"choices": None}) == b""


# -- property: any interleaving of fragments gives well-formed blocks with the right inputs --------


@st.composite
def interleaved_calls(draw):
    n = draw(st.integers(min_value=1, max_value=3))
    values = [draw(st.dictionaries(st.sampled_from(["a", "b", "path"]), st.one_of(st.integers(), st.text(max_size=5)), max_size=3))
              for _ in range(n)]
    queues = []
    for i, value in enumerate(values):
        text = json.dumps(value)
        cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=max(len(text) - 1, 1)), max_size=6)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)]) if text[a:b]]
        queues.append([tc(i, "", f"call_{i}", f"T{i}")] + [tc(i, p) for p in pieces])
    text_pieces = draw(st.lists(st.text(min_size=1, max_size=4), max_size=3))
    queues.append([delta(content=t) for t in text_pieces])
    order = draw(st.permutations([q for q, items in enumerate(queues) for _ in items]))
    chunks, positions = [], [0] * len(queues)
    for q in order:
        chunks.append(queues[q][positions[q]])
        positions[q] += 1
    return values, "".join(text_pieces), chunks


@settings(max_examples=300, deadline=None)
@given(interleaved_calls())
def test_any_interleaving_is_well_formed_and_complete(case):
    values, text, chunks = case
    tr, raw = run([*chunks, finish("tool_calls")])
    blocks = check_well_formed(parse(raw))
    tools = [b for b in blocks if b["type"] == "tool_use"]
    assert {b["id"]: b["input"] for b in tools} == {f"call_{i}": v for i, v in enumerate(values)}
    assert "".join(b["text"] for b in blocks if b["type"] == "text") == text
    assert tr.tool_calls == len(values)


# -- through the real anthropic SDK -----------------------------------------------------------


class _SSEServer:
    """A 127.0.0.1 HTTP server answering every POST with the given SSE bytes."""

    def __init__(self, body: bytes) -> None:
        outer = self
        self.body = body

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return anthropic.Anthropic(base_url=f"http://127.0.0.1:{self.httpd.server_port}", api_key="test", max_retries=0)

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def sdk_final_message(raw: bytes):
    with _SSEServer(raw) as client:
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as stream:
            return stream.get_final_message()


def test_sdk_accumulates_reasoning_text_split_tool_args_parallel_calls_and_usage():
    read_args = split(json.dumps({"file_path": "/home/dev/project/hello.txt", "offset": 1, "limit": 2000}), 2)
    bash_args = split(json.dumps({"command": "ls -la && echo 'done'", "description": "List"}), 5)
    chunks = [
        delta(role="assistant", reasoning_content="I should "), delta(reasoning_content="read it."),
        delta(content="Reading "), delta(content="now."),
        tc(0, "", "call_read", "Read"), tc(1, "", "call_bash", "Bash"),
        *[c for pair in zip([tc(0, a) for a in read_args], [tc(1, b) for b in bash_args]) for c in pair],
        *[tc(0, a) for a in read_args[len(bash_args):]], *[tc(1, b) for b in bash_args[len(read_args):]],
        finish("tool_calls"),
        usage(2000, 80, cached=1500),
    ]
    _, raw = run(chunks, input_tokens=1999)
    message = sdk_final_message(raw)
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[0].thinking == "I should read it."
    assert message.content[1].text == "Reading now."
    assert message.content[2].id == "call_read" and message.content[2].name == "Read"
    assert message.content[2].input == {"file_path": "/home/dev/project/hello.txt", "offset": 1, "limit": 2000}
    assert message.content[3].input == {"command": "ls -la && echo 'done'", "description": "List"}
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 500
    assert message.usage.output_tokens == 80
    assert message.usage.cache_read_input_tokens == 1500


def test_sdk_text_stream_and_text_events():
    _, raw = run([delta(content="Hello"), delta(content=", world"), finish("stop"), usage(9, 4)], input_tokens=3)
    with _SSEServer(raw) as client:
        with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as stream:
            pieces = list(stream.text_stream)
            message = stream.get_final_message()
    assert pieces == ["Hello", ", world"]
    assert message.content[0].text == "Hello, world"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 4)


def test_sdk_keeps_the_start_estimate_when_upstream_reports_no_usage():
    _, raw = run([delta(content="abcd" * 10), finish("length")], input_tokens=321)
    message = sdk_final_message(raw)
    assert message.usage.input_tokens == 321 and message.usage.output_tokens == 10
    assert message.stop_reason == "max_tokens"


def test_sdk_raises_the_mid_stream_error():
    tr = StreamTranslator(model="m")
    raw = tr.start() + tr.feed(delta(content="partial")) + tr.feed({"error": {"message": "upstream exploded", "code": 502}})
    with pytest.raises(anthropic.APIStatusError, match="upstream exploded"):
        sdk_final_message(raw)


def test_lone_surrogate_and_unicode_in_text_do_not_break_the_stream():
    _, raw = run([delta(content="héllo ☃ "), delta(content="bad \ud800 char"), finish("stop")])
    (block,) = check_well_formed(parse(raw))
    assert block["text"] == "héllo ☃ bad \ud800 char"
    assert "héllo ☃".encode() in raw  # plain UTF-8 when possible, escapes only for the surrogate
