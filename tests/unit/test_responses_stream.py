"""Responses API answers -> Anthropic: the JSON message and the SSE stream, fed the fake API's own events."""
from __future__ import annotations

import json

import pytest

from app.translation.reasoning import unseal
from app.translation.response import UpstreamFormatError
from app.translation.responses_response import ResponseFailed, counts_input, responses_to_anthropic
from app.translation.responses_stream import ResponsesStreamTranslator
from tests.fakes import responses as fake_api

KEY = b"s" * 32
MODEL = "claude-sonnet-4-5"
REQUEST = {"model": "gpt-5", "input": "Read /tmp/a.txt and /tmp/b.txt", "reasoning": {"summary": "auto"},
           "include": ["reasoning.encrypted_content"],
           "tools": [{"type": "function", "name": "Read", "parameters": {"type": "object"}, "strict": False}]}


def fake_response(req: dict = REQUEST, cached: int = 1152) -> dict:
    items = fake_api.output_items(req, fake_api.plan(req))
    return fake_api.response_object(req, items, fake_api.usage_for(3000, cached, items))


def events_of(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            name = block.split("\n", 1)[0][len("event: "):]
            data = json.loads(block.split("data: ", 1)[1])
            out.append((name, data))
    return out


def translate(events, translator: ResponsesStreamTranslator | None = None) -> tuple[list, ResponsesStreamTranslator]:
    t = translator or ResponsesStreamTranslator(model=MODEL, signing_key=KEY, input_tokens=77)
    raw = b"".join(t.feed(json.loads(json.dumps(e))) for e in events)
    return events_of(raw), t


def accumulate(events: list[tuple[str, dict]]) -> dict:
    """The message a client builds from the events (the SDK's rules), checking their order as it goes."""
    message = None
    open_index = None
    started, stopped = [], []
    for name, data in events:
        if name == "message_start":
            assert message is None
            message = data["message"]
        elif name == "content_block_start":
            assert open_index is None, "a block started while another was open"
            assert data["index"] == len(message["content"])
            open_index = data["index"]
            started.append(open_index)
            message["content"].append(dict(data["content_block"], _json=""))
        elif name == "content_block_delta":
            assert data["index"] == open_index
            block, delta = message["content"][open_index], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                block["_json"] += delta["partial_json"]
        elif name == "content_block_stop":
            assert data["index"] == open_index
            stopped.append(open_index)
            open_index = None
        elif name == "message_delta":
            message.update(data["delta"])
            message["usage"].update(data["usage"])
    assert started == stopped == list(range(len(message["content"])))  # each block started and stopped once
    for block in message["content"]:
        raw = block.pop("_json")
        if block["type"] == "tool_use":
            block["input"] = json.loads(raw) if raw else {}
    return message


def test_stream_with_reasoning_summaries_text_and_several_tool_calls():
    response = fake_response()
    names_seen = [e["type"] for e in fake_api.stream_events(response)]
    assert "response.reasoning_summary_text.delta" in names_seen and names_seen.count("response.output_item.added") == 4
    events, t = translate(fake_api.stream_events(response))
    assert [n for n, _ in events][:2] == ["message_start", "ping"]
    assert events[0][1]["message"]["id"] == "msg_" + response["id"]
    assert [n for n, _ in events][-2:] == ["message_delta", "message_stop"]
    message = accumulate(events)
    kinds = [b["type"] for b in message["content"]]
    assert kinds == ["thinking", "text", "tool_use", "tool_use"]
    reasoning, text, *calls = response["output"]
    assert message["content"][0]["thinking"] == "\n\n".join(p["text"] for p in reasoning["summary"])
    assert message["content"][1]["text"] == "I'll read the files."
    assert [(b["id"], b["name"], b["input"]) for b in message["content"][2:]] == [
        (c["call_id"], "Read", json.loads(c["arguments"])) for c in calls]
    # the signature arrives as a signature_delta before the thinking block stops, and holds the item
    thinking_events = [(n, d) for n, d in events if d.get("index") == 0]
    assert thinking_events[-2][1]["delta"]["type"] == "signature_delta"
    assert unseal(message["content"][0], KEY) == {k: reasoning[k] for k in ("type", "id", "summary",
                                                                            "encrypted_content")}
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 3000 - 1152, "output_tokens": response["usage"]["output_tokens"],
                                "cache_read_input_tokens": 1152}
    assert response["usage"]["output_tokens"] > fake_api.REASONING_TOKENS  # reasoning counted in output
    assert (t.input_tokens, t.cache_read_input_tokens, t.tool_calls, t.tool_names) == (1848, 1152, 2, ["Read", "Read"])
    assert t.done and not t.failed and t.text == "I'll read the files."


