"""Translation to the OpenAI Responses API end to end: the proxy as users run it (gunicorn + gevent), the fake
Responses API on 127.0.0.1 (tests/fakes/responses.py, as strict as the real one) and the official anthropic SDK."""
from __future__ import annotations

import json
import sqlite3
import time

import anthropic
import pytest
import requests

pytestmark = pytest.mark.timeout(120)

PROXY_KEY = "sk-proxy-upstream-key-responses"
MODEL = "claude-sonnet-4-5"
THINKING = {"type": "enabled", "budget_tokens": 10000}
READ_TOOL = {"name": "Read", "description": "Read a file",
             "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                              "required": ["file_path"]}}
FILES = {"/srv/a.txt": "alpha is first", "/srv/b.txt": "beta is second"}


def _env(fake, **extra) -> dict:
    env = {"PROXY_MODE": "translation", "ANTHROPIC_PROXY_BASE_URL": fake.url, "CLAUDE_CODE_PROXY_API_KEY": PROXY_KEY,
           "UPSTREAM_API": "responses", "REASONING_MODEL": "gpt-5", "COMPLETION_MODEL": "gpt-5-mini",
           "STREAM_PING_INTERVAL": "0.3", "UPSTREAM_MAX_RETRIES": "0", "UPSTREAM_READ_TIMEOUT": "20"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def proxy(start_proxy, fake_upstream_server):
    return start_proxy(_env(fake_upstream_server))


@pytest.fixture
def fake(fake_upstream):
    return fake_upstream


@pytest.fixture
def client(proxy):
    with anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0, timeout=30) as c:
        yield c


def posts(fake) -> list[dict]:
    return [r["body"] for r in fake.requests("/responses") if r["method"] == "POST"]


def issued_and_returned(fake) -> tuple[dict, list]:
    state = fake._control("GET", "responses")
    return state["issued"], state["returned"]


def run_tools(content) -> list[dict]:
    return [{"type": "tool_result", "tool_use_id": b.id, "content": FILES[b.input["file_path"]]}
            for b in content if b.type == "tool_use"]


# -- create, stream, tool loops ------------------------------------------------------------------------


def test_create_text(client, fake):
    message = client.messages.create(model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "Hi"}])
    # the model reasoned anyway: no summary was asked for, but its encrypted reasoning rides in the signature
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "" and message.content[0].signature
    assert message.content[1].text == "Hello from the fake Responses API."
    assert message.stop_reason == "end_turn" and message.model == MODEL
    (body,) = posts(fake)
    assert body["model"] == "gpt-5-mini" and body["store"] is False
    assert body["include"] == ["reasoning.encrypted_content"] and body["max_output_tokens"] == 256
    assert not fake.requests("/chat/completions")


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_tool_loop_carries_the_reasoning_item_back(client, fake, streamed):
    messages = [{"role": "user", "content": "Read /srv/a.txt and /srv/b.txt, then tell me their first words."}]

    deltas: list[set] = []

    def call():
        kwargs = dict(model=MODEL, max_tokens=4000, thinking=THINKING, tools=[READ_TOOL], messages=messages)
        if not streamed:
            return client.messages.create(**kwargs)
        with client.messages.stream(**kwargs) as stream:
            deltas.append({e.delta.type for e in stream if e.type == "content_block_delta"})
            return stream.get_final_message()

    first = call()
    if streamed:
        assert deltas[0] == {"thinking_delta", "signature_delta", "text_delta", "input_json_delta"}
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert first.stop_reason == "tool_use"
    assert "Planning the read" in first.content[0].thinking and first.content[0].signature
    assert [b.input for b in first.content[2:]] == [{"file_path": "/srv/a.txt"}, {"file_path": "/srv/b.txt"}]
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]})
    messages.append({"role": "user", "content": run_tools(first.content)})
    second = call()
    assert second.stop_reason == "end_turn"
    assert second.content[-1].text == "The first words of the files are alpha, beta."
    issued, returned = issued_and_returned(fake)
    assert len(issued) == 2 and returned == [next(iter(issued))]  # turn 2 carried turn 1's own reasoning item
    body = posts(fake)[1]
    assert body["reasoning"] == {"effort": "medium", "summary": "auto"}
    item = next(i for i in body["input"] if i["type"] == "reasoning")
    assert item["encrypted_content"] == issued[item["id"]]
    assert [i["type"] for i in body["input"]] == ["message", "reasoning", "message", "function_call", "function_call",
                                                  "function_call_output", "function_call_output"]


