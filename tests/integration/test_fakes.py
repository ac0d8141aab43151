"""The fake upstream does what the e2e tests and the benchmark rely on."""
from __future__ import annotations

import http.client
import json
import zlib
from pathlib import Path

import anthropic
import pytest
import requests

from tests.fakes import upstream
from tests.fakes.server import REPO_ROOT, FakeUpstream, ProxyServer

READ_TOOL = {"name": "Read", "description": "Read a file",
             "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                              "required": ["file_path"]}}
OPENAI_READ_TOOL = {"type": "function", "function": {"name": "Read", "parameters": READ_TOOL["input_schema"]}}


def _fixture_dir() -> Path:
    return REPO_ROOT / "tests" / "fixtures" / "claude-code-2.1.197"


def _sse_events(raw: bytes) -> list[str]:
    return [e for e in raw.decode().split("\n\n") if e.strip()]


def _openai_stream(fake: FakeUpstream, body: dict) -> list[dict]:
    resp = requests.post(fake.url + "/chat/completions", json=dict(body, stream=True), timeout=10)
    assert resp.status_code == 200
    chunks = []
    for event in _sse_events(resp.content):
        data = event.removeprefix("data: ")
        if data != "[DONE]":
            chunks.append(json.loads(data))
    assert resp.content.rstrip().endswith(b"data: [DONE]")
    return chunks


# -- scripted model: pure planning on the real Claude Code bodies -----------------------------------


def test_plan_on_claude_code_fixtures_calls_read_then_quotes_first_word() -> None:
    fixtures = _fixture_dir()
    turn1 = json.loads((fixtures / "messages-turn1.json").read_text())
    turn2 = json.loads((fixtures / "messages-turn2.json").read_text())
    assert upstream.plan_anthropic(turn1) == {"kind": "tool", "path": "/home/dev/project/hello.txt",
                                              "thinking": True}
    assert upstream.plan_anthropic(turn2) == {"kind": "text",
                                              "text": "The first word of the file is tok9fbba380."}


def test_plan_ignores_closing_tags_and_strips_sentence_punctuation() -> None:
    req = {"tools": [READ_TOOL], "messages": [{"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
        {"type": "text", "text": "What is in /srv/data/notes.md?"}]}]}
    assert upstream.plan_anthropic(req)["path"] == "/srv/data/notes.md"
    # No Read tool offered (e.g. Claude Code's title generation): plain text
    assert upstream.plan_anthropic(dict(req, tools=[]))["kind"] == "text"


# -- Anthropic side, through the real SDK -----------------------------------------------------------


def test_anthropic_sdk_streams_thinking_text_and_read_call_then_answer(fake_upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=fake_upstream.url, api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "Read the file /tmp/proj/hello.txt and tell me its first word."}]
    with client.messages.stream(model="claude-opus-4-8", max_tokens=1000, tools=[READ_TOOL], messages=messages,
                                thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        first = stream.get_final_message()
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.stop_reason == "tool_use"
    tool_use = first.content[2]
    assert tool_use.name == "Read" and tool_use.input == {"file_path": "/tmp/proj/hello.txt"}
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

    messages += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                               "content": "1\ttokABC123 is the first word.\n2\tmore"}]}]
    with client.messages.stream(model="claude-opus-4-8", max_tokens=1000, tools=[READ_TOOL],
                                messages=messages) as stream:
        text = "".join(stream.text_stream)
        second = stream.get_final_message()
    assert text == "The first word of the file is tokABC123."
    assert second.stop_reason == "end_turn"

    logged = fake_upstream.requests("/v1/messages")
    assert len(logged) == 2
    assert logged[0]["model"] == "claude-opus-4-8"
    headers = logged[0]["headers"]  # recent SDKs send the key as a bearer token
    assert headers.get("x-api-key") == "x" or headers.get("authorization") == "Bearer x"
    assert logged[1]["body"]["messages"][-1]["content"][0]["type"] == "tool_result"


