"""Translation mode end to end: gunicorn + gevent proxy, a fake OpenAI-compatible upstream on 127.0.0.1,
and the official `anthropic` SDK as the client (raw HTTP where the wire itself is the point)."""
from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import anthropic
import pytest
import requests

from tests.fakes.server import free_port
from tests.e2e.conftest import hang_up_mid_stream

pytestmark = pytest.mark.timeout(120)

PROXY_KEY = "sk-proxy-upstream-key-e2e"
CLIENT_KEY = "sk-client-own-key-e2e"
REASONING = "fake/reasoner"
COMPLETION = "fake/completer"
MINI = "fake/mini"
MODEL = "claude-sonnet-4-5"

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a place",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "source": {"type": "object", "properties": {"url": {"type": "string", "format": "uri"}}},
            "days": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["location"],
    },
}
TIME_TOOL = {"name": "get_time", "description": "Local time",
             "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}}}
READ_TOOL = {"name": "Read", "description": "Read a file",
             "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                              "required": ["file_path"]}}


def _env(fake, **extra) -> dict:
    env = {
        "PROXY_MODE": "translation",
        "ANTHROPIC_PROXY_BASE_URL": fake.url,
        "REASONING_MODEL": REASONING,
        "COMPLETION_MODEL": COMPLETION,
        "REASONING_MAX_TOKENS": "32000",
        "COMPLETION_MAX_TOKENS": "4096",
        "MODEL_MAP": json.dumps({"claude-*haiku*": MINI}),
        "STREAM_PING_INTERVAL": "0.3",
        "UPSTREAM_MAX_RETRIES": "0",  # an error answer is relayed at once (retries are issue 7's suite)
        "UPSTREAM_READ_TIMEOUT": "20",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def proxy(start_proxy, fake_upstream_server):
    return start_proxy(_env(fake_upstream_server, CLAUDE_CODE_PROXY_API_KEY=PROXY_KEY))


@pytest.fixture(scope="module")
def keyless_proxy(start_proxy, fake_upstream_server):
    """No CLAUDE_CODE_PROXY_API_KEY: each client's own key goes upstream."""
    return start_proxy(_env(fake_upstream_server))


@pytest.fixture
def fake(fake_upstream):
    return fake_upstream


@pytest.fixture
def client(proxy):
    with anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_KEY, max_retries=0, timeout=30) as c:
        yield c


# -- OpenAI-side builders -----------------------------------------------------------------------------


def completion(message: dict, finish: str = "stop", usage: dict | None = None, model: str = COMPLETION) -> dict:
    return {"id": "chatcmpl-e2e", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "message": dict({"role": "assistant"}, **message), "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}


def chunk(delta: dict | None = None, finish: str | None = None) -> dict:
    return {"id": "chatcmpl-e2e", "object": "chat.completion.chunk", "created": 1700000000, "model": COMPLETION,
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def usage_chunk(prompt: int, completion_tokens: int, cached: int | None = None) -> dict:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
             "total_tokens": prompt + completion_tokens}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"id": "chatcmpl-e2e", "object": "chat.completion.chunk", "created": 1700000000, "model": COMPLETION,
            "choices": [], "usage": usage}


def tool_chunks(index: int, call_id: str, name: str, args: str, size: int) -> list[dict]:
    """One tool call: a header chunk, then the arguments in `size`-character fragments."""
    out = [chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": ""}}]})]
    for i in range(0, len(args), size):
        out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": args[i:i + size]}}]}))
    return out


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def wait_until(predicate, timeout: float = 10.0):
    """Poll until `predicate()` is truthy; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.05)


def upstream_bodies(fake) -> list[dict]:
    return [r["body"] for r in fake.requests("/chat/completions")]


def raw_post(proxy, body: dict, headers: dict | None = None, stream: bool = False, timeout: float = 30):
    h = {"content-type": "application/json", "x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    h.update(headers or {})
    return requests.post(proxy.url + "/v1/messages", data=json.dumps(body), headers=h, stream=stream,
                         timeout=timeout)


def sse_events(raw: bytes) -> list[tuple[str, dict | None]]:
    """(event name, parsed data) for every event of a raw SSE body."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
        out.append((name, data))
    return out


# -- messages.create ----------------------------------------------------------------------------------


def test_create_text(client, fake):
    fake.script("/chat/completions", [{"json": completion(
        {"content": "Hi there, friend."}, usage={"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22})}])
    msg = client.messages.create(model=MODEL, max_tokens=64, messages=user("Say hi"))
    assert msg.id.startswith("msg_")
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == MODEL
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Hi there, friend."
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (17, 5)


def test_create_tool_use_with_thinking_from_reasoning_content(client, fake):
    fake.script("/chat/completions", [{"json": completion({
        "content": "Let me check.",
        "reasoning_content": "The user wants the weather; call the tool.",
        "tool_calls": [{"id": "call_w1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris", "days": [1, 2]}'}}],
    }, finish="tool_calls")}])
    msg = client.messages.create(model=MODEL, max_tokens=256, tools=[WEATHER_TOOL],
                                 messages=user("Weather in Paris?"))
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]
    assert msg.content[0].thinking == "The user wants the weather; call the tool."
    assert msg.content[1].text == "Let me check."
    tool = msg.content[2]
    assert (tool.id, tool.name, tool.input) == ("call_w1", "get_weather", {"location": "Paris", "days": [1, 2]})
    assert msg.stop_reason == "tool_use"


def test_create_stop_sequence_and_max_tokens(client, fake):
    fake.script("/chat/completions", [
        {"json": completion({"content": "one two"}, finish="stop")},
        {"json": completion({"content": "cut"}, finish="length")},
    ])
    # A "stop" finish with stop sequences asked: which one matched is not known from OpenAI, so either is fine.
    msg = client.messages.create(model=MODEL, max_tokens=64, stop_sequences=["END"], messages=user("count"))
    assert msg.stop_reason in ("end_turn", "stop_sequence")
    assert msg.content[0].text == "one two"
    msg = client.messages.create(model=MODEL, max_tokens=1, messages=user("count"))
    assert msg.stop_reason == "max_tokens"


# -- messages.stream ----------------------------------------------------------------------------------


def test_stream_tool_arguments_split_across_many_chunks(client, fake):
    args = json.dumps({"location": "San Francisco, CA", "unit": "celsius", "days": [1, 2, 3]})
    chunks = ([chunk({"role": "assistant", "content": ""}), chunk({"content": "I'll "}), chunk({"content": "check."})]
              + tool_chunks(0, "call_sf", "get_weather", args, 3)
              + [chunk(finish="tool_calls"), usage_chunk(321, 45, cached=20)])
    fake.script("/chat/completions", [{"sse": chunks}])
    deltas = []
    with client.messages.stream(model=MODEL, max_tokens=512, tools=[WEATHER_TOOL],
                                messages=user("Weather in SF?")) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                deltas.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert "".join(deltas) == args
    assert len([d for d in deltas if d]) >= len(args) // 3  # relayed fragment by fragment, not in one piece
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text == "I'll check."
    tool = final.content[1]
    assert (tool.id, tool.name) == ("call_sf", "get_weather")
    assert tool.input == json.loads(args)
    assert final.stop_reason == "tool_use"
    # the upstream's usage chunk: Anthropic input_tokens exclude the cached prompt tokens
    assert final.usage.input_tokens == 301
    assert final.usage.cache_read_input_tokens == 20
    assert final.usage.output_tokens == 45


@pytest.mark.parametrize("interleaved", [False, True], ids=["sequential", "interleaved"])
def test_stream_two_parallel_tool_calls(client, fake, interleaved):
    a = json.dumps({"location": "Oslo"})
    b = json.dumps({"tz": "Europe/Oslo"})
    first = tool_chunks(0, "call_a", "get_weather", a, 4)
    second = tool_chunks(1, "call_b", "get_time", b, 4)
    if interleaved:
        calls = []
        for i in range(max(len(first), len(second))):
            calls += first[i:i + 1] + second[i:i + 1]
    else:
        calls = first + second
    fake.script("/chat/completions", [{"sse": [chunk({"role": "assistant"})] + calls
                                       + [chunk(finish="tool_calls"), usage_chunk(40, 12)]}])
    with client.messages.stream(model=MODEL, max_tokens=512, tools=[WEATHER_TOOL, TIME_TOOL],
                                messages=user("Weather and time in Oslo?")) as stream:
        final = stream.get_final_message()
    assert [(c.type, c.id, c.name, c.input) for c in final.content] == [
        ("tool_use", "call_a", "get_weather", {"location": "Oslo"}),
        ("tool_use", "call_b", "get_time", {"tz": "Europe/Oslo"}),
    ]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 12)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_stream_reasoning_content_becomes_thinking(client, fake, field):
    fake.script("/chat/completions", [{"sse": [
        chunk({"role": "assistant"}),
        chunk({field: "First, "}), chunk({field: "think."}),
        chunk({"content": "The answer "}), chunk({"content": "is 4."}),
        chunk(finish="stop"), usage_chunk(30, 9),
    ]}])
    with client.messages.stream(model=MODEL, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
                                messages=user("2+2?")) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "First, think."
    assert final.content[1].text == "The answer is 4."
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 9)
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"


def test_stream_event_sequence_on_the_wire(proxy, fake):
    """Blocks open and close in order with increasing indices; message_delta carries the final usage."""
    fake.script("/chat/completions", [{"sse": [
        chunk({"role": "assistant"}), chunk({"reasoning_content": "hmm"}), chunk({"content": "Hi"}),
        *tool_chunks(0, "call_x", "get_time", '{"tz": "UTC"}', 5), chunk(finish="tool_calls"), usage_chunk(8, 6),
    ]}])
    resp = raw_post(proxy, {"model": MODEL, "max_tokens": 100, "stream": True, "tools": [TIME_TOOL],
                            "messages": user("time?")})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.content)
    names = [n for n, _ in events if n != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    open_index, seen = None, []
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None
            open_index = data["index"]
            seen.append((open_index, data["content_block"]["type"]))
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert seen == [(0, "thinking"), (1, "text"), (2, "tool_use")]
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] == 6


# -- a tool-use loop through the scripted model --------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
def test_tool_use_loop(client, fake, streamed):
    """create -> tool_use -> tool_result -> create: the call id and the result travel both ways."""
    messages = user("What is the first word of /srv/e2e/notes.txt?")

    def ask():
        if streamed:
            with client.messages.stream(model=MODEL, max_tokens=512, tools=[READ_TOOL], messages=messages) as s:
                return s.get_final_message()
        return client.messages.create(model=MODEL, max_tokens=512, tools=[READ_TOOL], messages=messages)

    first = ask()
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "Read" and call.input == {"file_path": "/srv/e2e/notes.txt"}
    messages = messages + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "PELICAN-42 is the first word here"}]},
    ]
    second = ask()
    assert second.stop_reason == "end_turn"
    assert "PELICAN-42" in second.content[0].text
    # what the upstream received on the second turn: the call and its result, linked by the same id
    sent = upstream_bodies(fake)[1]["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")
    tool_msg = next(m for m in sent if m["role"] == "tool")
    assert assistant["tool_calls"][0]["id"] == call.id == tool_msg["tool_call_id"]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"file_path": "/srv/e2e/notes.txt"}
    assert "PELICAN-42" in json.dumps(tool_msg["content"])
    assert sent.index(tool_msg) == sent.index(assistant) + 1