def test_thinking_from_elsewhere_is_dropped_not_forwarded(client, fake):
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "from Anthropic", "signature": "EqQBCkYIBRgCKkAnthropicSig=="},
                    {"type": "redacted_thinking", "data": "EmwKAhgBEgyRedacted"},
                    {"type": "text", "text": "Hello."}]},
                {"role": "user", "content": "Again"}]
    message = client.messages.create(model=MODEL, max_tokens=256, thinking=THINKING, messages=messages)
    assert message.stop_reason == "end_turn"
    raw = json.dumps(posts(fake)[0])
    assert "from Anthropic" not in raw and "AnthropicSig" not in raw and "Redacted" not in raw


def test_stream_event_sequence_on_the_wire(proxy, fake):
    body = {"model": MODEL, "max_tokens": 4000, "stream": True, "thinking": THINKING, "tools": [READ_TOOL],
            "messages": [{"role": "user", "content": "Read /srv/a.txt"}]}
    resp = requests.post(proxy.url + "/v1/messages", json=body, timeout=30,
                         headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    names, indices = [], []
    for block in resp.text.split("\n\n"):
        if not block.strip():
            continue
        name = block.split("\n", 1)[0][len("event: "):]
        data = json.loads(block.split("data: ", 1)[1])
        names.append(name)
        if name in ("content_block_start", "content_block_stop"):
            indices.append((name, data["index"]))
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert indices == [("content_block_start", 0), ("content_block_stop", 0), ("content_block_start", 1),
                       ("content_block_stop", 1), ("content_block_start", 2), ("content_block_stop", 2)]


# -- choosing the API ------------------------------------------------------------------------------------


def test_per_model_api_in_model_map_and_health(start_proxy, fake_upstream_server, fake):
    model_map = {"claude-*haiku*": "gpt-4.1-mini", "claude-opus-*": {"model": "gpt-5", "api": "responses"}}
    mixed = start_proxy(_env(fake_upstream_server, UPSTREAM_API="chat", MODEL_MAP=json.dumps(model_map)))
    health = requests.get(mixed.url + "/", timeout=5).json()
    assert health["models"]["map"] == {"claude-*haiku*": "gpt-4.1-mini", "claude-opus-*": "gpt-5"}
    assert health["models"]["api"] == {"reasoning": "chat", "completion": "chat",
                                       "map": {"claude-*haiku*": "chat", "claude-opus-*": "responses"}}
    with anthropic.Anthropic(base_url=mixed.url, api_key="k", max_retries=0) as c:
        opus = c.messages.create(model="claude-opus-4-1", max_tokens=64, messages=[{"role": "user", "content": "Hi"}])
        haiku = c.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "Hi"}])
    assert opus.content[-1].text == "Hello from the fake Responses API."
    assert haiku.content[-1].text == "Hello from the fake upstream."
    assert [r["model"] for r in fake.requests("/responses")] == ["gpt-5"]
    assert [r["model"] for r in fake.requests("/chat/completions")] == ["gpt-4.1-mini"]


# -- errors ----------------------------------------------------------------------------------------------

ERROR_CASES = [
    (400, anthropic.BadRequestError, "invalid_request_error"),
    (401, anthropic.AuthenticationError, "authentication_error"),
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (500, anthropic.InternalServerError, "api_error"),
]


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("status, exc_class, error_type", ERROR_CASES, ids=[str(c[0]) for c in ERROR_CASES])
def test_upstream_error_before_stream_keeps_status_and_message(client, fake, status, exc_class, error_type,
                                                               streamed):
    message = f"Responses says no ({status})"
    fake.script("/responses", [{"status": status, "headers": {"retry-after": "3"}, "json": {"error": {
        "message": message, "type": "invalid_request_error", "param": None, "code": None}}}])
    with pytest.raises(exc_class) as info:
        if streamed:
            with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}]) as s:
                s.until_done()
        else:
            client.messages.create(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == error_type
    # the upstream's own words, said to be the upstream's (its host named), not the proxy's
    assert body["error"]["message"].startswith("upstream 127.0.0.1:") and body["error"]["message"].endswith(message)
    if status == 429:
        assert info.value.response.headers.get("retry-after") == "3"


def test_a_forged_signature_never_reaches_the_upstream(client, fake):
    """A reasoning item the upstream did not issue would be refused (the fake checks, as the real API does):
    a signature the proxy cannot verify is dropped first, so the turn still works."""
    first = client.messages.create(model=MODEL, max_tokens=64, thinking=THINKING,
                                   messages=[{"role": "user", "content": "hi"}])
    forged = dict(first.content[0].model_dump(), signature=first.content[0].signature[:-8] + "AAAAAAA=")
    message = client.messages.create(model=MODEL, max_tokens=64, thinking=THINKING, messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": [forged, {"type": "text", "text": "o"}]},
        {"role": "user", "content": "again"}])
    assert message.stop_reason == "end_turn"
    assert not any(i["type"] == "reasoning" for i in posts(fake)[1]["input"])


