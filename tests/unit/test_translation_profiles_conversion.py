"""Conversion by upstream profile: caching, reasoning round trips, PDFs, structured output, server tools, usage."""
import json
import logging
from pathlib import Path

import pytest

from app.translation.models import Route
from app.translation.profiles import PROFILES
from app.translation.request import Options, UnsupportedContent, anthropic_to_openai
from app.translation.response import map_usage, openai_to_anthropic
from app.translation.stream import StreamTranslator
from app.translation.thinking import sign_thinking_text, verify_thinking_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "claude-code-2.1.197"
KEY = b"unit-test-signing-key-0123456789"
ROUTE = Route(model="upstream-model", max_tokens=1024, reasoning=False)
SESSION = "0b9e2c1a-5f7d-4c2e-9a61-3e1f2d4c5b6a"
USER_ID = json.dumps({"device_id": "abc", "account_uuid": "", "session_id": SESSION})
TOOL = {"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}
CALL = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/a"}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "text"}


def opts(profile: str, **kw) -> Options:
    return Options(profile=PROFILES[profile], signing_key=KEY, **kw)


def convert(profile: str, messages=None, route=ROUTE, stream=False, **extra):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024,
            "messages": messages or [{"role": "user", "content": "hi"}], **extra}
    return anthropic_to_openai(body, route, stream=stream, options=opts(profile, **extra.pop("_opts", {})))


def load(name):
    return json.loads((FIXTURES / name).read_text())


# -- fields by profile ---------------------------------------------------------------------------------


def test_token_field_and_stream_options_follow_the_profile():
    assert "max_completion_tokens" in convert("openai") and "max_tokens" not in convert("openai")
    assert convert("deepseek")["max_tokens"] == 1024
    github_o = convert("github", route=Route(model="openai/o3-mini", max_tokens=99, reasoning=True))
    assert github_o["max_completion_tokens"] == 99 and "max_tokens" not in github_o
    assert convert("openai", stream=True)["stream_options"] == {"include_usage": True}


def test_reasoning_models_get_no_sampling_parameters():
    out = convert("openai", route=Route(model="o4-mini", max_tokens=10, reasoning=False), temperature=0.2, top_p=0.5)
    assert "temperature" not in out and "top_p" not in out
    assert convert("openai", temperature=0.2)["temperature"] == 0.2