# -- what the upstream receives -----------------------------------------------------------------------


def test_upstream_request_shape_and_key(client, fake):
    fake.script("/chat/completions", [{"json": completion({"content": "ok"})}])
    client.messages.create(
        model=MODEL, max_tokens=100000, stop_sequences=["END", "STOP"],
        extra_body={"temperature": 0.2, "top_k": 5},  # this SDK version has no keyword for them
        system=[{"type": "text", "text": "You are terse."},
                {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}}],
        tools=[WEATHER_TOOL], tool_choice={"type": "tool", "name": "get_weather"},
        messages=user("Weather in Lyon?"))
    [req] = fake.requests("/chat/completions")
    body, headers = req["body"], req["headers"]
    assert req["method"] == "POST"
    assert headers["authorization"] == "Bearer " + PROXY_KEY
    assert "x-api-key" not in headers
    assert CLIENT_KEY not in json.dumps(headers)
    assert body["model"] == COMPLETION
    assert body["max_tokens"] == 4096  # capped by COMPLETION_MAX_TOKENS
    system = body["messages"][0]
    assert system["role"] == "system"
    assert "You are terse." in json.dumps(system) and "Answer in French." in json.dumps(system)
    assert body["messages"][-1] == {"role": "user", "content": "Weather in Lyon?"}
    assert "cache_control" not in json.dumps(body)
    assert body["stop"] == ["END", "STOP"]
    assert body["temperature"] == 0.2
    assert "top_k" not in body
    assert body.get("stream") in (None, False) and "stream_options" not in body
    [tool] = body["tools"]
    assert tool["type"] == "function"
    assert tool["function"]["name"] == "get_weather"
    assert tool["function"]["description"] == "Current weather for a place"
    params = tool["function"]["parameters"]
    assert params["properties"]["location"] == {"type": "string"}
    assert "format" not in json.dumps(params)  # format: uri is rejected by OpenAI-compatible upstreams
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_upstream_stream_request_keeps_small_max_tokens(client, fake):
    fake.script("/chat/completions", [{"sse": [chunk({"content": "ok"}), chunk(finish="stop"), usage_chunk(3, 1)]}])
    with client.messages.stream(model=MODEL, max_tokens=200, tools=[WEATHER_TOOL],
                                tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                messages=user("hi")) as stream:
        stream.until_done()
    [body] = upstream_bodies(fake)
    assert body["max_tokens"] == 200  # under the cap: kept, not inflated to it
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["tool_choice"] == "required"
    assert body["parallel_tool_calls"] is False


