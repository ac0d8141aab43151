"""Anthropic Messages request -> OpenAI Responses API request, checked against the fake API's validator."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from app.translation.models import Route
from app.translation.reasoning import seal
from app.translation.request import UnsupportedContent
from app.translation.responses_request import anthropic_to_responses
from app.translation.responses_response import responses_to_anthropic
from app.translation.schema import clean_schema
from app.translation.thinking import sign
from tests.fakes import responses as fake_api

KEY = b"k" * 32
ROUTE = Route(model="gpt-5", max_tokens=4096, reasoning=False)
THINKING = Route(model="gpt-5", max_tokens=32000, reasoning=True)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "claude-code-2.1.197"
READ = {"name": "Read", "description": "Read a file", "input_schema": {
    "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
    "properties": {"file_path": {"type": "string", "format": "uri"}}, "required": ["file_path"]}}


def convert(body: dict, route: Route = ROUTE, stream: bool = False, issued: dict | None = None) -> dict:
    out = anthropic_to_responses(body, route, stream=stream, signing_key=KEY)
    fake_api.validate(out, issued or {})  # what the real API would refuse, the fake refuses
    return out


def body(*messages, **extra) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": list(messages), **extra}


def test_system_becomes_instructions_and_mid_conversation_system_a_developer_message():
    out = convert(body({"role": "user", "content": "hi"}, {"role": "system", "content": "Be terse."},
                       {"role": "user", "content": "again"},
                       system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=2"},
                               {"type": "text", "text": "You are helpful.", "cache_control": {"type": "ephemeral"}}]))
    assert out["instructions"] == "You are helpful."
    assert [(i["role"], i["content"][0]["text"]) for i in out["input"]] == [
        ("user", "hi"), ("developer", "Be terse."), ("user", "again")]
    assert all(i["content"][0]["type"] == "input_text" for i in out["input"])


def test_fixed_fields_store_include_caps_and_no_sampling_with_reasoning():
    out = convert(body({"role": "user", "content": "hi"}, temperature=0.2, top_p=0.9, stop_sequences=["X"]))
    assert out["store"] is False and out["include"] == ["reasoning.encrypted_content"]
    assert out["max_output_tokens"] == 4096 and "max_tokens" not in out
    assert out["temperature"] == 0.2 and out["top_p"] == 0.9
    assert "stop" not in out and "stream" not in out and "reasoning" not in out
    thinking = convert(body({"role": "user", "content": "hi"}, temperature=1, thinking={
        "type": "enabled", "budget_tokens": 2000}), THINKING, stream=True)
    assert "temperature" not in thinking and thinking["stream"] is True
    assert thinking["max_output_tokens"] == 32000
    tiny = convert(body({"role": "user", "content": "quota"}), Route("gpt-5", 1, False))
    assert tiny["max_output_tokens"] == 16  # the API's minimum


@pytest.mark.parametrize("thinking, output_config, effort", [
    ({"type": "enabled", "budget_tokens": 1024}, None, "low"),
    ({"type": "enabled", "budget_tokens": 10000}, None, "medium"),
    ({"type": "enabled", "budget_tokens": 31999}, None, "high"),
    ({"type": "adaptive"}, {"effort": "low"}, "low"),
    ({"type": "adaptive"}, {"effort": "high"}, "high"),
])
def test_thinking_becomes_reasoning_effort_with_auto_summary(thinking, output_config, effort):
    extra = {"thinking": thinking}
    if output_config:
        extra["output_config"] = output_config
    out = convert(body({"role": "user", "content": "hi"}, **extra), THINKING)
    assert out["reasoning"] == {"effort": effort, "summary": "auto"}


def test_prompt_cache_key_is_the_claude_code_session():
    user_id = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "f52da381-2caf-4b5c"})
    out = convert(body({"role": "user", "content": "hi"}, metadata={"user_id": user_id}))
    assert out["prompt_cache_key"] == "f52da381-2caf-4b5c"
    assert len(out["safety_identifier"]) == 32 and "f52da381" not in out["safety_identifier"]
    legacy = convert(body({"role": "user", "content": "hi"},
                          metadata={"user_id": "user_abc_account_def_session_0123456789abcdef"}))
    assert legacy["prompt_cache_key"] == "0123456789abcdef"
    assert "prompt_cache_key" not in convert(body({"role": "user", "content": "hi"}))


def test_images_and_pdfs():
    out = convert(body({"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "title": "report", "source": {"type": "base64", "media_type": "application/pdf",
                                                          "data": "JVBERi0xLjQ="}},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}},
        {"type": "text", "text": "Describe them."},
    ]}))
    parts = out["input"][0]["content"]
    assert parts == [
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"},
        {"type": "input_image", "image_url": "https://example.com/cat.jpg", "detail": "auto"},
        {"type": "input_file", "filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQ="},
        {"type": "input_file", "file_url": "https://example.com/a.pdf"},
        {"type": "input_text", "text": "plain words"},
        {"type": "input_text", "text": "Describe them."},
    ]


def test_tool_turns_keep_their_order_with_errors_and_images():
    out = convert(body(
        {"role": "user", "content": "Read two files"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a"}},
            {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"file_path": "/b"}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "before"},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "alpha"}]},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True, "content": "no such file"},
            {"type": "text", "text": "after"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_3", "name": "Screenshot", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_3", "content": [
                {"type": "text", "text": "the screen"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]},
    ), issued={})
    kinds = [(i["type"], i.get("role")) for i in out["input"]]
    assert kinds == [("message", "user"), ("message", "assistant"), ("function_call", None),
                     ("function_call", None), ("message", "user"), ("function_call_output", None),
                     ("function_call_output", None), ("message", "user"), ("function_call", None),
                     ("function_call_output", None)]
    items = out["input"]
    assert items[1]["content"] == [{"type": "output_text", "text": "Reading."}]
    assert items[2] == {"type": "function_call", "call_id": "toolu_1", "name": "Read",
                        "arguments": '{"file_path":"/a"}'}
    assert items[4]["content"][0]["text"] == "before" and items[7]["content"][0]["text"] == "after"
    assert items[5] == {"type": "function_call_output", "call_id": "toolu_1", "output": "alpha"}
    assert items[6]["output"] == "[tool error] no such file"
    assert items[9]["output"] == [{"type": "input_text", "text": "the screen"},
                                  {"type": "input_image", "image_url": "data:image/png;base64,AAAA",
                                   "detail": "auto"}]


def test_a_result_without_its_call_stays_visible_as_text():
    out = convert(body({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_gone", "content": "42"}]}))
    assert out["input"] == [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "[tool result for toolu_gone]\n42"}]}]


def test_tools_are_cleaned_and_never_strict_by_default():
    out = convert(body({"role": "user", "content": "hi"}, tools=[READ, {"type": "bash_20250124", "name": "bash"}],
                       tool_choice={"type": "any", "disable_parallel_tool_use": True}))
    assert out["tools"] == [{"type": "function", "name": "Read", "description": "Read a file",
                             "parameters": clean_schema(READ["input_schema"]), "strict": False}]
    assert "$schema" not in json.dumps(out["tools"]) and "uri" not in json.dumps(out["tools"])
    assert out["tool_choice"] == "required" and out["parallel_tool_calls"] is False
    named = convert(body({"role": "user", "content": "hi"}, tools=[READ], tool_choice={"type": "tool", "name": "Read"}))
    assert named["tool_choice"] == {"type": "function", "name": "Read"}
    # without strict: false the API would hold Claude Code's schemas to strict mode and refuse them
    unstrict = copy.deepcopy(out)
    del unstrict["tools"][0]["strict"]
    with pytest.raises(fake_api.Invalid, match="additionalProperties"):
        fake_api.validate(unstrict, {})


def _reasoning_message(item_id="rs_1", encrypted="gAAAA-enc", parts=("First part.", "Second part.")) -> dict:
    response = {"id": "resp_1", "status": "completed", "output": [
        {"type": "reasoning", "id": item_id, "encrypted_content": encrypted,
         "summary": [{"type": "summary_text", "text": p} for p in parts]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "Read",
         "arguments": '{"file_path":"/a"}'}],
        "usage": {"input_tokens": 10, "output_tokens": 5}}
    return responses_to_anthropic(response, model="claude-sonnet-4-5", signing_key=KEY)


def test_a_thinking_block_the_proxy_made_goes_back_as_the_same_reasoning_item():
    message = _reasoning_message()
    thinking = message["content"][0]
    assert thinking["type"] == "thinking" and thinking["thinking"] == "First part.\n\nSecond part."
    out = convert(body({"role": "user", "content": "read /a"},
                       {"role": "assistant", "content": message["content"]},
                       {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "x"}]}),
                  issued={"rs_1": "gAAAA-enc"})
    assert out["input"][1] == {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAA-enc", "summary": [
        {"type": "summary_text", "text": "First part."}, {"type": "summary_text", "text": "Second part."}]}
    assert out["input"][2]["type"] == "function_call"


@pytest.mark.parametrize("signature", [
    "EqQBCkYIBRgCKkCanthropicsignature==",  # Anthropic's, from a conversation that began in passthrough
    "",
    sign("chat:" + "0" * 32, KEY),  # the proxy's own, but over Chat-path thinking text
    "tampered",
])
def test_thinking_the_proxy_did_not_make_and_redacted_thinking_are_dropped(signature):
    out = convert(body({"role": "user", "content": "hi"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "secret thoughts", "signature": signature},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy"},
        {"type": "text", "text": "Hello."}]}, {"role": "user", "content": "again"}))
    assert [i["type"] for i in out["input"]] == ["message", "message", "message"]
    assert "secret thoughts" not in json.dumps(out) and "EmwKAhgBEgy" not in json.dumps(out)


def test_a_changed_signature_or_key_is_not_trusted():
    thinking = _reasoning_message()["content"][0]
    forged = dict(thinking, signature=thinking["signature"][:-6] + "AAAAAA")
    other_key = anthropic_to_responses(body({"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": [thinking, {"type": "text", "text": "ok"}]}),
                                       ROUTE, stream=False, signing_key=b"another-key")
    for out in (convert(body({"role": "user", "content": "hi"},
                             {"role": "assistant", "content": [forged, {"type": "text", "text": "ok"}]})), other_key):
        assert not any(i["type"] == "reasoning" for i in out["input"])


def test_edited_thinking_text_still_carries_the_reasoning_as_one_summary_part():
    thinking = dict(_reasoning_message()["content"][0], thinking="edited")
    out = convert(body({"role": "user", "content": "hi"},
                       {"role": "assistant", "content": [thinking, {"type": "text", "text": "ok"}]}),
                  issued={"rs_1": "gAAAA-enc"})
    assert out["input"][1]["summary"] == [{"type": "summary_text", "text": "edited"}]


def test_reasoning_left_without_the_output_it_led_to_is_not_sent():
    thinking = {"type": "thinking", "thinking": "t", "signature": seal("rs_9", "enc", [1], KEY)}
    out = convert(body({"role": "user", "content": "hi"}, {"role": "assistant", "content": [thinking]},
                       {"role": "user", "content": "again"}), issued={"rs_9": "enc"})
    assert [i["type"] for i in out["input"]] == ["message", "message"]


def test_unsupported_content_names_its_place():
    with pytest.raises(UnsupportedContent, match=r"messages\.0\.content\.0"):
        anthropic_to_responses(body({"role": "user", "content": [{"type": "server_tool_use", "id": "x"}]}),
                               ROUTE, stream=False, signing_key=KEY)


@pytest.mark.parametrize("name", ["messages-turn1.json", "messages-turn2.json"])
def test_captured_claude_code_bodies_convert_without_loss(name):
    original = json.loads((FIXTURES / name).read_text())
    out = convert(copy.deepcopy(original), THINKING, stream=True)
    assert out["model"] == "gpt-5" and out["stream"] is True
    assert out["reasoning"] == {"effort": "high", "summary": "auto"}  # adaptive + output_config.effort high
    assert out["prompt_cache_key"] == json.loads(original["metadata"]["user_id"])["session_id"]
    # every system text but the billing header
    system_texts = [b["text"] for b in original["system"] if not b["text"].startswith("x-anthropic-billing")]
    assert out["instructions"] == "\n\n".join(system_texts)
    # every tool, its schema cleaned, none lost
    assert [t["name"] for t in out["tools"]] == [t["name"] for t in original["tools"]]
    assert all(t["parameters"] == clean_schema(o["input_schema"]) and t["strict"] is False
               for t, o in zip(out["tools"], original["tools"]))
    # every text, call and result, in the original order
    expected: list = []
    for message in original["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            if block["type"] == "text":
                expected.append(("text", block["text"]))
            elif block["type"] == "tool_use":
                expected.append(("call", block["id"], block["name"], block["input"]))
            elif block["type"] == "tool_result":
                text = block["content"] if isinstance(block["content"], str) else "\n\n".join(
                    b["text"] for b in block["content"])
                expected.append(("result", block["tool_use_id"], text))
    got: list = []
    for item in out["input"]:
        if item["type"] == "message":
            got.extend(("text", p["text"]) for p in item["content"])
        elif item["type"] == "function_call":
            got.append(("call", item["call_id"], item["name"], json.loads(item["arguments"])))
        elif item["type"] == "function_call_output":
            got.append(("result", item["call_id"], item["output"]))
    assert got == expected
    # Anthropic's signed thinking cannot be read upstream: dropped, never forwarded
    assert not any(i["type"] == "reasoning" for i in out["input"])
    assert "signature" not in json.dumps(out["input"])


def test_server_tools_follow_server_tools_as_on_the_chat_path():
    web = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    request = body({"role": "user", "content": "hi"}, tools=[READ, web])
    with pytest.raises(UnsupportedContent, match=r"tools\.1: server tool 'web_search'.*SERVER_TOOLS=drop"):
        anthropic_to_responses(request, ROUTE, stream=False, signing_key=KEY, upstream="api.openai.com")
    dropped = anthropic_to_responses(request, ROUTE, stream=False, signing_key=KEY, server_tools="drop")
    assert [t["name"] for t in dropped["tools"]] == ["Read"]
