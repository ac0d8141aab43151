"""The fake Responses API refuses what the real one refuses (so tests against it mean something)."""
from __future__ import annotations

import pytest

from tests.fakes import responses as fake_api


def req(*items, **extra) -> dict:
    return {"model": "gpt-5", "input": list(items), "store": False, **extra}


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


CALL = {"type": "function_call", "call_id": "call_1", "name": "Read", "arguments": "{}"}
OUTPUT = {"type": "function_call_output", "call_id": "call_1", "output": "x"}
ISSUED = {"rs_1": "gAAAA-issued"}
REASONING = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-issued"}


def refused(body: dict, issued=None) -> str:
    with pytest.raises(fake_api.Invalid) as info:
        fake_api.validate(body, issued or {})
    error = info.value.body()["error"]
    assert error["type"] == "invalid_request_error"
    return error["message"]


def test_a_valid_tool_turn_with_its_reasoning_is_accepted():
    fake_api.validate(req(user("hi"), REASONING, CALL, OUTPUT), ISSUED)
    fake_api.validate(req(user("hi"), REASONING, {"type": "message", "role": "assistant", "content": [
        {"type": "output_text", "text": "ok"}]}, user("more")), ISSUED)


def test_unknown_item_type():
    assert "Invalid value: 'tool_result'" in refused(req(user("hi"), {"type": "tool_result", "call_id": "x"}))


def test_function_call_output_without_its_call():
    assert "No tool call found for function call output with call_id call_1" in refused(req(user("hi"), OUTPUT))
    # the call must come before its output
    assert "No tool call found" in refused(req(user("hi"), OUTPUT, CALL))


def test_reasoning_item_it_did_not_issue():
    assert "not found" in refused(req(user("hi"), REASONING, CALL, OUTPUT))
    assert "could not be verified" in refused(
        req(user("hi"), dict(REASONING, encrypted_content="gAAAA-forged"), CALL, OUTPUT), ISSUED)


def test_reasoning_item_without_its_following_item():
    assert "without its required following item" in refused(req(user("hi"), REASONING, user("again")), ISSUED)
    assert "without its required following item" in refused(req(user("hi"), REASONING), ISSUED)


def test_content_parts_must_fit_the_role():
    assert "Supported values are: 'output_text', 'refusal'" in refused(req(
        {"type": "message", "role": "assistant", "content": [{"type": "input_text", "text": "x"}]}))
    assert "'text'" in refused(req({"type": "message", "role": "user", "content": [{"type": "text", "text": "x"}]}))


def test_parameters_the_api_does_not_have_or_refuses():
    assert "Unknown parameter: 'messages'" in refused(dict(req(user("hi")), messages=[]))
    assert "Unknown parameter: 'max_tokens'" in refused(dict(req(user("hi")), max_tokens=100))
    assert ">= 16" in refused(req(user("hi"), max_output_tokens=1))
    assert "Invalid value: 'extreme'" in refused(req(user("hi"), reasoning={"effort": "extreme"}))
    assert "Invalid value: 'reasoning.everything'" in refused(req(user("hi"), include=["reasoning.everything"]))


def test_functions_are_strict_unless_told_otherwise():
    loose = {"type": "object", "properties": {"path": {"type": "string"}}}
    tool = {"type": "function", "name": "Read", "parameters": loose}
    assert "additionalProperties" in refused(req(user("hi"), tools=[tool]))
    fake_api.validate(req(user("hi"), tools=[dict(tool, strict=False)]), {})
    strict = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"],
              "additionalProperties": False}
    fake_api.validate(req(user("hi"), tools=[dict(tool, parameters=strict)]), {})


def test_the_model_reasons_then_calls_read_once_per_path():
    body = req(user("Read /tmp/a.txt and then /tmp/b.txt."), reasoning={"summary": "auto"},
               include=["reasoning.encrypted_content"],
               tools=[{"type": "function", "name": "Read", "parameters": {}, "strict": False}])
    items = fake_api.output_items(body, fake_api.plan(body))
    assert [i["type"] for i in items] == ["reasoning", "message", "function_call", "function_call"]
    assert len(items[0]["summary"]) == 2 and items[0]["encrypted_content"]
    assert [i["arguments"] for i in items[2:]] == ['{"file_path":"/tmp/a.txt"}', '{"file_path":"/tmp/b.txt"}']
    # no summaries unless asked, no encrypted content unless included
    plain = fake_api.output_items(req(user("hi")), {"kind": "text", "text": "x"})
    assert plain[0]["summary"] == [] and "encrypted_content" not in plain[0]


def test_prompt_cache_counts_only_long_shared_prefixes():
    assert fake_api.cached_tokens(1000) == 0
    assert fake_api.cached_tokens(1024) == 1024 and fake_api.cached_tokens(1300) == 1280