@pytest.mark.parametrize("model, thinking, max_tokens, expected_model, expected_max", [
    (MODEL, None, 50000, COMPLETION, 4096),
    (MODEL, {"type": "disabled"}, 1000, COMPLETION, 1000),
    (MODEL, {"type": "enabled", "budget_tokens": 2000}, 50000, REASONING, 32000),
    (MODEL, {"type": "adaptive"}, 8000, REASONING, 8000),
    ("claude-haiku-4-5-20251001", None, 500, MINI, 500),
    ("claude-haiku-4-5", {"type": "enabled", "budget_tokens": 1024}, 2048, MINI, 2048),  # MODEL_MAP first
], ids=["plain", "disabled", "enabled", "adaptive", "haiku-map", "haiku-map-beats-thinking"])
def test_model_routing(client, fake, model, thinking, max_tokens, expected_model, expected_max):
    fake.script("/chat/completions", [{"json": completion({"content": "routed"})}])
    extra = {"thinking": thinking} if thinking else {}
    msg = client.messages.create(model=model, max_tokens=max_tokens, messages=user("route me"), **extra)
    assert msg.model == model  # the client sees the model it asked for
    [body] = upstream_bodies(fake)
    assert body["model"] == expected_model
    assert body["max_tokens"] == expected_max