def test_user_and_parallel_flag_only_where_taken():
    meta = {"metadata": {"user_id": USER_ID}}
    choice = {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}, "tools": [TOOL]}
    assert "user" in convert("openai", **meta) and "user" not in convert("github", **meta)
    assert convert("openai", **choice)["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in convert("deepseek", **choice)


# -- prompt caching ------------------------------------------------------------------------------------


def test_prompt_cache_key_is_per_session_and_stable():
    a = convert("openai", metadata={"user_id": USER_ID})["prompt_cache_key"]
    legacy = convert("openai", metadata={"user_id": f"user_{'a' * 64}_account__session_{SESSION}"})
    other = convert("openai", metadata={"user_id": USER_ID.replace(SESSION, "1" * 36)})["prompt_cache_key"]
    assert a == legacy["prompt_cache_key"] and a != other
    assert a.startswith("nexus-") and SESSION not in a and len(a) <= 64
    assert "prompt_cache_key" not in convert("deepseek", metadata={"user_id": USER_ID})
    assert "prompt_cache_key" not in convert("openai")  # no session, no key


def test_cache_control_kept_for_openrouter_anthropic_models_only():
    body = load("messages-turn2.json")
    route = Route(model="anthropic/claude-sonnet-4.5", max_tokens=1000, reasoning=True)
    kept = anthropic_to_openai(body, route, stream=True, options=opts("openrouter"))
    system = kept["messages"][0]["content"]
    assert isinstance(system, list) and all(p["type"] == "text" for p in system)
    marked = [p for p in system if "cache_control" in p]
    assert marked and marked[0]["cache_control"] == {"type": "ephemeral"}
    tool = next(m for m in kept["messages"] if m["role"] == "tool")
    assert isinstance(tool["content"], list) and "cache_control" in tool["content"][0]
    # the number of markers is what Claude Code put there (Anthropic's limit is four)
    count = json.dumps(kept).count('"cache_control"')
    assert count == json.dumps(body).count('"cache_control"') - sum(
        1 for b in body["system"] if "cache_control" in b and b["text"].startswith("x-anthropic-billing-header"))
    for profile, model in (("openrouter", "openai/gpt-4.1"), ("openai", "gpt-4.1"), ("deepseek", "deepseek-chat")):
        out = anthropic_to_openai(body, Route(model=model, max_tokens=1000, reasoning=True), stream=True,
                                  options=opts(profile))
        assert "cache_control" not in json.dumps(out), profile
        assert isinstance(out["messages"][0]["content"], str)


# -- reasoning round trip ------------------------------------------------------------------------------


def _history(thinking_block):
    return [{"role": "user", "content": "read /a"},
            {"role": "assistant", "content": [thinking_block, CALL]},
            {"role": "user", "content": [RESULT]}]


def test_proxy_signed_thinking_goes_back_as_reasoning_content():
    block = {"type": "thinking", "thinking": "I will read it.", "signature": sign_thinking_text("I will read it.", KEY)}
    out = convert("deepseek", _history(block), tools=[TOOL])
    assistant = out["messages"][1]
    assert assistant["reasoning_content"] == "I will read it." and assistant["tool_calls"]


@pytest.mark.parametrize("block", [
    {"type": "thinking", "thinking": "Anthropic's", "signature": "EqQBCkgIARABGAIiQL2ZVl8oG3Q7w1Zc" * 6},
    {"type": "thinking", "thinking": "edited", "signature": sign_thinking_text("original", KEY)},
    {"type": "thinking", "thinking": "other key", "signature": sign_thinking_text("other key", b"x" * 32)},
    {"type": "thinking", "thinking": "unsigned", "signature": ""},
    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
], ids=["anthropic", "edited", "other-key", "unsigned", "redacted"])
def test_other_thinking_is_dropped_but_the_field_stays(block, caplog):
    with caplog.at_level(logging.DEBUG, logger="app.translation.request"):
        out = convert("deepseek", _history(block), tools=[TOOL])
    assert out["messages"][1]["reasoning_content"] == ""
    assert block.get("thinking", "~") not in json.dumps(out["messages"])
    assert any("messages.1.content.0: dropping thinking" in r.getMessage() for r in caplog.records)


def test_anthropic_thinking_is_dropped_with_a_debug_line_everywhere(caplog):
    block = {"type": "thinking", "thinking": "Anthropic's", "signature": "EqQBCkgIARABGAIiQL2ZVl8oG3Q7w1Zc" * 6}
    with caplog.at_level(logging.DEBUG, logger="app.translation.request"):
        out = convert("openai", _history(block), tools=[TOOL])
    assert "reasoning_content" not in out["messages"][1] and "Anthropic's" not in json.dumps(out)
    assert any("signed by Anthropic" in r.getMessage() for r in caplog.records)


def test_claude_code_turn2_with_anthropic_thinking_converts_for_deepseek():
    out = anthropic_to_openai(load("messages-turn2.json"), Route("deepseek-reasoner", 1000, True), stream=True,
                              options=opts("deepseek"))
    calls = [m for m in out["messages"] if m.get("tool_calls")]
    assert calls and all(m["reasoning_content"] == "" for m in calls)


@pytest.mark.parametrize("body, profile, model, expected", [
    ({"output_config": {"effort": "medium"}}, "deepseek", "deepseek-reasoner", "medium"),
    ({"thinking": {"type": "enabled", "budget_tokens": 31999}}, "openrouter", "x/y", "high"),
    ({"output_config": {"effort": "low"}}, "openai", "o3", "low"),
    ({"output_config": {"effort": "low"}}, "openai", "gpt-4.1", None),  # not a reasoning model
    ({"output_config": {"effort": "low"}}, "github", "openai/o3", None),  # not a documented parameter
    ({"output_config": {"effort": "low"}}, "generic", "m", None),
])
def test_reasoning_effort_by_profile(body, profile, model, expected):
    out = convert(profile, route=Route(model=model, max_tokens=10, reasoning=False), **body)
    assert out.get("reasoning_effort") == expected


def test_reasoning_effort_on_ollama_only_when_thinking_is_asked_for():
    assert "reasoning_effort" not in convert("ollama", output_config={"effort": "low"})
    thinking = Route(model="qwen3", max_tokens=10, reasoning=True)
    assert convert("ollama", route=thinking, output_config={"effort": "low"})["reasoning_effort"] == "low"


# -- documents -----------------------------------------------------------------------------------------


def _doc(source, **extra):
    return [{"role": "user", "content": [{"type": "document", "source": source, **extra},
                                         {"type": "text", "text": "Summarise."}]}]


PDF_B64 = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}


def test_pdf_becomes_a_file_part():
    out = convert("openai", _doc(PDF_B64, title="report.pdf"))
    assert out["messages"][0]["content"] == [
        {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}},
        {"type": "text", "text": "Summarise."}]
    by_url = convert("openrouter", _doc({"type": "url", "url": "https://x/a.pdf"}))
    assert by_url["messages"][0]["content"][0] == {"type": "file", "file": {"filename": "document.pdf",
                                                                           "file_data": "https://x/a.pdf"}}
    by_id = convert("openai", _doc({"type": "file", "file_id": "file-abc"}))
    assert by_id["messages"][0]["content"][0] == {"type": "file", "file": {"file_id": "file-abc"}}


