"""Client request validation: a 400 naming the field, before any upstream call."""
import json
from pathlib import Path

import pytest

from app.translation.validation import (
    RequestValidationError,
    validate_count_tokens_request,
    validate_messages_request,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "claude-code-2.1.197"


def good(**changes):
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    body.update(changes)
    return body


def error_of(body, validate=validate_messages_request) -> str:
    with pytest.raises(RequestValidationError) as err:
        validate(body)
    return str(err.value)


@pytest.mark.parametrize("name", ["messages-turn1.json", "messages-turn2.json"])
def test_claude_code_fixtures_are_valid_for_both_endpoints(name):
    body = json.loads((FIXTURES / name).read_text())
    validate_messages_request(body)
    validate_count_tokens_request(body)


def test_minimal_and_rich_bodies_are_valid():
    validate_messages_request(good())
    validate_messages_request(good(
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image", "source": {}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "x", "input": {}}]},
            {"role": "system", "content": "mid-conversation"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]},
        ],
        stream=True, temperature=0.5, top_p=0.9, top_k=5, stop_sequences=["x"],
        tools=[{"name": "x", "input_schema": {"type": "object"}}, {"type": "web_search_20250305", "name": "web_search"}],
        tool_choice={"type": "tool", "name": "x"}, thinking={"type": "adaptive"}, metadata={"user_id": "u"},
    ))


def test_unknown_top_level_fields_are_allowed():
    validate_messages_request(good(context_management={"edits": []}, output_config={"effort": "high"},
                                   container="c", mcp_servers=[], service_tier="auto", field_from_2027=[1, 2]))


def test_optional_fields_may_be_null():
    validate_messages_request(good(system=None, temperature=None, tools=None, stream=None))


@pytest.mark.parametrize("body", [[], "text", 42, None, [{"model": "x"}]])
def test_body_must_be_an_object(body):
    assert error_of(body) == "request body: must be a JSON object"


def test_missing_messages():
    body = good()
    del body["messages"]
    assert error_of(body) == "messages: field required"


def test_empty_messages():
    assert error_of(good(messages=[])) == "messages: must contain at least one message"


@pytest.mark.parametrize("messages", ["hi", {"role": "user"}, 3])
def test_messages_must_be_a_list(messages):
    assert error_of(good(messages=messages)) == "messages: must be a list of messages"


def test_missing_max_tokens():
    body = good()
    del body["max_tokens"]
    assert error_of(body) == "max_tokens: field required"


@pytest.mark.parametrize("value", [0, -1, 1.5, 100.0, "100", True, False, None, [100]])
def test_max_tokens_must_be_a_positive_integer(value):
    assert error_of(good(max_tokens=value)).startswith("max_tokens: must")


def test_huge_max_tokens_is_rejected():
    assert error_of(good(max_tokens=10**30)) == "max_tokens: must be at most 2147483647"


def test_unknown_role_names_the_message():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "tool", "content": "c"}]
    assert error_of(good(messages=messages)) == "messages.2.role: must be one of user, assistant, system"


@pytest.mark.parametrize(
    "message, expected",
    [
        ("hi", "messages.0: must be an object"),
        ({"role": "user"}, "messages.0.content: field required"),
        ({"role": "user", "content": None}, "messages.0.content: must not be null"),
        ({"role": "user", "content": 5}, "messages.0.content: must be a string or a list of content blocks"),
        ({"role": "user", "content": ["text"]}, "messages.0.content.0: must be an object"),
        ({"role": "user", "content": [{"text": "no type"}]}, "messages.0.content.0.type: must be a string"),
        ({"content": "x"}, "messages.0.role: must be one of user, assistant, system"),
    ],
)
def test_message_shape_errors_name_the_place(message, expected):
    assert error_of(good(messages=[message])) == expected


def test_several_errors_are_all_named():
    msg = error_of({"model": "", "max_tokens": -5, "messages": [{"role": "bot", "content": "x"}]})
    assert "model: must be a non-empty string" in msg
    assert "max_tokens: must be a positive integer" in msg
    assert "messages.0.role: must be one of user, assistant, system" in msg


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("model", 5, "model: must be a non-empty string"),
        ("stream", "true", "stream: must be a boolean"),
        ("stream", 1, "stream: must be a boolean"),
        ("temperature", "hot", "temperature: must be a number between 0 and 2"),
        ("temperature", 1e308 * 10, "temperature: must be a number between 0 and 2"),
        ("temperature", -0.1, "temperature: must be a number between 0 and 2"),
        ("top_p", 1.5, "top_p: must be a number between 0 and 1"),
        ("top_k", -1, "top_k: must be an integer between 0 and 2147483647"),
        ("top_k", 10**20, "top_k: must be an integer between 0 and 2147483647"),
        ("stop_sequences", "END", "stop_sequences: must be a list of strings"),
        ("stop_sequences", ["END", 3], "stop_sequences: must be a list of strings"),
        ("system", 5, "system: must be a string or a list of text blocks"),
        ("system", [{"text": "no type"}], "system.0.type: must be a string"),
        ("tools", {"name": "x"}, "tools: must be a list of tools"),
        ("tools", [{"input_schema": {}}], "tools.0.name: must be a non-empty string"),
        ("tools", [{"name": "x", "input_schema": "schema"}], "tools.0.input_schema: must be an object"),
        ("tool_choice", "auto", "tool_choice: must be an object"),
        ("tool_choice", {"type": "sometimes"}, "tool_choice.type: must be one of auto, any, tool, none"),
        ("tool_choice", {"type": "tool"}, "tool_choice.name: must be a non-empty string when type is tool"),
        ("thinking", "on", "thinking: must be an object"),
        ("metadata", "u1", "metadata: must be an object"),
    ],
)
def test_wrong_types_name_the_field(field, value, expected):
    assert error_of(good(**{field: value})) == expected


def test_model_is_required():
    body = good()
    del body["model"]
    assert error_of(body) == "model: field required"


def test_count_tokens_does_not_need_max_tokens_but_checks_the_rest():
    body = good()
    del body["max_tokens"]
    validate_count_tokens_request(body)
    assert error_of(good(messages=[]), validate_count_tokens_request) == "messages: must contain at least one message"
    assert error_of(good(messages=[{"role": "robot", "content": "x"}]), validate_count_tokens_request).startswith("messages.0.role")


def test_error_count_is_bounded_for_huge_bad_conversations():
    msg = error_of(good(messages=[{"role": "bot", "content": "x"}] * 5000))
    assert msg.count("must be one of") <= 10


def test_is_a_value_error():
    assert issubclass(RequestValidationError, ValueError)