def test_client_key_goes_upstream_when_no_proxy_key(keyless_proxy, fake):
    """Multi-subscription: without CLAUDE_CODE_PROXY_API_KEY each client's own token is the bearer."""
    for kwargs, token in [({"api_key": "gh-user-one-token"}, "gh-user-one-token"),
                          ({"auth_token": "or-user-two-token"}, "or-user-two-token")]:
        with anthropic.Anthropic(base_url=keyless_proxy.url, max_retries=0, **kwargs) as c:
            msg = c.messages.create(model=MODEL, max_tokens=32, messages=user("hello"))
        assert msg.content[0].text  # the scripted model answered
        [req] = fake.requests("/chat/completions")
        assert req["headers"]["authorization"] == "Bearer " + token
        assert "x-api-key" not in req["headers"]
        fake.reset()


def test_no_key_anywhere_is_401_without_upstream_call(keyless_proxy, fake):
    resp = requests.post(keyless_proxy.url + "/v1/messages", timeout=10,
                         json={"model": MODEL, "max_tokens": 10, "messages": user("hi")})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    assert fake.requests("/chat/completions") == []


def test_proxy_key_wins_over_client_key(proxy, fake):
    with anthropic.Anthropic(base_url=proxy.url, auth_token="or-client-bearer", max_retries=0) as c:
        c.messages.create(model=MODEL, max_tokens=32, messages=user("hello"))
    [req] = fake.requests("/chat/completions")
    assert req["headers"]["authorization"] == "Bearer " + PROXY_KEY