def test_json_response_maps_to_the_same_message():
    response = fake_response()
    message = responses_to_anthropic(response, model=MODEL, signing_key=KEY)
    streamed = accumulate(translate(fake_api.stream_events(response))[0])
    assert message["content"] == streamed["content"]
    assert message["stop_reason"] == "tool_use" and message["id"] == "msg_" + response["id"]
    assert message["usage"] == {"input_tokens": 1848, "output_tokens": response["usage"]["output_tokens"],
                                "cache_read_input_tokens": 1152}


def test_text_answer_ends_the_turn():
    req = dict(REQUEST, input="Hello")
    response = fake_response(req, cached=0)
    message = accumulate(translate(fake_api.stream_events(response))[0])
    assert [b["type"] for b in message["content"]] == ["thinking", "text"]
    assert message["stop_reason"] == "end_turn" and message["usage"]["cache_read_input_tokens"] == 0


def test_reasoning_without_summary_still_carries_its_encrypted_content():
    req = dict(REQUEST, reasoning={"effort": "low"})
    response = fake_response(req)
    message = accumulate(translate(fake_api.stream_events(response))[0])
    thinking = message["content"][0]
    assert thinking["thinking"] == "" and unseal(thinking, KEY)["encrypted_content"] == \
        response["output"][0]["encrypted_content"]


def _head(response_id="resp_x"):
    return [{"type": "response.created", "response": {"id": response_id, "status": "in_progress", "output": []}},
            {"type": "response.output_item.added", "output_index": 0,
             "item": {"type": "message", "id": "msg_1", "role": "assistant", "content": []}},
            {"type": "response.output_text.delta", "output_index": 0, "item_id": "msg_1", "delta": "Partial"}]


def test_incomplete_for_max_output_tokens_is_max_tokens():
    events, _ = translate(_head() + [{"type": "response.incomplete", "response": {
        "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
        "usage": {"input_tokens": 10, "output_tokens": 16}}}])
    message = accumulate(events)
    assert message["stop_reason"] == "max_tokens" and message["content"][0]["text"] == "Partial"
    assert message["usage"]["output_tokens"] == 16


def test_refusal_is_text_with_stop_reason_refusal():
    events, _ = translate([
        {"type": "response.created", "response": {"id": "resp_r"}},
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "id": "m"}},
        {"type": "response.refusal.delta", "output_index": 0, "item_id": "m", "delta": "I can't help with that."},
        {"type": "response.output_item.done", "output_index": 0, "item": {"type": "message", "id": "m"}},
        {"type": "response.completed", "response": {"status": "completed", "usage": {"input_tokens": 5,
                                                                                      "output_tokens": 6}}}])
    message = accumulate(events)
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert message["stop_reason"] == "refusal"
    json_message = responses_to_anthropic({"id": "resp_r", "status": "completed", "output": [
        {"type": "message", "content": [{"type": "refusal", "refusal": "No."}]}]}, model=MODEL, signing_key=KEY)
    assert json_message["stop_reason"] == "refusal" and json_message["content"] == [{"type": "text", "text": "No."}]


@pytest.mark.parametrize("terminal, error_type, message", [
    ({"type": "response.failed", "response": {"status": "failed", "error": {
        "code": "server_error", "message": "The model crashed"}}}, "api_error", "The model crashed"),
    ({"type": "response.failed", "response": {"status": "failed", "error": {
        "code": "rate_limit_exceeded", "message": "Slow down"}}}, "rate_limit_error", "Slow down"),
    ({"type": "error", "code": "ERR_SOMETHING", "message": "Something went wrong", "param": None},
     "api_error", "Something went wrong"),
])
def test_failure_events_end_the_stream_with_an_error_event(terminal, error_type, message):
    events, t = translate(_head() + [terminal])
    assert events[-1][0] == "error"
    assert events[-1][1] == {"type": "error", "error": {"type": error_type, "message": message}}
    assert "message_stop" not in [n for n, _ in events]
    assert t.failed and t.done and t.error_type == error_type
    assert t.feed({"type": "response.output_text.delta", "output_index": 0, "delta": "late"}) == b""


