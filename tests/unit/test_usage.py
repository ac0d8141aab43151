"""Request classification and usage extraction (JSON answers and Anthropic SSE streams)."""
from __future__ import annotations

import json

import pytest

from app.sse import SSEDecoder
from app.records import RequestRecord
from app.usage import (TEXT_CAP, StreamUsage, Usage, apply_usage, classify_request, count_system_messages,
                       usage_from_message)


# --- classification: the product's three cases, plus the documented zero case -------------

def test_one_system_string_is_a_query():
    body = {"system": "You are helpful.", "messages": [{"role": "user", "content": "hi"}]}
    assert classify_request(body) == "query"


def test_three_block_system_array_is_inference():
    body = {"system": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"},
                       {"type": "text", "text": "c", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "hi"}]}
    assert count_system_messages(body) == 3
    assert classify_request(body) == "inference"


def test_two_role_system_messages_are_inference():
    body = {"messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"},
                         {"role": "user", "content": "hi"}]}
    assert classify_request(body) == "inference"


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "hi"}]},
    {"system": "", "messages": [{"role": "user", "content": "hi"}]},
    {"system": [], "messages": []},
    {},
])
def test_no_system_message_counts_as_query(body):
    # Documented choice: 0 is a query, so Reqs = Query + Infer in the report.
    assert count_system_messages(body) == 0
    assert classify_request(body) == "query"


def test_system_string_plus_mid_conversation_system_message_is_inference():
    # Claude Code 2.x: a top-level system array and a role:system message mid-conversation.
    body = {"system": [{"type": "text", "text": "x-anthropic-billing-header: ..."}],
            "messages": [{"role": "user", "content": "read a file"},
                         {"role": "system", "content": "Available agent types ..."}]}
    assert count_system_messages(body) == 2
    assert classify_request(body) == "inference"


def test_malformed_bodies_do_not_raise():
    assert classify_request({"system": 42, "messages": "nope"}) == "query"
    assert classify_request({"messages": [None, "x", {"role": "system"}]}) == "query"


# --- usage from a JSON answer -----------------------------------------------------------------

def test_usage_from_message_counts_tokens_tools_and_text():
    msg = {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Let me read "},
            {"type": "text", "text": "that file."},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a"}},
            {"type": "tool_use", "id": "toolu_2", "name": "Grep", "input": {"pattern": "x"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1200, "output_tokens": 85, "cache_creation_input_tokens": 300,
                  "cache_read_input_tokens": 9000},
    }
    u = usage_from_message(msg)
    assert u == Usage(input_tokens=1200, output_tokens=85, cache_creation_input_tokens=300,
                      cache_read_input_tokens=9000, tool_names=["Read", "Grep"], text="Let me read that file.")
    assert u.tool_calls == 2


def test_usage_from_message_tolerates_missing_and_null_usage():
    u = usage_from_message({"content": [{"type": "text", "text": "hi"}],
                            "usage": {"input_tokens": None, "output_tokens": 3}})
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens) == (0, 3, 0)
    assert usage_from_message({}).tool_calls == 0
    assert usage_from_message({"content": "not a list", "usage": "nope"}).text == ""


def test_usage_from_message_caps_text():
    u = usage_from_message({"content": [{"type": "text", "text": "a" * 3000}, {"type": "text", "text": "b" * 3000}]})
    assert len(u.text) == TEXT_CAP
    assert u.text.startswith("a" * 3000) and u.text.endswith("b")


# --- usage from a stream ----------------------------------------------------------------------

def _sse(*events: tuple[str, dict]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


# An Anthropic stream as the API sends it: text, then a tool call with streamed JSON input.
TOOL_STREAM = _sse(
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 472, "cache_creation_input_tokens": 120, "cache_read_input_tokens": 2048,
                  "output_tokens": 2}}}),
    ("ping", {"type": "ping"}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "I'll check "}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "the weather."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "input_json_delta", "partial_json": "{\"location\": \"SF\"}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"output_tokens": 89}}),
    ("message_stop", {"type": "message_stop"}),
)


def _feed(stream: bytes, usage: StreamUsage, chunk: int = 7) -> StreamUsage:
    decoder = SSEDecoder()
    for i in range(0, len(stream), chunk):  # odd chunk sizes: events split across reads
        for event, data in decoder.feed(stream[i:i + chunk]):
            usage.feed(event, data)
    return usage


def test_stream_usage_from_a_real_tool_use_stream():
    u = _feed(TOOL_STREAM, StreamUsage())
    assert (u.input_tokens, u.output_tokens) == (472, 89)
    assert (u.cache_creation_input_tokens, u.cache_read_input_tokens) == (120, 2048)
    assert u.tool_calls == 1 and u.tool_names == ["get_weather"]
    assert u.text == "I'll check the weather."
    assert u.error_type is None
    assert u.usage() == Usage(472, 89, 120, 2048, ["get_weather"], "I'll check the weather.")