# -- errors -------------------------------------------------------------------------------------------


ERROR_CASES = [
    (400, anthropic.BadRequestError, "invalid_request_error"),
    (401, anthropic.AuthenticationError, "authentication_error"),
    (403, anthropic.PermissionDeniedError, "permission_error"),
    (404, anthropic.NotFoundError, "not_found_error"),
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (500, anthropic.InternalServerError, "api_error"),
    (503, anthropic.ServiceUnavailableError, ("overloaded_error", "api_error")),
    (529, anthropic.OverloadedError, ("overloaded_error", "api_error")),
]


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("status, exc_class, error_type", ERROR_CASES, ids=[str(c[0]) for c in ERROR_CASES])
def test_upstream_error_before_stream(client, fake, fake_upstream_server, status, exc_class, error_type, streamed):
    proxy_upstream_url = fake_upstream_server.url
    message = "upstream says no (%d) for gpt-thing" % status
    fake.script("/chat/completions", [{"status": status, "headers": {"retry-after": "7"},
                                       "json": {"error": {"message": message, "type": "some_type", "code": None}}}])
    with pytest.raises(exc_class) as info:
        if streamed:
            with client.messages.stream(model=MODEL, max_tokens=64, messages=user("x")) as stream:
                stream.until_done()
        else:
            client.messages.create(model=MODEL, max_tokens=64, messages=user("x"))
    exc = info.value
    assert exc.status_code == status
    assert exc.body["type"] == "error"
    expected = (error_type,) if isinstance(error_type, str) else error_type
    assert exc.body["error"]["type"] in expected
    assert message in exc.body["error"]["message"]
    # the message says it was the upstream that answered so, and which one
    assert exc.body["error"]["message"].startswith(f"upstream {urlsplit(proxy_upstream_url).netloc} ")
    if status == 401:
        assert " rejected the key (401): " in exc.body["error"]["message"]
    if status == 429:
        assert exc.response.headers.get("retry-after") == "7"
    assert len(fake.requests("/chat/completions")) == 1


@pytest.mark.parametrize("fault", ["error_object", "drop", "garbage", "stop_mid_event", "no_finish"])
def test_upstream_failure_mid_stream_ends_with_error_event(proxy, client, fake, fault):
    head = [chunk({"role": "assistant"}), chunk({"content": "Partial "}), chunk({"content": "answer"})]
    specs = {
        "error_object": {"sse": head + [{"error": {"message": "upstream exploded mid-way", "type": "server_error"}}]},
        "drop": {"sse": head + [chunk({"content": "more"}), chunk(finish="stop")], "drop_after": 3},
        "garbage": {"sse": head + ["data: {this is not json\n\n", chunk(finish="stop")]},
        "stop_mid_event": {"sse": head + [chunk({"content": "a much longer piece that gets cut"})],
                           "stop_mid_event": True},
        "no_finish": {"sse": head, "no_done": True},
    }
    fake.script("/chat/completions", [specs[fault], specs[fault]])
    # the SDK raises instead of hanging or returning a truncated message as if complete
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=user("x")) as stream:
            for _ in stream:
                pass
    assert time.monotonic() - started < 20
    if fault == "error_object":
        assert "upstream exploded mid-way" in str(info.value)
        assert "upstream 127.0.0.1:" in str(info.value)  # named: the upstream failed, not the proxy
    # on the wire: text already sent, then one error event, then the end
    resp = raw_post(proxy, {"model": MODEL, "max_tokens": 64, "stream": True, "messages": user("x")})
    assert resp.status_code == 200
    events = sse_events(resp.content)
    assert events[-1][0] == "error"
    assert events[-1][1]["type"] == "error" and events[-1][1]["error"]["type"]
    assert "message_stop" not in [n for n, _ in events]
    assert any(n == "content_block_delta" for n, _ in events)


