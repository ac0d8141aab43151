"""Upstream profiles end to end: the proxy (gunicorn + gevent) in front of the fake upstream emulating each
upstream (`<fake>/profile/<name>`, tests/fakes/profiles.py), with the official `anthropic` SDK as the client.

The fake refuses what the real upstream refuses (DeepSeek's missing reasoning_content, max_tokens on OpenAI
reasoning models, unknown fields on the strict upstreams), so a passing request here is one that upstream takes.
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import anthropic
import pytest
import requests

from tests.fakes.profiles import ANSWER_THINKING, THINKING_TEXT

pytestmark = pytest.mark.timeout(120)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "claude-code-2.1.197"
KEY = "sk-upstream-profile-e2e"
MODEL = "claude-sonnet-4-5"
READ_TOOL = {"name": "Read", "description": "Read a file",
             "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                              "required": ["file_path"]}}
WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
PDF = (b"%PDF-1.4\n1 0 obj <</Type /Catalog>> endobj\n2 0 obj <</Length 44>> stream\n"
       b"BT /F1 12 Tf 72 712 Td (Hello from the PDF) Tj ET\nendstream endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n")
SESSION_USER = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "0b9e2c1a-5f7d-4c2e-9a61-3e1f2d4c5b6a"})


def _env(fake, profile: str, model: str, **extra: str) -> dict:
    env = {
        "PROXY_MODE": "translation",
        "ANTHROPIC_PROXY_BASE_URL": f"{fake.url}/profile/{profile}",
        "UPSTREAM_PROFILE": profile,
        "CLAUDE_CODE_PROXY_API_KEY": KEY,
        "REASONING_MODEL": model,
        "COMPLETION_MODEL": model,
        "STREAM_PING_INTERVAL": "0.3",
        "UPSTREAM_MAX_RETRIES": "0",
        "UPSTREAM_READ_TIMEOUT": "20",
    }
    env.update(extra)
    return env


PROFILE_MODELS = {
    "deepseek": "deepseek-reasoner",
    "openrouter": "anthropic/claude-sonnet-4.5",
    "openai": "gpt-4.1",
    "openai-reasoning": "o4-mini",
    "github": "openai/gpt-4.1",
}


@pytest.fixture(scope="module")
def proxies(start_proxy, fake_upstream_server):
    """One proxy per emulated upstream, started on first use."""
    started: dict[str, object] = {}

    def get(name: str, **extra: str):
        key = name + json.dumps(extra, sort_keys=True)
        if key not in started:
            profile = name.split("-")[0]
            started[key] = start_proxy(_env(fake_upstream_server, profile, PROFILE_MODELS[name], **extra))
        return started[key]

    return get


@pytest.fixture
def fake(fake_upstream):
    fake_upstream.reset()
    return fake_upstream


def sdk(proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0, timeout=30)


def chat_posts(fake) -> list[dict]:
    return [r for r in fake.requests() if r["method"] == "POST" and r["path"].endswith("/chat/completions")]


def raw_post(proxy, body: dict, stream: bool = False) -> requests.Response:
    return requests.post(proxy.url + "/v1/messages", data=json.dumps(body), stream=stream, timeout=30,
                         headers={"content-type": "application/json", "x-api-key": "client-key",
                                  "anthropic-version": "2023-06-01"})


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def domain_stats(proxy, host: str) -> dict | None:
    return requests.get(proxy.url + "/token-stats", timeout=5).json()["stats"].get(host)


def as_params(content) -> list[dict]:
    return [block.model_dump(exclude_none=True) for block in content]


# -- tool turns with reasoning: DeepSeek and OpenRouter ---------------------------------------------------


def _tool_turns(client: anthropic.Anthropic, streamed: bool, path: str) -> tuple[anthropic.types.Message, ...]:
    messages = [{"role": "user", "content": f"What is the first word of {path}?"}]
    params = dict(model=MODEL, max_tokens=4096, tools=[READ_TOOL], metadata={"user_id": SESSION_USER},
                  thinking={"type": "enabled", "budget_tokens": 2048})

    def ask(history):
        if streamed:
            with client.messages.stream(messages=history, **params) as s:
                return s.get_final_message()
        return client.messages.create(messages=history, **params)

    first = ask(messages)
    assert first.stop_reason == "tool_use", first
    call = next(b for b in first.content if b.type == "tool_use")
    messages += [{"role": "assistant", "content": as_params(first.content)},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                               "content": "     1\tPineapple grows here"}]}]
    second = ask(messages)
    return first, second


@pytest.mark.parametrize("profile", ["deepseek", "openrouter"])
@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
def test_sdk_tool_turns_keep_the_reasoning(proxies, fake, profile, streamed):
    with sdk(proxies(profile)) as client:
        first, second = _tool_turns(client, streamed, "/tmp/notes.txt")
    thinking = [b for b in first.content if b.type == "thinking"]
    assert thinking and thinking[0].thinking == THINKING_TEXT
    # the proxy's own signature: recognisable, never one that looks like Anthropic's
    assert thinking[0].signature.startswith("nxp1.")
    assert second.content[-1].type == "text" and "Pineapple" in second.content[-1].text
    posts = chat_posts(fake)
    assert len(posts) == 2 and all(p["path"].startswith(f"/profile/{profile}/") for p in posts)
    assistant = next(m for m in posts[1]["body"]["messages"] if m["role"] == "assistant")
    if profile == "deepseek":
        # the reasoning went back with the tool call; without it DeepSeek refuses the turn (checked below)
        assert assistant["reasoning_content"] == THINKING_TEXT
        assert posts[0]["body"]["reasoning_effort"] == "low"  # budget_tokens 2048
    else:
        assert "reasoning_content" not in assistant
    answer_thinking = [b for b in second.content if b.type == "thinking"]
    assert answer_thinking and answer_thinking[0].thinking == ANSWER_THINKING


def test_deepseek_refuses_a_tool_turn_without_its_reasoning(proxies, fake):
    """The emulated DeepSeek is as strict as the real one: the history's reasoning must come back."""
    body = {"model": "deepseek-reasoner", "messages": [
        {"role": "user", "content": "read /tmp/a"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "x"}]}
    resp = requests.post(fake.url + "/profile/deepseek/chat/completions", json=body, timeout=10)
    assert resp.status_code == 400 and "reasoning_content" in resp.json()["error"]["message"]