@pytest.mark.parametrize("profile, source, what", [
    ("openai", {"type": "url", "url": "https://x/a.pdf"}, "a URL PDF"),
    ("openrouter", {"type": "file", "file_id": "f"}, r"a file \(file_id\)"),
    ("deepseek", PDF_B64, "a base64 PDF"),
    ("github", PDF_B64, "a base64 PDF"),
])
def test_pdf_the_upstream_cannot_take_is_refused_naming_block_and_upstream(profile, source, what):
    body = {"model": "m", "max_tokens": 5, "messages": _doc(source)}
    with pytest.raises(UnsupportedContent, match=rf"^messages\.0\.content\.0: block type 'document' with {what} "
                                                 rf"cannot be sent to upstream up\.example \(profile '{profile}'\)"):
        anthropic_to_openai(body, ROUTE, stream=False,
                            options=Options(profile=PROFILES[profile], upstream="up.example"))


def test_text_documents_stay_text_everywhere():
    out = convert("deepseek", _doc({"type": "text", "media_type": "text/plain", "data": "plain words"}))
    assert out["messages"][0]["content"] == "plain words\n\nSummarise."


def test_images_refused_where_the_upstream_takes_none():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(UnsupportedContent, match=r"^messages\.0\.content\.0: block type 'image' cannot be sent"):
        convert("deepseek", [{"role": "user", "content": [image]}])
    assert convert("openai", [{"role": "user", "content": [image]}])["messages"][0]["content"][0]["type"] == "image_url"


# -- structured output ---------------------------------------------------------------------------------


SCHEMA = {"type": "object", "$schema": "x", "properties": {"a": {"type": "string", "format": "email"},
                                                            "b": {"const": 1}}, "required": ["a"]}


@pytest.mark.parametrize("extra", [{"output_format": {"type": "json_schema", "schema": SCHEMA}},
                                   {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}])
def test_structured_output_becomes_response_format_with_a_clean_schema(extra):
    out = convert("openai", **extra)
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": {
        "type": "object", "properties": {"a": {"type": "string"}, "b": {"enum": [1]}}, "required": ["a"]}}}


def test_structured_output_json_mode_only():
    out = convert("deepseek", output_format={"type": "json_schema", "schema": SCHEMA})
    assert out["response_format"] == {"type": "json_object"}
    assert out["messages"][-1]["role"] == "system" and "JSON" in out["messages"][-1]["content"]


def test_no_structured_output_without_a_schema():
    assert "response_format" not in convert("openai", output_config={"effort": "high"})
    with pytest.raises(UnsupportedContent, match="output_format.schema"):
        convert("openai", output_format={"type": "json_schema", "schema": "nope"})


# -- server tools --------------------------------------------------------------------------------------


WEB = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}


@pytest.mark.parametrize("tool", [WEB, {"type": "web_fetch_20250910", "name": "web_fetch"},
                                  {"type": "code_execution_20250825", "name": "code_execution"}])
def test_server_tools_error_by_default(tool):
    with pytest.raises(UnsupportedContent, match=rf"server tool '{tool['name']}'.*cannot run it"):
        convert("openai", tools=[TOOL, tool])


