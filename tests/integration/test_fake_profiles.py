"""The fake upstream's emulation of each upstream refuses what that upstream refuses (tests/fakes/profiles.py)."""
import pytest
import requests

BASE = {"messages": [{"role": "user", "content": "hi"}]}
TOOL_TURN = [{"role": "user", "content": "read /a"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "c1", "type": "function", "function": {"name": "Read", "arguments": "{}"}}]},
             {"role": "tool", "tool_call_id": "c1", "content": "x"}]


def post(fake, profile, body):
    return requests.post(f"{fake.url}/profile/{profile}/chat/completions", json=body, timeout=10)


@pytest.mark.parametrize("profile, body, needle", [
    ("openai", {"model": "gpt-4.1", "foo": 1}, "Unrecognized request argument supplied: foo"),
    ("openai", {"model": "o4-mini", "max_tokens": 5}, "Use 'max_completion_tokens' instead"),
    ("openai", {"model": "o4-mini", "max_completion_tokens": 5, "temperature": 0.5}, "Only the default (1)"),
    ("openai", {"model": "gpt-4.1", "reasoning_effort": "low"}, "reasoning_effort"),
    ("openai", {"model": "gpt-4.1", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]}, "cache_control"),
    ("openai", {"model": "gpt-4.1", "messages": [{"role": "assistant", "content": "x", "reasoning_content": ""}]},
     "reasoning_content"),
    ("github", {"model": "openai/gpt-4.1", "user": "u"}, "Unrecognized request argument supplied: user"),
    ("github", {"model": "openai/gpt-4.1", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA=="}}]}]}, "Supported values"),
    ("deepseek", {"model": "deepseek-reasoner", "messages": TOOL_TURN}, "Missing `reasoning_content`"),
    ("deepseek", {"model": "deepseek-reasoner", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}, "unknown variant `image_url`"),
    ("deepseek", {"model": "deepseek-reasoner", "response_format": {"type": "json_schema", "json_schema": {}}},
     "response_format type is unavailable"),
    ("deepseek", {"model": "deepseek-reasoner", "response_format": {"type": "json_object"}}, "word 'json'"),
])
def test_refusals(fake_upstream, profile, body, needle):
    resp = post(fake_upstream, profile, {**BASE, **body})
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]["message"]


@pytest.mark.parametrize("profile, body", [
    ("openai", {"model": "o4-mini", "max_completion_tokens": 5, "reasoning_effort": "low", "prompt_cache_key": "k"}),
    ("deepseek", {"model": "deepseek-reasoner", "messages": [
        *TOOL_TURN[:1], dict(TOOL_TURN[1], reasoning_content=""), TOOL_TURN[2]]}),
    ("openrouter", {"model": "anthropic/claude-sonnet-4.5", "plugins": [{"id": "web"}], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]}),
    ("generic", {"model": "m", "anything": True}),
])
def test_what_each_upstream_takes(fake_upstream, profile, body):
    resp = post(fake_upstream, profile, {**BASE, **body})
    assert resp.status_code == 200, resp.text


def test_usage_dialects(fake_upstream):
    deepseek = post(fake_upstream, "deepseek", {**BASE, "model": "deepseek-reasoner"}).json()["usage"]
    assert {"prompt_cache_hit_tokens", "prompt_cache_miss_tokens"} <= set(deepseek)
    assert "prompt_tokens_details" not in deepseek
    router = post(fake_upstream, "openrouter", {**BASE, "model": "x/y"}).json()["usage"]
    assert set(router["prompt_tokens_details"]) == {"cached_tokens", "cache_write_tokens"}
    message = post(fake_upstream, "deepseek", {**BASE, "model": "deepseek-reasoner"}).json()["choices"][0]["message"]
    assert message["reasoning_content"]