def test_upstream_unreachable_is_502(start_proxy, fake_upstream_server):
    dead = start_proxy(_env(fake_upstream_server, CLAUDE_CODE_PROXY_API_KEY=PROXY_KEY,
                            ANTHROPIC_PROXY_BASE_URL="http://127.0.0.1:%d" % free_port()))
    with anthropic.Anthropic(base_url=dead.url, api_key=CLIENT_KEY, max_retries=0, timeout=30) as c:
        with pytest.raises(anthropic.InternalServerError) as info:
            c.messages.create(model=MODEL, max_tokens=10, messages=user("x"))
        assert info.value.status_code == 502
        assert info.value.body["error"]["type"] == "api_error"
        assert "unreachable" in info.value.body["error"]["message"].lower()
        with pytest.raises(anthropic.InternalServerError) as info:
            with c.messages.stream(model=MODEL, max_tokens=10, messages=user("x")) as s:
                s.until_done()
        assert info.value.status_code == 502


# -- count_tokens and validation ----------------------------------------------------------------------


def test_count_tokens_is_a_local_estimate(client, fake):
    small = client.messages.count_tokens(model=MODEL, messages=user("hi"))
    big = client.messages.count_tokens(
        model=MODEL, system=[{"type": "text", "text": "You are a helpful assistant. " * 20}],
        tools=[WEATHER_TOOL, READ_TOOL],
        messages=[{"role": "user", "content": "Tell me a long story about dragons. " * 50},
                  {"role": "system", "content": "Be brief."},
                  {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read",
                                                     "input": {"file_path": "/a"}}]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}])
    assert isinstance(small.input_tokens, int) and small.input_tokens > 0
    assert isinstance(big.input_tokens, int) and big.input_tokens > small.input_tokens * 10
    assert fake.requests() == []


@pytest.mark.parametrize("body, field", [
    ({"model": MODEL, "max_tokens": 10}, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"model": MODEL, "max_tokens": -5, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"model": MODEL, "max_tokens": "10", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"model": MODEL, "max_tokens": True, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"model": MODEL, "max_tokens": 10, "messages": "hi"}, "messages"),
], ids=["no-messages", "no-max_tokens", "negative", "string", "bool", "unknown-role", "messages-not-list"])
def test_invalid_request_is_400_naming_the_field_without_upstream_call(proxy, fake, body, field):
    resp = raw_post(proxy, body)
    assert resp.status_code == 400
    err = resp.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert field in err["error"]["message"]
    assert fake.requests() == []