def test_forged_or_anthropic_thinking_is_not_sent_as_reasoning(proxies, fake):
    """Thinking the proxy did not sign (Anthropic's, or edited text) is dropped; DeepSeek still gets the
    field it needs, empty, and answers."""
    proxy = proxies("deepseek")
    with sdk(proxy) as client:
        first, _ = _tool_turns(client, False, "/tmp/a.txt")
        call = next(b for b in first.content if b.type == "tool_use")
        for thinking in ({"type": "thinking", "thinking": "edited text", "signature": first.content[0].signature},
                         {"type": "thinking", "thinking": "from Anthropic", "signature": "EqQBCkgIARABGAIiQL2Z" * 8},
                         {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}):
            fake.reset()
            answer = client.messages.create(model=MODEL, max_tokens=4096, tools=[READ_TOOL], messages=[
                {"role": "user", "content": "What is the first word of /tmp/a.txt?"},
                {"role": "assistant", "content": [thinking, call.model_dump()]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Kiwi"}]},
            ])
            assert "Kiwi" in answer.content[-1].text
            assistant = next(m for m in chat_posts(fake)[0]["body"]["messages"] if m["role"] == "assistant")
            assert assistant["reasoning_content"] == ""


# -- strict upstreams take what the proxy sends ------------------------------------------------------------


@pytest.mark.parametrize("name", ["openai", "openai-reasoning", "github", "deepseek", "openrouter"])
@pytest.mark.parametrize("turn", ["messages-turn1.json", "messages-turn2.json"])
def test_claude_code_bodies_are_accepted_by_each_upstream(proxies, fake, name, turn):
    body = json.loads((FIXTURES / turn).read_text())
    body["stream"] = False
    resp = raw_post(proxies(name), body)
    assert resp.status_code == 200, resp.text
    sent = chat_posts(fake)[0]["body"]
    if name == "openai-reasoning":
        assert "max_tokens" not in sent and sent["max_completion_tokens"] > 0
        assert sent["reasoning_effort"] == "high"  # output_config.effort
    if name.startswith("openai"):
        assert sent["prompt_cache_key"].startswith("nexus-")
    if name == "openrouter":
        system = sent["messages"][0]
        assert system["role"] == "system" and isinstance(system["content"], list)
        assert any("cache_control" in p for p in system["content"])
    else:
        assert "cache_control" not in json.dumps(sent)


def test_openai_reasoning_model_never_gets_max_tokens(proxies, fake):
    with sdk(proxies("openai-reasoning")) as client:
        reply = client.messages.create(model=MODEL, max_tokens=300, messages=[{"role": "user", "content": "hi"}])
    assert reply.content[0].text
    posts = chat_posts(fake)
    assert len(posts) == 1 and posts[0]["body"]["max_completion_tokens"] == 300


# -- cache usage in three dialects -----------------------------------------------------------------------


def _completion(usage: dict) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "cached"}, "finish_reason": "stop"}],
            "usage": usage}


