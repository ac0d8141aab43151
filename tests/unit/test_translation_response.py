"""OpenAI chat completion -> Anthropic message (non-streaming), checked field by field and with the anthropic SDK."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import pytest

from app.translation.response import UpstreamFormatError, openai_to_anthropic


def completion(message=None, finish_reason="stop", usage=None, **choice_extra):
    resp = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "model": "gpt-4.1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!", **(message or {})},
                     "finish_reason": finish_reason, **choice_extra}],
    }
    if usage is not None:
        resp["usage"] = usage
    return resp


def convert(resp, **kw):
    kw.setdefault("model", "claude-sonnet-4-5")
    return openai_to_anthropic(resp, **kw)


def tool_call(call_id="call_1", name="Read", arguments='{"file_path":"/a"}'):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_plain_text_message_shape():
    out = convert(completion(usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}))
    assert out == {
        "id": "msg_chatcmpl-abc123",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }


def test_model_is_the_one_the_client_asked_for():
    assert convert(completion(), model="claude-haiku-4-5")["model"] == "claude-haiku-4-5"


def test_message_id_given_by_caller_wins():
    assert convert(completion(), message_id="msg_fixed")["id"] == "msg_fixed"


@pytest.mark.parametrize("upstream_id", [None, "", "has spaces/and:colons", "x" * 300, 42])
def test_unusable_upstream_id_gets_a_generated_one(upstream_id):
    resp = completion()
    resp["id"] = upstream_id
    out = convert(resp)
    assert out["id"].startswith("msg_") and len(out["id"]) > 10
    assert " " not in out["id"]


def test_ids_are_unique_when_generated():
    resp = completion()
    del resp["id"]
    assert convert(resp)["id"] != convert(resp)["id"]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_becomes_a_leading_thinking_block(field):
    out = convert(completion({field: "Let me think.", "content": "42"}))
    assert out["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": ""},
        {"type": "text", "text": "42"},
    ]


@pytest.mark.parametrize("content", ["", None])
def test_empty_text_is_omitted(content):
    out = convert(completion({"content": content, "tool_calls": [tool_call()]}, finish_reason="tool_calls"))
    assert [b["type"] for b in out["content"]] == ["tool_use"]


def test_content_parts_list_is_read_as_text():
    out = convert(completion({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}))
    assert out["content"] == [{"type": "text", "text": "ab"}]


def test_tool_calls_become_tool_use_blocks_in_order():
    out = convert(completion(
        {"content": "Reading both.", "tool_calls": [tool_call(), tool_call("call_2", "Bash", '{"command":"ls -la"}')]},
        finish_reason="tool_calls",
    ))
    assert out["content"] == [
        {"type": "text", "text": "Reading both."},
        {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"file_path": "/a"}},
        {"type": "tool_use", "id": "call_2", "name": "Bash", "input": {"command": "ls -la"}},
    ]
    assert out["stop_reason"] == "tool_use"


def test_tool_call_without_id_gets_toolu_id():
    call = tool_call()
    del call["id"]
    block = convert(completion({"tool_calls": [call]}, finish_reason="tool_calls"))["content"][1]
    assert block["id"].startswith("toolu_") and len(block["id"]) > 10


@pytest.mark.parametrize(
    "arguments, expected",
    [
        ("", {}),
        ("   ", {}),
        (None, {}),
        ('{"a": 1', {"_raw": '{"a": 1'}),
        ("[1, 2]", {"_raw": "[1, 2]"}),
        ('"just a string"', {"_raw": '"just a string"'}),
        ("not json at all", {"_raw": "not json at all"}),
        ({"already": "parsed"}, {"already": "parsed"}),
    ],
)
def test_bad_or_odd_arguments_never_crash(arguments, expected):
    out = convert(completion({"content": None, "tool_calls": [tool_call(arguments=arguments)]}, finish_reason="tool_calls"))
    assert out["content"][0]["input"] == expected


def test_legacy_function_call_becomes_tool_use():
    out = convert(completion({"content": None, "function_call": {"name": "Read", "arguments": '{"x":1}'}}, finish_reason="function_call"))
    assert out["content"][0]["name"] == "Read" and out["content"][0]["input"] == {"x": 1}
    assert out["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    "finish, expected",
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
     ("function_call", "tool_use"), ("content_filter", "refusal"), (None, "end_turn"), ("weird", "end_turn")],
)
def test_finish_reason_mapping(finish, expected):
    assert convert(completion(finish_reason=finish))["stop_reason"] == expected


def test_tool_calls_with_finish_stop_is_tool_use():
    out = convert(completion({"tool_calls": [tool_call()]}, finish_reason="stop"))
    assert out["stop_reason"] == "tool_use"


def test_tool_calls_cut_by_length_stay_max_tokens():
    out = convert(completion({"tool_calls": [tool_call(arguments='{"a":')]}, finish_reason="length"))
    assert out["stop_reason"] == "max_tokens"


def test_vllm_stop_reason_string_becomes_stop_sequence():
    out = convert(completion(finish_reason="stop", stop_reason="\n\nHuman:"), stop_sequences=["END", "\n\nHuman:"])
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "\n\nHuman:")


def test_stop_reason_not_in_request_sequences_is_end_turn():
    out = convert(completion(finish_reason="stop", stop_reason=151645), stop_sequences=["END"])
    assert (out["stop_reason"], out["stop_sequence"]) == ("end_turn", None)


def test_cached_tokens_are_reported_and_excluded_from_input_tokens():
    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 800}}
    assert convert(completion(usage=usage))["usage"] == {"input_tokens": 200, "output_tokens": 50, "cache_read_input_tokens": 800}


def test_deepseek_cache_hit_tokens():
    usage = {"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 60, "prompt_cache_miss_tokens": 40}
    assert convert(completion(usage=usage))["usage"] == {"input_tokens": 40, "output_tokens": 5, "cache_read_input_tokens": 60}


def test_missing_usage_uses_the_callers_estimate():
    assert convert(completion(), input_tokens=321)["usage"] == {"input_tokens": 321, "output_tokens": 0}


@pytest.mark.parametrize(
    "resp, needle",
    [
        ({"error": {"message": "Model is overloaded", "code": 503}}, "Model is overloaded"),
        ({"error": "quota exceeded"}, "quota exceeded"),
        ({"id": "x", "choices": []}, "no choices"),
        ({"id": "x"}, "no choices"),
        ({"choices": [{"index": 0, "finish_reason": "stop"}]}, "no message"),
        ([], "not a JSON object"),
    ],
)
def test_error_or_empty_body_raises_upstream_format_error(resp, needle):
    with pytest.raises(UpstreamFormatError, match=needle):
        convert(resp)


def test_upstream_format_error_is_a_value_error():
    assert issubclass(UpstreamFormatError, ValueError)


# -- through the real anthropic SDK -----------------------------------------------------------


class _Server:
    """A 127.0.0.1 HTTP server answering every POST with fixed bytes."""

    def __init__(self, body: bytes, content_type: str) -> None:
        outer = self
        self.body, self.content_type = body, content_type
        self.requests: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                outer.requests.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.send_header("content-type", outer.content_type)
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


def test_sdk_messages_create_parses_converted_tool_use_response():
    resp = completion(
        {"reasoning_content": "Need the file.", "content": "Let me look.",
         "tool_calls": [tool_call(), tool_call("call_2", "Bash", "{broken")]},
        finish_reason="tool_calls",
        usage={"prompt_tokens": 120, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 100}},
    )
    body = json.dumps(convert(resp, model="claude-opus-4-8")).encode()
    with _Server(body, "application/json") as client:
        message = client.messages.create(model="claude-opus-4-8", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    assert message.model == "claude-opus-4-8"
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[0].thinking == "Need the file."
    assert message.content[1].text == "Let me look."
    assert message.content[2].input == {"file_path": "/a"} and message.content[2].id == "call_1"
    assert message.content[3].input == {"_raw": "{broken"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens, message.usage.cache_read_input_tokens) == (20, 30, 100)


def test_sdk_messages_create_parses_stop_sequence():
    body = json.dumps(convert(completion(stop_reason="END"), stop_sequences=["END"])).encode()
    with _Server(body, "application/json") as client:
        message = client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}], stop_sequences=["END"])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    assert message.content[0].text == "Hello!"