def test_json_failed_response_and_unusable_bodies():
    with pytest.raises(ResponseFailed) as info:
        responses_to_anthropic({"status": "failed", "error": {"code": "server_error", "message": "down"}},
                               model=MODEL, signing_key=KEY)
    assert (info.value.error_type, info.value.message) == ("api_error", "down")
    with pytest.raises(UpstreamFormatError):
        responses_to_anthropic({"id": "resp_1", "status": "completed"}, model=MODEL, signing_key=KEY)


def test_a_stream_cut_short_closes_its_open_block_once_at_finish():
    events, t = translate(_head())
    assert not t.done
    tail = events_of(t.finish())
    message = accumulate(events + tail)
    assert message["content"] == [{"type": "text", "text": "Partial"}] and message["stop_reason"] == "end_turn"
    assert t.finish() == b""


def test_items_done_without_deltas_are_still_emitted():
    events, _ = translate([
        {"type": "response.created", "response": {"id": "resp_y"}},
        {"type": "response.output_item.done", "output_index": 0, "item": {
            "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "Read",
            "arguments": '{"file_path":"/x"}'}},
        {"type": "response.output_item.done", "output_index": 1, "item": {
            "type": "message", "id": "m", "content": [{"type": "output_text", "text": "Done."}]}},
        {"type": "response.completed", "response": {"status": "completed"}}])
    message = accumulate(events)
    assert message["content"] == [{"type": "tool_use", "id": "call_1", "name": "Read", "input": {"file_path": "/x"}},
                                  {"type": "text", "text": "Done."}]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["output_tokens"] > 0  # estimated when the upstream reports none


def test_the_relay_plug_skips_only_events_that_add_nothing():
    """The plug leaves repeated-text events unparsed (cheaper per stream): the client's message is the same."""
    from app.services.translator import ResponsesStream

    response = fake_response()
    raw = b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode())
                   for e in fake_api.stream_events(response))
    plug = ResponsesStream(ResponsesStreamTranslator(model=MODEL, signing_key=KEY, input_tokens=77), 1 << 20)
    # fed in small pieces, as the network delivers it
    out = plug.head() + b"".join(plug.feed(raw[i:i + 97]) for i in range(0, len(raw), 97))
    assert plug.done and plug.tail() == b"" and plug.reusable
    via_plug = accumulate(events_of(out))
    direct = accumulate(translate(fake_api.stream_events(response))[0])
    via_plug.pop("id"), direct.pop("id")  # the plug's message_start goes out before response.created
    assert via_plug == direct
    assert plug.usage().cache_read_input_tokens == 1152 and plug.usage().tool_calls == 2


def test_reasoning_left_open_takes_its_encrypted_content_from_the_final_response():
    item = {"type": "reasoning", "id": "rs_open", "summary": [], "encrypted_content": "gAAAA-late"}
    events, _ = translate([
        {"type": "response.created", "response": {"id": "resp_z"}},
        {"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning", "id": "rs_open"}},
        {"type": "response.completed", "response": {"status": "completed", "output": [item]}}])
    message = accumulate(events)
    assert unseal(message["content"][0], KEY)["encrypted_content"] == "gAAAA-late"


@pytest.mark.parametrize("usage, counted", [
    ({"input_tokens": 12, "output_tokens": 3}, True), ({"input_tokens": 0}, True), ({"output_tokens": 3}, False),
    ({"input_tokens": True}, False), ({"input_tokens": -1}, False), ({"input_tokens": "12"}, False), (None, False),
])
def test_an_answer_counts_its_input_only_with_a_whole_number_else_the_estimate_stands_in(usage, counted):
    answer = {"id": "resp_u", "status": "completed", "usage": usage,
              "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}]}
    assert counts_input(answer) is counted
    message = responses_to_anthropic(answer, model=MODEL, signing_key=KEY, input_tokens=0 if counted else 77)
    assert message["usage"]["input_tokens"] == (usage["input_tokens"] if counted else 77)