def _chunks(usage: dict) -> list[dict]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return [dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": "cached"},
                                 "finish_reason": None}]),
            dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            dict(base, choices=[], usage=usage)]


DIALECTS = {
    # name: (profile, upstream usage, expected Anthropic usage)
    "openai": ("openai", {"prompt_tokens": 1000, "completion_tokens": 20, "total_tokens": 1020,
                          "prompt_tokens_details": {"cached_tokens": 800}},
               {"input_tokens": 200, "output_tokens": 20, "cache_read_input_tokens": 800}),
    "deepseek": ("deepseek", {"prompt_tokens": 1000, "completion_tokens": 20, "total_tokens": 1020,
                              "prompt_cache_hit_tokens": 640, "prompt_cache_miss_tokens": 360},
                 {"input_tokens": 360, "output_tokens": 20, "cache_read_input_tokens": 640}),
    "openrouter": ("openrouter", {"prompt_tokens": 1000, "completion_tokens": 20, "total_tokens": 1020,
                                  "prompt_tokens_details": {"cached_tokens": 300, "cache_write_tokens": 600}},
                   {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 300,
                    "cache_creation_input_tokens": 600}),
}


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_cache_usage_in_json_streams_and_token_stats(proxies, fake, dialect):
    profile, usage, expected = DIALECTS[dialect]
    proxy = proxies(profile)
    fake.script("/chat/completions", [{"json": _completion(usage)}, {"sse": _chunks(usage)}])
    host = f"cache-{dialect}.example.com"
    with anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0,
                             default_headers={"Host": host}) as client:
        created = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "a"}])
        with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "b"}]) as s:
            streamed = s.get_final_message()
    for message in (created, streamed):
        got = {k: v for k, v in message.usage.model_dump().items() if k in expected}
        assert got == expected, (dialect, message.usage)
    stats = wait_for(lambda: (lambda s: s if s and s["requestCount"] >= 2 else None)(domain_stats(proxy, host)))
    assert stats, "the requests never showed up in /token-stats"
    assert stats["inputTokens"] == 2 * expected["input_tokens"]
    assert stats["cacheReadInputTokens"] == 2 * expected["cache_read_input_tokens"]
    assert stats["cacheCreationInputTokens"] == 2 * expected.get("cache_creation_input_tokens", 0)


