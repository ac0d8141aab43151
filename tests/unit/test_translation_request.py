"""Anthropic request -> OpenAI Chat Completions request, tool schema cleaning, and the count_tokens estimate."""
import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.translation.models import Route, route
from app.translation.request import UnsupportedContent, anthropic_to_openai
from app.translation.schema import clean_schema
from app.translation.tokens import IMAGE_TOKENS, estimate_input_tokens

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "claude-code-2.1.197"
ROUTE = Route(model="upstream-model", max_tokens=1024, reasoning=False)
ALLOWED_TOP_LEVEL = {
    "model", "messages", "max_tokens", "stream", "stream_options", "temperature", "top_p", "stop",
    "tools", "tool_choice", "parallel_tool_calls", "user",
}


def convert(messages=None, *, stream=False, route_=ROUTE, **extra):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": messages or [{"role": "user", "content": "hi"}]}
    body.update(extra)
    return anthropic_to_openai(body, route_, stream=stream)


def msgs(messages, **extra):
    return convert(messages, **extra)["messages"]


def load(name):
    return json.loads((FIXTURES / name).read_text())


def walk(obj):
    """Every dict inside obj."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v)


TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a.txt"}}


# -- system ------------------------------------------------------------------------------------


def test_system_string_becomes_leading_system_message():
    assert msgs([{"role": "user", "content": "hi"}], system="Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_system_blocks_are_joined_and_cache_control_dropped():
    system = [
        {"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Two."},
    ]
    out = msgs([{"role": "user", "content": "hi"}], system=system)
    assert out[0] == {"role": "system", "content": "One.\n\nTwo."}


def test_claude_code_billing_header_block_is_not_sent():
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.b75; cc_entrypoint=sdk-cli;"},
        {"type": "text", "text": "You are Claude Code."},
    ]
    assert msgs([{"role": "user", "content": "hi"}], system=system)[0] == {"role": "system", "content": "You are Claude Code."}


@pytest.mark.parametrize("system", ["", [], [{"type": "text", "text": ""}]])
def test_empty_system_sends_no_system_message(system):
    assert msgs([{"role": "user", "content": "hi"}], system=system) == [{"role": "user", "content": "hi"}]


def test_non_text_system_block_is_refused_with_its_place():
    with pytest.raises(UnsupportedContent, match=r"^system\.1: system block type 'image'"):
        convert(system=[{"type": "text", "text": "a"}, {"type": "image", "source": {}}])


def test_mid_conversation_system_message_stays_in_place():
    out = msgs([
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "system", "content": "Switch to French."},
        {"role": "user", "content": [{"type": "text", "text": "second", "cache_control": {"type": "ephemeral"}}]},
    ], system="top")
    assert [m["role"] for m in out] == ["system", "user", "assistant", "system", "user"]
    assert out[3] == {"role": "system", "content": "Switch to French."}
    assert out[4] == {"role": "user", "content": "second"}


def test_mid_conversation_system_message_with_text_blocks():
    out = msgs([
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B", "cache_control": {}}]},
        {"role": "user", "content": "again"},
    ])
    assert out[1] == {"role": "system", "content": "A\n\nB"}
    # A system message between two user turns does not merge them.
    assert [m["role"] for m in out] == ["user", "system", "user"]


# -- user content ------------------------------------------------------------------------------


def test_user_string_content():
    assert msgs([{"role": "user", "content": "hello"}]) == [{"role": "user", "content": "hello"}]


def test_user_text_blocks_joined_empty_dropped():
    out = msgs([{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": ""}, {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}},
    ]}])
    assert out == [{"role": "user", "content": "a\n\nb"}]


def test_base64_image_becomes_data_url_in_order():
    out = msgs([{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
    ]}])
    assert out == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]}]


def test_url_image_keeps_its_url():
    out = msgs([{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}])
    assert out[0]["content"] == [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]


def test_file_image_source_is_refused():
    with pytest.raises(UnsupportedContent, match=r"^messages\.0\.content\.0: image with source type 'file'"):
        msgs([{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}])


def test_empty_user_block_list_sends_nothing():
    assert msgs([{"role": "user", "content": [{"type": "text", "text": ""}]}, {"role": "user", "content": "x"}]) == [
        {"role": "user", "content": "x"}
    ]


# -- documents and unknown blocks --------------------------------------------------------------


def test_text_document_becomes_text_with_title():
    out = msgs([{"role": "user", "content": [
        {"type": "document", "title": "notes.txt", "source": {"type": "text", "media_type": "text/plain", "data": "line 1"}},
        {"type": "text", "text": "Summarize."},
    ]}])
    assert out == [{"role": "user", "content": "notes.txt\n\nline 1\n\nSummarize."}]


def test_content_document_becomes_its_text_blocks():
    out = msgs([{"role": "user", "content": [
        {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "p1"}, {"type": "text", "text": "p2"}]}},
    ]}])
    assert out == [{"role": "user", "content": "p1\n\np2"}]


def test_base64_pdf_document_is_refused_naming_the_place():
    with pytest.raises(UnsupportedContent) as err:
        msgs([
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
            {"role": "user", "content": [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]},
        ])
    assert str(err.value) == (
        "messages.4.content.0: block type 'document' with a base64 PDF cannot be sent to upstream profile 'generic': "
        "it takes no such PDF input (see docs/upstreams.md)"
    )


def test_url_pdf_document_is_refused():
    with pytest.raises(UnsupportedContent, match=r"^messages\.0\.content\.0: block type 'document' with a URL PDF"):
        msgs([{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}])


@pytest.mark.parametrize("kind", ["search_result", "server_tool_use", "container_upload", "something_new"])
def test_unknown_user_block_is_refused_never_dropped(kind):
    with pytest.raises(UnsupportedContent, match=rf"^messages\.0\.content\.1: block type '{kind}' cannot be sent"):
        msgs([{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": kind}]}])


def test_unknown_assistant_block_is_refused():
    with pytest.raises(UnsupportedContent, match=r"^messages\.1\.content\.0: block type 'web_search_tool_result'"):
        msgs([{"role": "user", "content": "x"}, {"role": "assistant", "content": [{"type": "web_search_tool_result"}]}])


# -- assistant content -------------------------------------------------------------------------


def test_assistant_text_and_tool_use_become_content_and_tool_calls():
    out = msgs([
        {"role": "user", "content": "read it"},
        {"role": "assistant", "content": [{"type": "text", "text": "Reading."}, {**TOOL_USE, "input": {"p": "é", "n": [1, 2]}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
    ])
    assert out[1] == {
        "role": "assistant",
        "content": "Reading.",
        "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "Read", "arguments": '{"p":"é","n":[1,2]}'}}],
    }


def test_assistant_tool_use_only_has_null_content():
    out = msgs([{"role": "user", "content": "x"}, {"role": "assistant", "content": [TOOL_USE]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "r"}]}])
    assert out[1]["content"] is None and len(out[1]["tool_calls"]) == 1


def test_thinking_blocks_are_not_sent():
    out = msgs([
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "secret plan", "signature": "sig"},
            {"type": "redacted_thinking", "data": "abc"},
            {"type": "text", "text": "Answer."},
        ]},
        {"role": "user", "content": "y"},
    ])
    assert out[1] == {"role": "assistant", "content": "Answer."}
    assert "secret plan" not in json.dumps(out)


def test_assistant_with_only_thinking_is_dropped_and_users_merge():
    out = msgs([
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
        {"role": "user", "content": "b"},
    ])
    assert out == [{"role": "user", "content": "a\n\nb"}]


def test_image_in_assistant_message_is_refused():
    with pytest.raises(UnsupportedContent, match=r"^messages\.1\.content\.0: block type 'image' in an assistant message"):
        msgs([{"role": "user", "content": "x"}, {"role": "assistant", "content": [{"type": "image", "source": {}}]}])


def test_assistant_prefill_is_kept_as_final_message():
    out = msgs([{"role": "user", "content": "Give JSON"}, {"role": "assistant", "content": "{"}])
    assert out[-1] == {"role": "assistant", "content": "{"}


def test_consecutive_user_messages_are_merged():
    out = msgs([{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}]}])
    assert out == [{"role": "user", "content": "a\n\nb"}]


def test_consecutive_user_messages_with_images_merge_as_parts():
    image = {"type": "image", "source": {"type": "url", "url": "https://x/i.png"}}
    out = msgs([{"role": "user", "content": "a"}, {"role": "user", "content": [image]}])
    assert out == [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "https://x/i.png"}},
    ]}]


def test_consecutive_assistant_messages_are_merged():
    out = msgs([
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "first"},
        {"role": "assistant", "content": [{"type": "text", "text": "second"}, TOOL_USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "r"}]},
    ])
    assert [m["role"] for m in out] == ["user", "assistant", "tool"]
    assert out[1]["content"] == "first\n\nsecond" and out[1]["tool_calls"][0]["id"] == "toolu_1"


# -- tool results ------------------------------------------------------------------------------


def test_tool_results_follow_the_assistant_before_other_user_text():
    out = msgs([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [TOOL_USE, {**TOOL_USE, "id": "toolu_2", "name": "Bash", "input": {"command": "ls"}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Here you go:"},
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "file text"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "a.txt"}, {"type": "text", "text": "b.txt"}]},
        ]},
    ])
    assert out[1:] == [
        out[1],
        {"role": "tool", "tool_call_id": "toolu_1", "content": "file text"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "a.txt\n\nb.txt"},
        {"role": "user", "content": "Here you go:"},
    ]


def test_tool_result_error_stays_visible():
    out = msgs([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [TOOL_USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True, "content": "No such file"}]},
    ])
    assert out[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "[tool error] No such file"}


def test_tool_result_error_without_content():
    out = msgs([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [TOOL_USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True}]},
    ])
    assert out[2]["content"] == "[tool error]"


def test_tool_result_without_content_is_empty_string():
    out = msgs([
        {"role": "user", "content": "go"}, {"role": "assistant", "content": [TOOL_USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
    ])
    assert out[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": ""}


def test_tool_result_images_follow_in_a_user_message():
    png = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    out = msgs([
        {"role": "user", "content": "screenshot please"},
        {"role": "assistant", "content": [TOOL_USE]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Took it."}, png]},
            {"type": "text", "text": "What do you see?"},
        ]},
    ])
    assert out[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "Took it."}
    assert out[3] == {"role": "user", "content": [
        {"type": "text", "text": "Image(s) returned by tool call toolu_1:"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "What do you see?"},
    ]}


def test_tool_result_goes_before_a_system_message_that_follows_the_tool_call():
    out = msgs([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [TOOL_USE]},
        {"role": "system", "content": "reminder"},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "r"}, {"type": "text", "text": "next"}]},
    ])
    assert [m["role"] for m in out] == ["user", "assistant", "tool", "system", "user"]


def test_orphan_tool_result_stays_visible_as_user_text():
    out = msgs([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_gone", "content": "old"}]}])
    assert out == [{"role": "user", "content": "[tool result for toolu_gone]\nold"}]


def test_unsupported_block_inside_tool_result_names_its_place():
    with pytest.raises(UnsupportedContent, match=r"^messages\.2\.content\.0\.content\.1: block type 'search_result' in a tool_result"):
        msgs([
            {"role": "user", "content": "go"}, {"role": "assistant", "content": [TOOL_USE]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "a"}, {"type": "search_result", "content": []}]}]},
        ])


# -- tools and tool_choice ---------------------------------------------------------------------


WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"city": {"type": "string"}, "source": {"type": "string", "format": "uri"}},
        "required": ["city"],
    },
    "cache_control": {"type": "ephemeral"},
}


def test_tools_become_functions_with_clean_parameters():
    out = convert(tools=[WEATHER])
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "source": {"type": "string"}}, "required": ["city"]},
    }}]


def test_client_tools_without_input_schema_are_skipped():
    client = [{"type": "bash_20250124", "name": "bash"}, {"type": "text_editor_20250429", "name": "str_replace_based_edit_tool"}]
    out = convert(tools=[*client, WEATHER])
    assert [t["function"]["name"] for t in out["tools"]] == ["get_weather"]


def test_server_tool_is_refused_by_default_naming_it():
    with pytest.raises(UnsupportedContent, match=r"^tools\.0: server tool 'web_search' \(type 'web_search_20250305'\) "
                                                 r"runs only at Anthropic; upstream profile 'generic' cannot run it"):
        convert(tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}, WEATHER])


@pytest.mark.parametrize(
    "choice, expected",
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_choice_mapping(choice, expected):
    out = convert(tools=[WEATHER], tool_choice=choice)
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


def test_disable_parallel_tool_use():
    out = convert(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert out["parallel_tool_calls"] is False


def test_tool_choice_without_tools_is_not_sent():
    out = convert(tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert "tool_choice" not in out and "parallel_tool_calls" not in out


# -- top-level parameters ----------------------------------------------------------------------


def test_sampling_and_stop_parameters():
    out = convert(temperature=0.3, top_p=0.9, top_k=40, stop_sequences=["a", "b", "c", "d", "e"])
    assert out["temperature"] == 0.3 and out["top_p"] == 0.9
    assert out["stop"] == ["a", "b", "c", "d"]  # OpenAI takes at most 4
    assert "top_k" not in out


def test_model_and_max_tokens_come_from_the_route():
    out = convert(route_=Route(model="gpt-4.1-mini", max_tokens=77, reasoning=False))
    assert out["model"] == "gpt-4.1-mini" and out["max_tokens"] == 77


def test_no_max_tokens_when_route_has_none():
    assert "max_tokens" not in convert(route_=Route(model="m", max_tokens=None, reasoning=False))


def test_stream_asks_for_usage():
    out = convert(stream=True)
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    out = convert(stream=False)
    assert "stream" not in out and "stream_options" not in out


def test_only_known_fields_are_forwarded():
    out = convert(
        top_k=5, metadata={"user_id": "u1"}, thinking={"type": "enabled", "budget_tokens": 1024},
        context_management={"edits": []}, output_config={"effort": "high"}, container="c1", mcp_servers=[{}],
        service_tier="auto", cache_control={"type": "ephemeral"}, brand_new_field_2027={"x": 1}, stream=True,
    )
    assert set(out) <= ALLOWED_TOP_LEVEL


def test_metadata_user_id_becomes_a_short_stable_hash():
    user_id = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "s1"})
    first = convert(metadata={"user_id": user_id})["user"]
    again = convert(metadata={"user_id": user_id})["user"]
    other_session = convert(metadata={"user_id": json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "s2"})})["user"]
    other_device = convert(metadata={"user_id": json.dumps({"device_id": "e" * 64, "account_uuid": "", "session_id": "s1"})})["user"]
    assert first == again == other_session
    assert first != other_device
    assert len(first) <= 64 and "d" * 10 not in first


def test_plain_user_id_is_hashed_and_absent_one_is_not_sent():
    out = convert(metadata={"user_id": "alice@example.com"})
    assert out["user"] != "alice@example.com" and len(out["user"]) <= 64
    assert "user" not in convert(metadata={})
    assert "user" not in convert()


def test_input_body_is_not_modified():
    body = load("messages-turn2.json")
    before = copy.deepcopy(body)
    anthropic_to_openai(body, ROUTE, stream=True)
    assert body == before


@pytest.mark.parametrize("content", [42, None, {"type": "text"}])
def test_malformed_content_is_refused_with_its_place(content):
    with pytest.raises(UnsupportedContent, match=r"^messages\.0\.content: must be a string or a list"):
        msgs([{"role": "user", "content": content}])


def test_non_object_block_is_refused():
    with pytest.raises(UnsupportedContent, match=r"^messages\.0\.content\.0: must be an object"):
        msgs([{"role": "user", "content": ["text"]}])


# -- Claude Code fixtures ----------------------------------------------------------------------


ROUTING = dict(reasoning_model="r1", completion_model="c1", reasoning_max_tokens=32000, completion_max_tokens=8192, model_map={})


@pytest.mark.parametrize("name", ["messages-turn1.json", "messages-turn2.json"])
def test_fixture_converts_with_only_known_fields(name):
    body = load(name)
    out = anthropic_to_openai(body, route(body, **ROUTING), stream=True)
    assert set(out) <= ALLOWED_TOP_LEVEL
    assert out["model"] == "r1" and out["max_tokens"] == 32000 and out["stream"] is True
    assert len(out["tools"]) == 24
    text = json.dumps(out)
    for gone in ("cache_control", "x-anthropic-billing-header", "context_management", "output_config", "$schema", "signature"):
        assert gone not in text
    assert all(d.get("format") != "uri" for d in walk(out["tools"]))
    assert len(out["user"]) <= 64


def test_fixture_turn1_mid_conversation_system_lands_in_place():
    body = load("messages-turn1.json")
    out = anthropic_to_openai(body, route(body, **ROUTING), stream=True)["messages"]
    assert [m["role"] for m in out] == ["system", "user", "system"]
    assert out[0]["content"].startswith("You are a Claude agent")
    assert out[2]["content"].startswith("Available agent types for the Agent tool:")


def test_fixture_turn2_tool_result_follows_tool_call_and_thinking_vanishes():
    body = load("messages-turn2.json")
    out = anthropic_to_openai(body, route(body, **ROUTING), stream=True)["messages"]
    assert [m["role"] for m in out] == ["system", "user", "system", "assistant", "tool"]
    assistant, tool = out[3], out[4]
    assert assistant["content"] == "I'll read that file."
    assert assistant["tool_calls"] == [{"id": "toolu_0b77cb164809420cbf63effb", "type": "function",
                                        "function": {"name": "Read", "arguments": '{"file_path":"/home/dev/project/hello.txt"}'}}]
    assert tool["tool_call_id"] == "toolu_0b77cb164809420cbf63effb"
    assert tool["content"].startswith("1\ttok9fbba380 is the first word")
    assert "The user wants something" not in json.dumps(out)


def test_fixture_read_tool_schema():
    body = load("messages-turn2.json")
    out = anthropic_to_openai(body, route(body, **ROUTING), stream=False)
    read = next(t["function"] for t in out["tools"] if t["function"]["name"] == "Read")
    assert read["parameters"]["required"] == ["file_path"]
    assert read["parameters"]["additionalProperties"] is False
    assert "$schema" not in read["parameters"]


# -- clean_schema ------------------------------------------------------------------------------


def test_clean_schema_drops_uri_format_everywhere():
    uri = {"type": "string", "format": "uri"}
    schema = {
        "type": "object",
        "properties": {"a": uri, "list": {"type": "array", "items": uri}, "tuple": {"type": "array", "prefixItems": [uri]}},
        "additionalProperties": uri,
        "patternProperties": {"^x": uri},
        "anyOf": [uri], "oneOf": [uri], "allOf": [uri], "not": uri,
        "if": uri, "then": uri, "else": uri,
        "$defs": {"d": uri}, "definitions": {"e": uri},
        "dependentSchemas": {"a": uri},
    }
    cleaned = clean_schema(schema)
    assert all("format" not in d for d in walk(cleaned))
    assert cleaned["properties"]["list"]["items"] == {"type": "string"}
    assert cleaned["$defs"] == {"d": {"type": "string"}}


@pytest.mark.parametrize("fmt", ["uri", "email", "uuid", "date", "hostname", "ipv4", "int64"])
def test_clean_schema_drops_formats_other_than_date_time(fmt):
    assert clean_schema({"type": "object", "properties": {"x": {"type": "string", "format": fmt}}})["properties"]["x"] == {"type": "string"}


def test_clean_schema_keeps_date_time():
    x = {"type": "string", "format": "date-time"}
    assert clean_schema({"type": "object", "properties": {"x": x}})["properties"]["x"] == x


def test_clean_schema_keeps_a_property_named_format_and_data_values():
    schema = {
        "type": "object",
        "properties": {"format": {"type": "string", "enum": ["json", "text"], "default": "json"}},
        "default": {"format": "uri", "$schema": "kept as data"},
        "examples": [{"format": "uri"}],
    }
    cleaned = clean_schema(schema)
    assert cleaned["properties"]["format"] == {"type": "string", "enum": ["json", "text"], "default": "json"}
    assert cleaned["default"] == {"format": "uri", "$schema": "kept as data"}
    assert cleaned["examples"] == [{"format": "uri"}]


def test_clean_schema_drops_dollar_metadata_keeps_refs():
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "urn:x", "$comment": "c",
        "type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}, "$defs": {"N": {"type": "integer", "$comment": "x"}},
    }
    assert clean_schema(schema) == {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}, "$defs": {"N": {"type": "integer"}}}


def test_clean_schema_drops_property_names_and_turns_const_into_enum():
    schema = {"type": "object", "properties": {
        "meta": {"type": "object", "propertyNames": {"type": "string"}, "additionalProperties": {}},
        "status": {"anyOf": [{"type": "string", "enum": ["a"]}, {"type": "string", "const": "deleted"}]},
        "both": {"const": 1, "enum": [1]},
    }}
    cleaned = clean_schema(schema)["properties"]
    assert cleaned["meta"] == {"type": "object", "additionalProperties": {}}
    assert cleaned["status"]["anyOf"][1] == {"type": "string", "enum": ["deleted"]}
    assert cleaned["both"] == {"enum": [1]}


def test_clean_schema_top_level_is_always_an_object_with_properties():
    assert clean_schema({}) == {"type": "object", "properties": {}}
    assert clean_schema({"type": "object"}) == {"type": "object", "properties": {}}


def test_clean_schema_does_not_modify_its_input():
    body = load("messages-turn1.json")
    schemas = [t["input_schema"] for t in body["tools"]]
    before = copy.deepcopy(schemas)
    for schema in schemas:
        clean_schema(schema)
    assert schemas == before


def test_clean_schema_keeps_validation_keywords():
    x = {"type": "integer", "minimum": 0, "exclusiveMinimum": 0, "maximum": 10, "default": 3}
    s = {"type": "string", "pattern": "^wf_", "minLength": 1, "maxLength": 9, "description": "d", "title": "t"}
    cleaned = clean_schema({"type": "object", "properties": {"x": x, "s": s}, "required": ["x"], "additionalProperties": False})
    assert cleaned == {"type": "object", "properties": {"x": x, "s": s}, "required": ["x"], "additionalProperties": False}


# -- estimate_input_tokens ---------------------------------------------------------------------


def test_estimate_grows_with_text_about_four_chars_per_token():
    small = estimate_input_tokens({"messages": [{"role": "user", "content": "x" * 400}]})
    big = estimate_input_tokens({"messages": [{"role": "user", "content": "x" * 4000}]})
    assert 100 <= small <= 110 and 1000 <= big <= 1010


def test_estimate_counts_system_tools_and_tool_traffic():
    base = {"messages": [{"role": "user", "content": "hi"}]}
    plain = estimate_input_tokens(base)
    assert estimate_input_tokens({**base, "system": "s" * 400}) >= plain + 100
    assert estimate_input_tokens({**base, "tools": [WEATHER]}) > plain + 20
    with_tool_traffic = {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{**TOOL_USE, "input": {"q": "y" * 400}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "z" * 400}]}]},
    ]}
    assert estimate_input_tokens(with_tool_traffic) >= plain + 200


def test_estimate_images_have_a_fixed_cost_and_thinking_is_free():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 100000}}
    est = estimate_input_tokens({"messages": [{"role": "user", "content": [image]}]})
    assert IMAGE_TOKENS <= est < IMAGE_TOKENS + 10
    thinking = {"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "t" * 4000, "signature": "s"}]}]}
    assert estimate_input_tokens(thinking) < 10


def test_estimate_is_at_least_one():
    assert estimate_input_tokens({}) == 1
    assert estimate_input_tokens({"messages": []}) == 1


def test_estimate_for_claude_code_fixture_is_plausible():
    # ~83 KB of JSON, mostly text: roughly 15-25k tokens.
    assert 15000 <= estimate_input_tokens(load("messages-turn2.json")) <= 25000


# -- property: any valid tool conversation gives an OpenAI message list upstreams accept ---------

@st.composite
def tool_conversations(draw):
    words = st.text(alphabet="abcdefghij ", min_size=1, max_size=6).map(lambda s: "w" + s)
    messages, texts, pending, n = [], [], [], 0
    for turn in range(draw(st.integers(min_value=1, max_value=6))):
        if draw(st.booleans()):
            messages.append({"role": "system", "content": draw(words)})
        blocks = [{"type": "tool_result", "tool_use_id": i, "content": draw(words), "is_error": draw(st.booleans())}
                  for i in pending]
        blocks += [{"type": "text", "text": draw(words)} for _ in range(draw(st.integers(0 if blocks else 1, 2)))]
        blocks = draw(st.permutations(blocks))
        messages.append({"role": "user", "content": list(blocks)})
        texts += [b.get("text") or b.get("content") for b in blocks]
        if draw(st.booleans()):
            messages.append({"role": "system", "content": draw(words)})
        pending = [f"toolu_{n + k}" for k in range(draw(st.integers(0, 3)))]
        n += len(pending)
        assistant = [{"type": "thinking", "thinking": "hidden", "signature": "s"}] if draw(st.booleans()) else []
        if not pending or draw(st.booleans()):
            assistant.append({"type": "text", "text": draw(words)})
            texts.append(assistant[-1]["text"])
        assistant += [{"type": "tool_use", "id": i, "name": "T", "input": {"k": i}} for i in pending]
        messages.append({"role": "assistant", "content": assistant})
    if pending:
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": "r"} for i in pending]})
    return messages, texts


@settings(max_examples=200, deadline=None)
@given(tool_conversations())
def test_any_tool_conversation_keeps_calls_and_results_together(case):
    messages, texts = case
    out = msgs(messages)
    for p, message in enumerate(out):
        if p:
            assert not (message["role"] == out[p - 1]["role"] and message["role"] in ("user", "assistant"))
        calls = message.get("tool_calls")
        if calls:
            following = out[p + 1:p + 1 + len(calls)]
            assert [m["role"] for m in following] == ["tool"] * len(calls)
            assert {m["tool_call_id"] for m in following} == {c["id"] for c in calls}
        if message["role"] == "tool":
            assert out[p - 1]["role"] in ("assistant", "tool")
    dumped = json.dumps(out)
    assert all(json.dumps(t)[1:-1] in dumped for t in texts)
    assert "hidden" not in dumped