def test_stream_error_event_keeps_the_tokens_seen_so_far():
    stream = _sse(
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 50, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hel"}}),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
    u = _feed(stream, StreamUsage())
    assert u.error_type == "overloaded_error" and u.error_message == "Overloaded"
    assert (u.input_tokens, u.output_tokens, u.text) == (50, 1, "Hel")


def test_stream_cut_off_mid_event_counts_what_completed():
    cut = TOOL_STREAM[: TOOL_STREAM.index(b"event: message_delta") + 30]
    u = _feed(cut, StreamUsage())
    assert (u.input_tokens, u.output_tokens, u.tool_calls) == (472, 2, 1)


def test_message_delta_with_cumulative_input_and_nulls():
    u = StreamUsage()
    u.feed("message_start", json.dumps({"message": {"usage": {"input_tokens": 10, "output_tokens": 1}}}))
    # Newer API versions repeat cumulative counts in message_delta; nulls must not erase them.
    u.feed("message_delta", b'{"usage": {"input_tokens": null, "output_tokens": 40, "cache_read_input_tokens": 7}}')
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens) == (10, 40, 7)
    u.feed("message_delta", b'{"usage": {"input_tokens": 25, "output_tokens": 41}}')
    assert (u.input_tokens, u.output_tokens) == (25, 41)


def test_text_collection_is_capped_and_can_be_off():
    delta = json.dumps({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": "x" * 1000}}).encode()
    u = StreamUsage()
    for _ in range(10):
        u.feed("content_block_delta", delta)
    assert len(u.text) == TEXT_CAP
    off = StreamUsage(collect_text=False)
    off.feed("content_block_delta", delta)
    assert off.text == ""


def test_thinking_and_json_deltas_are_not_text():
    u = StreamUsage()
    u.feed("content_block_delta", b'{"delta": {"type": "thinking_delta", "thinking": "secret plan"}}')
    u.feed("content_block_delta", b'{"delta": {"type": "input_json_delta", "partial_json": "{\\"a\\""}}')
    assert u.text == ""


def test_events_without_names_use_the_type_in_the_data():
    u = StreamUsage()
    u.feed(None, b'{"type": "message_start", "message": {"usage": {"input_tokens": 9}}}')
    u.feed("", '{"type": "content_block_start", "content_block": {"type": "tool_use", "name": "Bash"}}')
    assert (u.input_tokens, u.tool_calls, u.tool_names) == (9, 1, ["Bash"])


def test_server_tool_use_blocks_are_not_counted_as_tool_calls():
    u = StreamUsage()
    u.feed("content_block_start", b'{"content_block": {"type": "server_tool_use", "name": "web_search"}}')
    assert u.tool_calls == 0


@pytest.mark.parametrize("event,data", [
    ("message_start", b"{not json"), ("message_delta", b""), ("error", b"[]"),
    ("content_block_delta", b'{"text_delta" broken'), ("content_block_start", b"null"),
    ("message_delta", b'{"usage": {"output_tokens": "many"}}'),
])
def test_malformed_events_never_raise(event, data):
    u = StreamUsage()
    u.feed(event, data)
    assert u.output_tokens == 0 and u.tool_calls == 0


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300, -5, True, "12", None])
def test_odd_token_counts_are_zero_or_the_number_never_an_error(value):
    """1e999 in an upstream's JSON parses as infinity: a count of nothing, never an OverflowError."""
    u = usage_from_message({"usage": {"input_tokens": value, "output_tokens": 7}})
    assert u.output_tokens == 7
    assert u.input_tokens == (int(value) if value == 1e300 else 0)
    s = StreamUsage()
    s.feed("message_start", b'{"message": {"usage": {"input_tokens": 1e999, "output_tokens": 2}}}')
    assert (s.input_tokens, s.output_tokens) == (0, 2)


def test_apply_usage_fills_the_record_and_keeps_an_error_already_there():
    rec = RequestRecord(request_id="r", timestamp=0, domain="d", mode="passthrough")
    apply_usage(rec, Usage(10, 20, 3, 4, ["Read", "Bash"], "hello", "overloaded_error", "busy"))
    assert (rec.input_tokens, rec.output_tokens, rec.cache_creation_input_tokens, rec.cache_read_input_tokens,
            rec.tool_calls, rec.tool_names, rec.assistant_text) == (10, 20, 3, 4, 2, ["Read", "Bash"], "hello")
    assert (rec.error_type, rec.error_message) == ("overloaded_error", "busy")
    rec.error_type, rec.error_message = "client_disconnected", None
    apply_usage(rec, Usage(error_type="api_error", error_message="cut"))
    assert (rec.error_type, rec.error_message, rec.input_tokens) == ("client_disconnected", None, 0)