def test_anthropic_json_count_tokens_and_models(fake_upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=fake_upstream.url, api_key="x", max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    message = raw.parse()
    assert message.content[0].text == upstream.HELLO_TEXT
    assert raw.headers["request-id"].startswith("req_")
    assert "anthropic-ratelimit-requests-remaining" in raw.headers
    count = client.messages.count_tokens(model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens > 0
    assert [m.id for m in client.models.list()] == upstream.MODELS


# -- OpenAI side ------------------------------------------------------------------------------------


def test_openai_stream_read_call_in_fragments_then_answer(fake_upstream: FakeUpstream) -> None:
    body = {"model": "gpt-x", "tools": [OPENAI_READ_TOOL], "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "Please read /data/in.txt"}]}
    chunks = _openai_stream(fake_upstream, body)
    fragments = [c["choices"][0]["delta"]["tool_calls"][0]["function"].get("arguments", "")
                 for c in chunks if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert len([f for f in fragments if f]) >= 4
    assert json.loads("".join(fragments)) == {"file_path": "/data/in.txt"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] > 0

    call_id = next(c["choices"][0]["delta"]["tool_calls"][0]["id"] for c in chunks
                   if c["choices"] and "tool_calls" in c["choices"][0]["delta"])
    body["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "Read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "1\tzebra42 starts here"}]
    chunks = _openai_stream(fake_upstream, body)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "The first word of the file is zebra42."


def test_openai_json_has_usage_and_no_usage_chunk_unless_asked(fake_upstream: FakeUpstream) -> None:
    resp = requests.post(fake_upstream.url + "/v1/chat/completions", timeout=10,
                         json={"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]})
    data = resp.json()
    assert data["choices"][0]["message"]["content"] == upstream.HELLO_TEXT
    assert data["usage"]["completion_tokens"] > 0
    chunks = _openai_stream(fake_upstream, {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]})
    assert all("usage" not in c for c in chunks)
    assert fake_upstream.requests("/chat/completions")[0]["path"] == "/v1/chat/completions"


# -- scripted responses and faults ------------------------------------------------------------------


def test_script_fifo_then_back_to_the_model(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("/v1/messages", [
        {"status": 429, "headers": {"retry-after": "1"},
         "json": {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}},
        {"status": 529},
    ])
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    first = requests.post(fake_upstream.url + "/v1/messages", json=body, timeout=10)
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    assert first.json()["error"]["message"] == "slow down"
    second = requests.post(fake_upstream.url + "/v1/messages", json=body, timeout=10)
    assert second.status_code == 529 and second.json()["error"]["type"] == "overloaded_error"
    third = requests.post(fake_upstream.url + "/v1/messages", json=body, timeout=10)
    assert third.status_code == 200 and third.json()["content"][0]["text"] == upstream.HELLO_TEXT


def test_drop_after_closes_mid_stream(fake_upstream: FakeUpstream) -> None:
    events = [{"event": "ping", "data": {"type": "ping"}} for _ in range(5)]
    fake_upstream.script("/v1/messages", [{"sse": events, "drop_after": 2}])
    resp = requests.post(fake_upstream.url + "/v1/messages", json={"stream": True}, stream=True, timeout=10)
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for part in resp.iter_content(None):
            received += part
    assert received == b"event: ping\ndata: {\"type\":\"ping\"}\n\n" * 2


def test_stop_mid_event_no_done_and_garbage(fake_upstream: FakeUpstream) -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "hello"}, "finish_reason": None}]}
    fake_upstream.script("/chat/completions", [
        {"sse": [chunk, chunk, chunk], "stop_mid_event": True},
        {"sse": [chunk], "no_done": True, "garbage": True},
    ])
    resp = requests.post(fake_upstream.url + "/chat/completions", json={"stream": True}, stream=True, timeout=10)
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for part in resp.iter_content(None):
            received += part
    whole = upstream.sse_data(chunk)
    assert received.startswith(whole * 2) and len(received) < len(whole) * 3
    assert not received.endswith(b"\n\n")

    raw = requests.post(fake_upstream.url + "/chat/completions", json={"stream": True}, timeout=10).content
    assert b"[DONE]" not in raw and b"GARBAGE" in raw and whole in raw


def test_hang_is_released_by_reset(fake_upstream: FakeUpstream) -> None:
    fake_upstream.script("/v1/messages", [{"hang": True}])
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(fake_upstream.url + "/v1/messages", json={}, timeout=(5, 0.5))
    fake_upstream.reset()
    resp = requests.post(fake_upstream.url + "/v1/messages", json={"messages": []}, timeout=10)
    assert resp.status_code == 200


# -- OAuth and auth ---------------------------------------------------------------------------------


def test_oauth_rotation_and_access_token_check(fake_upstream: FakeUpstream) -> None:
    fake_upstream.oauth(refresh_token="rt-initial", valid_tokens=["sk-ant-api03-good"])
    token_url = fake_upstream.url + "/v1/oauth/token"
    grant = {"grant_type": "refresh_token", "refresh_token": "rt-initial", "client_id": "cid"}
    first = requests.post(token_url, json=grant, timeout=10).json()
    assert first["access_token"] == "sk-ant-oat01-fake-1" and first["expires_in"] == 3600
    assert first["refresh_token"] != "rt-initial"
    reused = requests.post(token_url, json=grant, timeout=10)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    second = requests.post(token_url, timeout=10,
                           data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}).json()
    assert second["access_token"] == "sk-ant-oat01-fake-2"
    assert fake_upstream.oauth_calls() == 3
    assert fake_upstream.oauth_state()["refresh_token"] == second["refresh_token"]

    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    url = fake_upstream.url + "/v1/messages"
    denied = requests.post(url, json=body, headers={"x-api-key": "sk-ant-api03-bad"}, timeout=10)
    assert denied.status_code == 401
    assert denied.json() == {"type": "error", "error": {"type": "authentication_error",
                                                        "message": "invalid x-api-key"}}
    assert requests.post(url, json=body, headers={"x-api-key": "sk-ant-api03-good"}, timeout=10).ok
    bearer = {"authorization": "Bearer " + second["access_token"]}
    assert requests.post(url, json=body, headers=bearer, timeout=10).ok