def _created(response_id="resp_e2e"):
    return {"event": "response.created", "data": {"type": "response.created", "sequence_number": 0,
                                                  "response": {"id": response_id, "status": "in_progress"}}}


def _text(delta: str, n: int):
    return {"event": "response.output_text.delta", "data": {
        "type": "response.output_text.delta", "sequence_number": n, "output_index": 0, "item_id": "msg_1",
        "content_index": 0, "delta": delta}}


ADDED = {"event": "response.output_item.added", "data": {
    "type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
    "item": {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []}}}


@pytest.mark.parametrize("fault", ["failed", "error", "incomplete_other", "drop", "garbage"])
def test_failure_during_a_stream_ends_it_with_an_error_event(client, fake, fault):
    head = [_created(), ADDED, _text("Partial ", 2), _text("answer", 3)]
    tails = {
        "failed": {"sse": head + [{"event": "response.failed", "data": {"type": "response.failed", "response": {
            "id": "resp_e2e", "status": "failed", "error": {"code": "server_error", "message": "model fell over"}}}}]},
        "error": {"sse": head + [{"event": "error", "data": {"type": "error", "code": "rate_limit_exceeded",
                                                             "message": "too many tokens", "param": None}}]},
        "incomplete_other": {"sse": head, "drop_after": len(head)},
        "drop": {"sse": head + [_text("more", 4)], "drop_after": 3},
        "garbage": {"sse": head + ["event: response.output_text.delta\ndata: {not json\n\n"]},
    }
    fake.script("/responses", [tails[fault]])
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}]) as s:
            for _ in s:
                pass
    if fault == "failed":
        assert "model fell over" in str(info.value) and info.value.body["error"]["type"] == "api_error"
    if fault == "error":
        assert "too many tokens" in str(info.value) and info.value.body["error"]["type"] == "rate_limit_error"


def test_incomplete_stream_for_max_output_tokens_is_max_tokens(client, fake):
    fake.script("/responses", [{"sse": [_created(), ADDED, _text("cut", 2), {
        "event": "response.incomplete", "data": {"type": "response.incomplete", "response": {
            "id": "resp_e2e", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
            "usage": {"input_tokens": 40, "output_tokens": 16, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 12}}}}}]}])
    with client.messages.stream(model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "x"}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "max_tokens" and final.content[0].text == "cut"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 16)


# -- accounting --------------------------------------------------------------------------------------------


def test_accounting_with_cached_and_reasoning_tokens(proxy, fake):
    host = "acct-responses.example.com"
    user_id = json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": "sess-responses-e2e-0001"})
    long_prompt = "Please keep this context in mind. " * 400  # > 1024 tokens: the upstream caches the prefix
    messages = [{"role": "user", "content": long_prompt + "First question."}]
    seen = []
    with anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0, default_headers={"Host": host}) as c:
        first = c.messages.create(model=MODEL, max_tokens=256, metadata={"user_id": user_id}, messages=messages)
        seen.append(first.usage)
        messages += [{"role": "assistant", "content": first.content[-1].text},
                     {"role": "user", "content": "Second question."}]
        with c.messages.stream(model=MODEL, max_tokens=256, metadata={"user_id": user_id}, messages=messages) as s:
            seen.append(s.get_final_message().usage)
    bodies = posts(fake)
    assert {b["prompt_cache_key"] for b in bodies} == {"sess-responses-e2e-0001"}
    assert seen[0].cache_read_input_tokens == 0 and seen[1].cache_read_input_tokens >= 1024
    raw_sizes = [len(json.dumps(b, separators=(",", ":"))) // 4 for b in bodies]
    # input excludes the cached tokens; output includes the model's reasoning tokens
    assert seen[1].input_tokens + seen[1].cache_read_input_tokens == pytest.approx(raw_sizes[1], abs=8)
    assert all(u.output_tokens > 64 for u in seen)

    def stats():
        got = requests.get(proxy.url + "/token-stats", timeout=5).json()["stats"].get(host)
        return got if got and got["requestCount"] >= 2 else None

    deadline = time.monotonic() + 10
    while not stats() and time.monotonic() < deadline:
        time.sleep(0.05)
    got = stats()
    assert got and got["inputTokens"] == sum(u.input_tokens for u in seen)
    assert got["outputTokens"] == sum(u.output_tokens for u in seen)
    with sqlite3.connect(proxy.env["USAGE_DB_PATH"]) as db:
        rows = db.execute("SELECT cache_read_input_tokens, output_tokens FROM nexus_requests WHERE domain = ?"
                          " ORDER BY id", (host,)).fetchall()
    assert rows == [(u.cache_read_input_tokens, u.output_tokens) for u in seen]