def test_server_tools_drop_logs_and_keeps_the_rest(caplog):
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [WEB, TOOL]}
    with caplog.at_level(logging.INFO, logger="app.translation.request"):
        out = anthropic_to_openai(body, ROUTE, stream=False, options=opts("openai", server_tools="drop"))
    assert [t["function"]["name"] for t in out["tools"]] == ["Read"]
    assert any("dropping server tool 'web_search'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("tools, choice", [([WEB], None), ([WEB, TOOL], {"type": "tool", "name": "web_search"})])
def test_drop_never_makes_a_search_come_back_empty(tools, choice):
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": tools}
    if choice:
        body["tool_choice"] = choice
    with pytest.raises(UnsupportedContent, match="no results"):
        anthropic_to_openai(body, ROUTE, stream=False, options=opts("openai", server_tools="drop"))


def test_openrouter_web_search_becomes_the_web_plugin():
    out = convert("openrouter", tools=[WEB], messages=[{"role": "user", "content": "news"}])
    assert out["plugins"] == [{"id": "web", "max_results": 3}] and "tools" not in out


# -- answers: signature and usage ----------------------------------------------------------------------


def test_json_reasoning_gets_the_proxy_signature():
    resp = {"choices": [{"message": {"role": "assistant", "reasoning_content": "hmm", "content": "ok"},
                         "finish_reason": "stop"}]}
    block = openai_to_anthropic(resp, model="m", signing_key=KEY)["content"][0]
    assert block["type"] == "thinking" and verify_thinking_text("hmm", block["signature"], KEY)


def test_streamed_reasoning_gets_the_same_signature():
    st = StreamTranslator(model="m", signing_key=KEY)
    out = st.start()
    for piece in ("I will ", "read ", "it."):
        out += st.feed({"choices": [{"delta": {"reasoning_content": piece}}]})
    out += st.feed({"choices": [{"delta": {"content": "done"}, "finish_reason": "stop"}]}) + st.finish()
    sig = next(json.loads(line[6:])["delta"]["signature"] for line in out.decode().splitlines()
               if line.startswith("data: ") and "signature_delta" in line)
    assert sig == sign_thinking_text("I will read it.", KEY)


@pytest.mark.parametrize("usage, expected", [
    ({"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 60}},
     {"input_tokens": 40, "output_tokens": 5, "cache_read_input_tokens": 60}),
    ({"prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 70, "prompt_cache_miss_tokens": 30},
     {"input_tokens": 30, "output_tokens": 5, "cache_read_input_tokens": 70}),
    ({"completion_tokens": 5, "prompt_cache_hit_tokens": 70, "prompt_cache_miss_tokens": 30},
     {"input_tokens": 30, "output_tokens": 5, "cache_read_input_tokens": 70}),
    ({"prompt_tokens": 100, "completion_tokens": 5,
      "prompt_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 80}},
     {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 80}),
    ({"prompt_tokens": 100, "completion_tokens": 5, "cache_creation_input_tokens": 50},
     {"input_tokens": 50, "output_tokens": 5, "cache_creation_input_tokens": 50}),
    ({"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 99}},
     {"input_tokens": 0, "output_tokens": 1, "cache_read_input_tokens": 99}),
    ({"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": None}},
     {"input_tokens": 10, "output_tokens": 1}),
])
def test_cache_usage_dialects_map_to_anthropic(usage, expected):
    assert map_usage(usage) == expected
    st = StreamTranslator(model="m", input_tokens=7)
    st.start()
    st.feed({"choices": [{"delta": {"content": "x"}, "finish_reason": "stop"}]})
    st.feed({"choices": [], "usage": usage})
    tail = st.finish().decode()
    delta = next(json.loads(line[6:]) for line in tail.splitlines() if '"message_delta"' in line)
    assert delta["usage"] == expected
    assert (st.input_tokens, st.cache_read_input_tokens, st.cache_creation_input_tokens) == (
        expected["input_tokens"], expected.get("cache_read_input_tokens", 0),
        expected.get("cache_creation_input_tokens", 0))


def test_merged_assistant_messages_keep_both_reasonings():
    a = {"type": "thinking", "thinking": "first. ", "signature": sign_thinking_text("first. ", KEY)}
    b = {"type": "thinking", "thinking": "second.", "signature": sign_thinking_text("second.", KEY)}
    call2 = dict(CALL, id="toolu_2")
    out = convert("deepseek", [{"role": "user", "content": "go"},
                               {"role": "assistant", "content": [a, CALL]},
                               {"role": "assistant", "content": [b, call2]},
                               {"role": "user", "content": [RESULT, dict(RESULT, tool_use_id="toolu_2")]}],
                  tools=[TOOL])
    assistant = out["messages"][1]
    assert assistant["reasoning_content"] == "first. second." and len(assistant["tool_calls"]) == 2


ANNOTATIONS = [{"type": "url_citation", "url_citation": {"url": "https://a.example/1", "title": "One"}},
               {"type": "url_citation", "url_citation": {"url": "https://a.example/1", "title": "One again"}},
               {"type": "url_citation", "url_citation": {"url": "https://b.example/2"}},
               {"type": "file"}, "junk"]
SOURCES = "\n\nSources:\n- [One](https://a.example/1)\n- [https://b.example/2](https://b.example/2)"


def test_web_plugin_sources_follow_the_answer_in_json_and_streams():
    resp = {"choices": [{"message": {"role": "assistant", "content": "News.", "annotations": ANNOTATIONS},
                         "finish_reason": "stop"}]}
    assert openai_to_anthropic(resp, model="m")["content"] == [{"type": "text", "text": "News." + SOURCES}]
    st = StreamTranslator(model="m")
    st.start()
    st.feed({"choices": [{"delta": {"content": "News."}}]})
    st.feed({"choices": [{"delta": {"annotations": ANNOTATIONS}, "finish_reason": "stop"}]})
    st.finish()
    assert st.text == "News." + SOURCES