# -- compression ------------------------------------------------------------------------------------


def test_compressed_sse_is_flushed_per_event(fake_upstream: FakeUpstream) -> None:
    fake_upstream.compress(True)
    fake_upstream.script("/v1/messages", [{"gap_ms": 300}])  # the scripted model, paced
    conn = http.client.HTTPConnection("127.0.0.1", fake_upstream.port, timeout=10)
    conn.request("POST", "/v1/messages", body=json.dumps({"stream": True, "messages": []}),
                 headers={"accept-encoding": "gzip, deflate, br, zstd", "content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.getheader("content-encoding") == "gzip"
    inflate = zlib.decompressobj(31)
    first = inflate.decompress(resp.read1(65536))  # one HTTP chunk: the first event, alone
    assert first.startswith(b"event: message_start\n") and first.endswith(b"\n\n")
    rest = inflate.decompress(resp.read()) + inflate.flush()
    assert b"event: message_stop" in rest
    conn.close()

    plain = requests.post(fake_upstream.url + "/v1/messages", json={"messages": []}, timeout=10,
                          headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.json()["type"] == "message"
    gz = requests.post(fake_upstream.url + "/v1/messages", json={"messages": []}, timeout=10,
                       headers={"accept-encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip" and gz.json()["type"] == "message"


# -- benchmark prefix -------------------------------------------------------------------------------


def test_bench_prefix_streams_configured_chunks_without_logging(fake_upstream: FakeUpstream) -> None:
    url = fake_upstream.url + "/bench/7/0/0"
    raw = requests.post(url + "/v1/messages", json={"stream": True, "x": "y" * 400}, timeout=10).content
    events = _sse_events(raw)
    assert sum("content_block_delta" in e for e in events) == 7
    start = json.loads(events[0].split("data: ", 1)[1])
    assert start["message"]["usage"]["input_tokens"] > 100
    resp = requests.post(url + "/chat/completions", timeout=10,
                         json={"stream": True, "stream_options": {"include_usage": True}})
    datas = _sse_events(resp.content)
    assert sum('"content":"zq' in e for e in datas) == 7 and datas[-1] == "data: [DONE]"
    assert '"usage"' in datas[-2]
    js = requests.post(url + "/v1/messages", json={"stream": False}, timeout=10).json()
    assert js["content"][0]["text"].count("zq") == 7
    assert fake_upstream.requests() == [] and fake_upstream.stats()["bench_requests"] == 3


# -- the proxy as a process -------------------------------------------------------------------------


def test_proxy_server_runs_the_proxy_against_the_fake(fake_upstream: FakeUpstream) -> None:
    if not (REPO_ROOT / "config" / "gunicorn.conf.py").is_file():
        pytest.skip("config/gunicorn.conf.py not present yet")
    env = {"PROXY_MODE": "translation", "ANTHROPIC_PROXY_BASE_URL": fake_upstream.url,
           "CLAUDE_CODE_PROXY_API_KEY": "test-key"}
    with ProxyServer(env) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)
        message = client.messages.create(model="claude-haiku-4-5", max_tokens=50,
                                         messages=[{"role": "user", "content": "hi"}])
        client.close()  # an idle keep-alive connection would hold up the graceful shutdown
        assert message.content[0].text == upstream.HELLO_TEXT
        assert fake_upstream.requests("/chat/completions")[0]["headers"]["authorization"] == "Bearer test-key"
        assert proxy.terminate() == 0
    assert "listening" in proxy.output()


def test_proxy_server_start_failure_carries_the_proxy_output() -> None:
    if not (REPO_ROOT / "config" / "gunicorn.conf.py").is_file():
        pytest.skip("config/gunicorn.conf.py not present yet")
    with pytest.raises(RuntimeError, match="PORT"):
        ProxyServer({"PORT": "0"}, timeout=10).start()