def test_invalid_request_through_the_sdk(proxy, client, fake):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=MODEL, max_tokens=0, messages=user("hi"))
    assert "max_tokens" in info.value.body["error"]["message"]
    resp = requests.post(proxy.url + "/v1/messages", data=b"{not json",
                         headers={"content-type": "application/json", "x-api-key": CLIENT_KEY}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"
    assert fake.requests() == []


# -- keep-alive and client disconnect -----------------------------------------------------------------


def test_keepalive_ping_while_upstream_is_silent(proxy, client, fake):
    def spec(gap_ms):
        return {"sse": [chunk({"role": "assistant", "content": "Hel"}), chunk({"content": "lo"}, finish="stop"),
                        usage_chunk(4, 2)], "gap_ms": gap_ms}

    fake.script("/chat/completions", [spec(700), spec(400)])
    resp = raw_post(proxy, {"model": MODEL, "max_tokens": 32, "stream": True, "messages": user("hi")})
    names = [n for n, _ in sse_events(resp.content)]
    first, second = [i for i, n in enumerate(names) if n == "content_block_delta"][:2]
    # the upstream was silent for 0.7 s (STREAM_PING_INTERVAL=0.3) between the two text chunks
    assert "ping" in names[first:second]
    assert names[-1] == "message_stop"
    # and the SDK takes the pings in its stride
    with client.messages.stream(model=MODEL, max_tokens=32, messages=user("hi")) as stream:
        assert stream.get_final_message().content[0].text == "Hello"


def test_client_disconnect_closes_the_upstream_connection(start_proxy, slow_upstream):
    proxy = start_proxy({"PROXY_MODE": "translation", "ANTHROPIC_PROXY_BASE_URL": slow_upstream.url,
                         "CLAUDE_CODE_PROXY_API_KEY": PROXY_KEY, "STREAM_PING_INTERVAL": "0.3"})
    slow_upstream.reset()
    hang_up_mid_stream(proxy, {"model": MODEL, "max_tokens": 32, "stream": True, "messages": user("go")},
                       slow_upstream)
    assert requests.get(proxy.url + "/", timeout=5).status_code == 200


def test_accounting_sees_translated_requests(proxy, client, fake):
    fake.script("/chat/completions", [
        {"json": completion({"content": "a", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
            finish="tool_calls", usage={"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200})},
        {"sse": [chunk({"content": "b"}), chunk(finish="stop"), usage_chunk(500, 50)]},
    ])
    host = "acct-translation.example.com"
    with anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_KEY, max_retries=0,
                             default_headers={"Host": host}) as c:
        c.messages.create(model=MODEL, max_tokens=64, tools=[TIME_TOOL], messages=user("x"))
        with c.messages.stream(model=MODEL, max_tokens=64, messages=user("y")) as s:
            s.until_done()

    def stats():
        got = requests.get(proxy.url + "/token-stats", timeout=5).json()["stats"].get(host)
        return got if got and got["requestCount"] >= 2 else None

    got = wait_until(stats)
    assert got, "the two requests never showed up in /token-stats"
    assert (got["requestCount"], got["inputTokens"], got["outputTokens"]) == (2, 1500, 250)
    assert got["toolCallCount"] == 1


def test_reasoning_models_that_refuse_max_tokens_get_max_completion_tokens(start_proxy, fake_upstream_server, fake):
    """OpenAI's o-series and GPT-5 answer 400 to max_tokens; the proxy renames it and remembers the model."""
    proxy = start_proxy(_env(fake_upstream_server, CLAUDE_CODE_PROXY_API_KEY=PROXY_KEY,
                             COMPLETION_MODEL="openai/o4-mini"))
    refusal = {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                    "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                         "param": "max_tokens", "code": "unsupported_parameter"}}
    fake.script("/chat/completions", [{"status": 400, "json": refusal},
                                      {"json": completion({"content": "first"}, model="openai/o4-mini")},
                                      {"json": completion({"content": "second"}, model="openai/o4-mini")}])
    with anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_KEY, max_retries=0, timeout=30) as c:
        first = c.messages.create(model=MODEL, max_tokens=300, messages=user("one"))
        second = c.messages.create(model=MODEL, max_tokens=200, messages=user("two"))
    assert (first.content[0].text, second.content[0].text) == ("first", "second")
    bodies = upstream_bodies(fake)
    assert len(bodies) == 3  # the refused one, its retry, and the next request sent right the first time
    assert bodies[0]["max_tokens"] == 300 and "max_completion_tokens" not in bodies[0]
    assert bodies[1]["max_completion_tokens"] == 300 and "max_tokens" not in bodies[1]
    assert bodies[2]["max_completion_tokens"] == 200 and "max_tokens" not in bodies[2]


def test_other_400s_are_not_retried(client, fake):
    fake.script("/chat/completions", [{"status": 400, "json": {"error": {"message": "max_tokens is too large"}}}])
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=MODEL, max_tokens=64, messages=user("x"))
    assert "max_tokens is too large" in str(info.value)
    assert len(upstream_bodies(fake)) == 1