def test_prompt_cache_key_keeps_one_session_on_one_cache(proxies, fake):
    """The emulated OpenAI caches per prompt_cache_key: Claude Code's second turn reads the first one's prefix."""
    proxy = proxies("openai")
    one, two = (json.loads((FIXTURES / n).read_text()) for n in ("messages-turn1.json", "messages-turn2.json"))
    for body in (one, two):
        body["stream"] = False
    first = raw_post(proxy, one).json()
    second = raw_post(proxy, two).json()
    keys = {p["body"]["prompt_cache_key"] for p in chat_posts(fake)}
    assert len(keys) == 1
    assert first["usage"].get("cache_read_input_tokens", 0) == 0
    assert second["usage"]["cache_read_input_tokens"] > 1000
    assert second["usage"]["input_tokens"] < second["usage"]["cache_read_input_tokens"]


# -- documents, structured output, server tools --------------------------------------------------------------


def _pdf_block(source: dict) -> dict:
    return {"type": "document", "title": "hello.pdf", "source": source}


def test_pdf_round_trip(proxies, fake):
    data = base64.b64encode(PDF).decode()
    with sdk(proxies("openrouter")) as client:
        reply = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": [
            _pdf_block({"type": "base64", "media_type": "application/pdf", "data": data}),
            {"type": "text", "text": "What does the document say?"}]}])
        assert reply.content[0].text == "The document says: Hello from the PDF"
        sent = chat_posts(fake)[0]["body"]["messages"][0]["content"]
        assert sent[0] == {"type": "file", "file": {"filename": "hello.pdf",
                                                    "file_data": "data:application/pdf;base64," + data}}
        fake.reset()
        by_url = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": [
            _pdf_block({"type": "url", "url": "https://example.com/a.pdf"}), {"type": "text", "text": "Summary?"}]}])
        assert "https://example.com/a.pdf" in by_url.content[0].text
    with sdk(proxies("openai")) as client:
        reply = client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": [
            _pdf_block({"type": "base64", "media_type": "application/pdf", "data": data}),
            {"type": "text", "text": "What does the document say?"}]}])
        assert reply.content[0].text == "The document says: Hello from the PDF"


def test_pdf_to_an_upstream_without_pdf_input_is_a_clear_400(proxies, fake):
    data = base64.b64encode(PDF).decode()
    with sdk(proxies("deepseek")) as client:
        with pytest.raises(anthropic.BadRequestError) as err:
            client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": [
                {"type": "text", "text": "Read this."},
                _pdf_block({"type": "base64", "media_type": "application/pdf", "data": data})]}])
    message = err.value.body["error"]["message"]
    assert "messages.0.content.1" in message and "document" in message
    assert "127.0.0.1" in message and "deepseek" in message
    assert not chat_posts(fake)


SCHEMA = {"type": "object", "$schema": "http://json-schema.org/draft-07/schema#",
          "properties": {"city": {"type": "string", "format": "uri"}, "population": {"type": "integer"}},
          "required": ["city", "population"], "additionalProperties": False}


@pytest.mark.parametrize("where", ["output_format", "output_config"])
def test_structured_output(proxies, fake, where):
    spec = {"type": "json_schema", "schema": SCHEMA}
    extra = {"output_format": spec} if where == "output_format" else {"output_config": {"format": spec}}
    resp = raw_post(proxies("openai"), {"model": MODEL, "max_tokens": 64,
                                        "messages": [{"role": "user", "content": "Largest city?"}], **extra})
    assert resp.status_code == 200, resp.text
    answer = json.loads(resp.json()["content"][0]["text"])
    assert set(answer) == {"city", "population"} and isinstance(answer["population"], int)
    sent = chat_posts(fake)[0]["body"]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "output"
    schema = sent["json_schema"]["schema"]
    assert "$schema" not in schema and "format" not in schema["properties"]["city"]  # cleaned like tool schemas


def test_structured_output_on_json_mode_only_upstream(proxies, fake):
    resp = raw_post(proxies("deepseek"), {"model": MODEL, "max_tokens": 64, "output_format": {
        "type": "json_schema", "schema": SCHEMA}, "messages": [{"role": "user", "content": "Largest city?"}]})
    assert resp.status_code == 200, resp.text
    assert json.loads(resp.json()["content"][-1]["text"])
    sent = chat_posts(fake)[0]["body"]
    assert sent["response_format"] == {"type": "json_object"}
    assert "population" in sent["messages"][-1]["content"]  # the schema went into the prompt


def test_server_tool_is_refused_by_default(proxies, fake):
    with sdk(proxies("openai")) as client:
        with pytest.raises(anthropic.BadRequestError) as err:
            client.messages.create(model=MODEL, max_tokens=64, tools=[WEB_SEARCH, READ_TOOL],
                                   messages=[{"role": "user", "content": "news?"}])
    message = err.value.body["error"]["message"]
    assert "web_search" in message and "cannot run it" in message and "SERVER_TOOLS=drop" in message
    assert not chat_posts(fake)


def test_server_tool_dropped_with_server_tools_drop(proxies, fake):
    proxy = proxies("openai", SERVER_TOOLS="drop")
    with sdk(proxy) as client:
        reply = client.messages.create(model=MODEL, max_tokens=64, tools=[WEB_SEARCH, READ_TOOL],
                                       messages=[{"role": "user", "content": "hello"}])
        assert reply.content[0].text
        assert [t["function"]["name"] for t in chat_posts(fake)[0]["body"]["tools"]] == ["Read"]
        fake.reset()
        # Claude Code's WebSearch asks with the search tool alone: dropping it would come back empty
        with pytest.raises(anthropic.BadRequestError) as err:
            client.messages.create(model=MODEL, max_tokens=64, tools=[WEB_SEARCH],
                                   messages=[{"role": "user", "content": "Perform a web search for: news"}])
    assert "web_search" in err.value.body["error"]["message"] and "no results" in err.value.body["error"]["message"]
    assert not chat_posts(fake)


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
def test_web_search_uses_the_openrouter_web_plugin(proxies, fake, streamed):
    params = dict(model=MODEL, max_tokens=64, tools=[WEB_SEARCH],
                  messages=[{"role": "user", "content": "Perform a web search for: news"}])
    with sdk(proxies("openrouter")) as client:
        if streamed:
            with client.messages.stream(**params) as s:
                reply = s.get_final_message()
        else:
            reply = client.messages.create(**params)
    text = "".join(b.text for b in reply.content if b.type == "text")
    # the answer, then every source the search used (here one the answer text did not link)
    assert "https://example.com/result" in text and "- [Background](https://example.org/background)" in text
    sent = chat_posts(fake)[0]["body"]
    assert sent["plugins"] == [{"id": "web", "max_results": 5}] and "tools" not in sent


def test_every_process_recognises_the_thinking_signature(start_proxy, fake_upstream_server, fake, tmp_path):
    """Two proxy processes with one data dir (two servers of one host): thinking signed by the first is
    verified by the second, because the key is generated once and kept beside the usage database."""
    env = _env(fake_upstream_server, "deepseek", "deepseek-reasoner", USAGE_DB_PATH=str(tmp_path / "usage.sqlite3"))
    one, two = start_proxy(env), start_proxy(env, workers=2)
    with sdk(one) as first_client, sdk(two) as second_client:
        params = dict(model=MODEL, max_tokens=4096, tools=[READ_TOOL], thinking={"type": "enabled", "budget_tokens": 2048})
        history = [{"role": "user", "content": "What is the first word of /tmp/x.txt?"}]
        first = first_client.messages.create(messages=history, **params)
        call = next(b for b in first.content if b.type == "tool_use")
        history += [{"role": "assistant", "content": as_params(first.content)},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Fig"}]}]
        second = second_client.messages.create(messages=history, **params)
    assert "Fig" in second.content[-1].text
    assistant = next(m for m in chat_posts(fake)[1]["body"]["messages"] if m["role"] == "assistant")
    assert assistant["reasoning_content"] == THINKING_TEXT
    assert (tmp_path / "thinking-signing-key").stat().st_mode & 0o077 == 0
