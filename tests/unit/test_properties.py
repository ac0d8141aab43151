"""Property-based tests (hypothesis) of the two pure conversions the translation mode rests on.

1. Any valid Anthropic request converts to an OpenAI Chat Completions request that a strict schema
   (written here, from OpenAI's rules) accepts; the only exception ever raised is UnsupportedContent,
   and only for content that really has no OpenAI form.
2. Any sequence of OpenAI stream chunks becomes a well-formed Anthropic event sequence that the
   anthropic SDK's own accumulator takes without error, and that says what the chunks said.
"""
from __future__ import annotations

import json
import math
import string

from anthropic.lib.streaming._messages import accumulate_event
from hypothesis import HealthCheck, given, settings, strategies as st

from app.translation.models import Route
from app.translation.request import UnsupportedContent, anthropic_to_openai
from app.translation.stream import StreamTranslator
from app.translation.validation import validate_messages_request

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies: JSON values and schemas

texts = st.text(min_size=1, max_size=40)
names = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=24)
json_scalars = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=6)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

_schema_leaf = st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null"])},
                                     optional={"description": texts,
                                               "format": st.sampled_from(["uri", "date-time", "email", "uuid"]),
                                               "enum": st.lists(json_scalars, min_size=1, max_size=3),
                                               "const": json_scalars, "default": json_values,
                                               "$comment": texts, "minimum": st.integers(), "pattern": st.just("^a")})


def _schema_nodes(inner):
    return (st.fixed_dictionaries({"type": st.just("object")},
                                  optional={"properties": st.dictionaries(names, inner, max_size=4),
                                            "required": st.lists(names, max_size=3),
                                            "additionalProperties": st.booleans() | inner,
                                            "propertyNames": st.just({"pattern": "^[a-z]+$"}),
                                            "$defs": st.dictionaries(names, inner, max_size=2)})
            | st.fixed_dictionaries({"type": st.just("array"), "items": inner},
                                    optional={"minItems": st.integers(0, 3), "uniqueItems": st.booleans()})
            | st.fixed_dictionaries({"anyOf": st.lists(inner, min_size=1, max_size=3)})
            | st.fixed_dictionaries({"oneOf": st.lists(inner, min_size=1, max_size=3)})
            | st.fixed_dictionaries({"allOf": st.lists(inner, min_size=1, max_size=2)}))


schemas = st.recursive(_schema_leaf, _schema_nodes, max_leaves=5)
input_schemas = st.fixed_dictionaries(
    {"type": st.just("object"), "properties": st.dictionaries(names, schemas, max_size=4)},
    optional={"required": st.lists(names, max_size=3), "$schema": st.just("http://json-schema.org/draft-07/schema#"),
              "additionalProperties": st.booleans(), "$id": st.just("urn:tool")},
)

# ---------------------------------------------------------------- strategies: Anthropic requests

MEDIA = ["image/png", "image/jpeg", "image/gif", "image/webp"]
image_blocks = st.one_of(
    st.builds(lambda m, d: {"type": "image", "source": {"type": "base64", "media_type": m, "data": d}},
              st.sampled_from(MEDIA), st.text(alphabet=string.ascii_letters + string.digits + "+/=", min_size=4,
                                              max_size=40)),
    st.builds(lambda u: {"type": "image", "source": {"type": "url", "url": "https://img.example/" + u}}, names),
)
cache = st.just({}) | st.just({"cache_control": {"type": "ephemeral"}})
text_blocks = st.builds(lambda t, c: {"type": "text", "text": t, **c}, texts, cache)
thinking_blocks = st.one_of(
    st.builds(lambda t, s: {"type": "thinking", "thinking": t, "signature": s}, texts, names),
    st.builds(lambda d: {"type": "redacted_thinking", "data": d}, names),
)
document_blocks = st.builds(lambda t, title: {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                                              "data": t}, **title},
                            texts, st.just({}) | st.builds(lambda x: {"title": x}, texts))
pdf_blocks = st.builds(lambda d: {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                                                  "data": d}}, names)
tool_result_content = st.none() | texts | st.lists(text_blocks | image_blocks, max_size=3)


_SUBSTANTIAL = frozenset({"text", "tool_use", "tool_result", "image", "document"})


def _maybe_split(draw, role: str, blocks: list[dict]) -> list[dict]:
    """One turn as one message, or as two consecutive messages of the same role (the API merges them)."""
    cuts = [i for i in range(1, len(blocks))
            if any(b["type"] in _SUBSTANTIAL for b in blocks[:i]) and any(b["type"] in _SUBSTANTIAL for b in blocks[i:])]
    if cuts and draw(st.integers(0, 3)) == 0:
        cut = draw(st.sampled_from(cuts))
        return [{"role": role, "content": blocks[:cut]}, {"role": role, "content": blocks[cut:]}]
    return [{"role": role, "content": blocks}]


@st.composite
def conversations(draw, tool_names: list[str]) -> list[dict]:
    """A valid history: every assistant tool_use is answered by a tool_result in the next user message."""
    messages: list[dict] = []
    turns = draw(st.integers(1, 5))
    call_number = 0
    pending: list[str] = []  # tool_use ids the next user message must answer
    role = draw(st.sampled_from(["user", "user", "assistant"]))
    for _ in range(turns):
        if role == "user":
            blocks: list[dict] = []
            for call_id in pending:
                result = {"type": "tool_result", "tool_use_id": call_id}
                content = draw(tool_result_content)
                if content is not None:
                    result["content"] = content
                if draw(st.booleans()):
                    result["is_error"] = draw(st.booleans())
                blocks.append(result)
            blocks = draw(st.permutations(blocks)) if blocks else blocks
            blocks += draw(st.lists(text_blocks | image_blocks | document_blocks, max_size=3))
            pending = []
            if not blocks:
                blocks.append(draw(text_blocks))
            if draw(st.integers(0, 4)) == 0 and all(b["type"] == "text" for b in blocks) and len(blocks) == 1:
                messages.append({"role": "user", "content": blocks[0]["text"]})
            else:
                messages.extend(_maybe_split(draw, "user", blocks))
            if draw(st.integers(0, 5)) == 0:  # mid-conversation system message (beta)
                messages.append({"role": "system", "content": draw(texts | st.lists(text_blocks, min_size=1,
                                                                                      max_size=2))})
            role = "assistant"
        else:
            blocks = draw(st.lists(thinking_blocks, max_size=1)) + draw(st.lists(text_blocks, max_size=2))
            for _ in range(draw(st.integers(0, 3)) if tool_names else 0):
                call_number += 1
                call_id = f"toolu_{call_number:03d}_{draw(names)}"
                blocks.append({"type": "tool_use", "id": call_id, "name": draw(st.sampled_from(tool_names)),
                               "input": draw(json_objects)})
                pending.append(call_id)
            if all(b["type"] in ("thinking", "redacted_thinking") for b in blocks):
                blocks.append(draw(text_blocks))  # thinking alone is not a turn
            if draw(st.integers(0, 4)) == 0 and len(blocks) == 1 and blocks[0]["type"] == "text":
                messages.append({"role": "assistant", "content": blocks[0]["text"]})
            else:
                messages.extend(_maybe_split(draw, "assistant", blocks))
            role = "user"
    if pending:  # the history may not end with unanswered tool calls
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": c, "content": "ok"}
                                                     for c in pending]})
    return messages


@st.composite
def anthropic_requests(draw, allow_unsupported: bool = False) -> dict:
    tool_names = draw(st.lists(names, max_size=3, unique=True))
    tools = [{"name": n, "input_schema": draw(input_schemas), **draw(st.just({}) | st.builds(
        lambda d: {"description": d}, texts))} for n in tool_names]
    if draw(st.booleans()):
        tools.append({"type": "web_search_20250305", "name": "web_search", "max_uses": 3})  # a server tool
    body: dict = {"model": draw(st.sampled_from(["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-8"])),
                  "max_tokens": draw(st.integers(1, 2**31 - 1)),
                  "messages": draw(conversations(tool_names))}
    if tools:
        body["tools"] = draw(st.permutations(tools))
    if draw(st.booleans()):
        body["system"] = draw(texts | st.lists(text_blocks | st.just(
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1"}), min_size=1, max_size=3))
    if tool_names and draw(st.booleans()):
        choice = draw(st.sampled_from(["auto", "any", "none", "tool"]))
        body["tool_choice"] = {"type": choice}
        if choice == "tool":
            body["tool_choice"]["name"] = draw(st.sampled_from(tool_names))
        if choice != "none" and draw(st.booleans()):
            body["tool_choice"]["disable_parallel_tool_use"] = draw(st.booleans())
    if draw(st.booleans()):
        body["stop_sequences"] = draw(st.lists(texts, max_size=6))
    if draw(st.booleans()):
        body["thinking"] = draw(st.sampled_from([{"type": "adaptive"}, {"type": "disabled"}]) | st.builds(
            lambda n: {"type": "enabled", "budget_tokens": n}, st.integers(1024, 64000)))
    if draw(st.booleans()):
        body["temperature"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        body["top_p"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        body["top_k"] = draw(st.integers(0, 500))
    if draw(st.booleans()):
        body["metadata"] = {"user_id": draw(texts | st.just(json.dumps(
            {"device_id": "d" * 64, "account_uuid": "a-b-c", "session_id": "s-1"})))}
    for extra in ("context_management", "output_config", "service_tier", "container", "mcp_servers"):
        if draw(st.integers(0, 6)) == 0:
            body[extra] = draw(json_values)
    if allow_unsupported and draw(st.booleans()):
        body["messages"].append({"role": "user", "content": [draw(pdf_blocks)]})
    body["stream"] = draw(st.booleans())
    return body


# ---------------------------------------------------------------- the strict OpenAI schema

_TOP_LEVEL = {"model", "messages", "max_tokens", "stream", "stream_options", "temperature", "top_p", "stop",
              "tools", "tool_choice", "parallel_tool_calls", "user"}


def _check_parts(content, where: str) -> None:
    if isinstance(content, str):
        assert content, f"{where}: empty string content"
        return
    assert isinstance(content, list) and content, f"{where}: content must be a string or non-empty part list"
    for part in content:
        assert isinstance(part, dict), where
        if part.get("type") == "text":
            assert set(part) == {"type", "text"} and isinstance(part["text"], str), f"{where}: {part}"
        elif part.get("type") == "image_url":
            assert set(part) == {"type", "image_url"}, f"{where}: {part}"
            url = part["image_url"]
            assert set(url) <= {"url", "detail"} and isinstance(url["url"], str) and url["url"], f"{where}: {part}"
            assert url["url"].startswith(("https://", "http://", "data:image/")), url
        else:
            raise AssertionError(f"{where}: unknown part {part}")


def check_openai_request(req: dict, body: dict) -> None:
    """OpenAI's rules for a chat completion request, as strictly as the strictest compatible upstream."""
    json.dumps(req, allow_nan=False)  # plain JSON, no NaN/Infinity
    unknown = set(req) - _TOP_LEVEL
    assert not unknown, f"unknown top-level keys {unknown}"
    assert isinstance(req["model"], str) and req["model"]
    if "max_tokens" in req:
        assert type(req["max_tokens"]) is int and req["max_tokens"] >= 1
    assert req.get("stream", False) in (True, False)
    if "stream_options" in req:
        assert req.get("stream") is True and req["stream_options"] == {"include_usage": True}
    for key, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        if key in req:
            assert isinstance(req[key], (int, float)) and math.isfinite(req[key]) and low <= req[key] <= high
    if "stop" in req:
        assert isinstance(req["stop"], list) and 1 <= len(req["stop"]) <= 4 and all(
            isinstance(s, str) and s for s in req["stop"])
    if "user" in req:
        assert isinstance(req["user"], str) and 0 < len(req["user"]) <= 64

    tool_names = set()
    if "tools" in req:
        assert isinstance(req["tools"], list) and req["tools"]
        for tool in req["tools"]:
            assert set(tool) == {"type", "function"} and tool["type"] == "function", tool
            fn = tool["function"]
            assert set(fn) <= {"name", "description", "parameters", "strict"} and isinstance(fn["name"], str)
            assert fn["name"] not in tool_names, "duplicate tool name"
            tool_names.add(fn["name"])
            params = fn["parameters"]
            assert isinstance(params, dict) and params.get("type") == "object"
            assert isinstance(params.get("properties"), dict)
            text = json.dumps(params)
            assert '"$schema"' not in text or "$schema" in json.dumps(body.get("tools")), "stray $schema"
    if "tool_choice" in req:
        assert "tools" in req, "tool_choice without tools"
        choice = req["tool_choice"]
        if isinstance(choice, dict):
            assert choice["type"] == "function" and choice["function"]["name"] in tool_names
        else:
            assert choice in ("auto", "required", "none")
    if "parallel_tool_calls" in req:
        assert isinstance(req["parallel_tool_calls"], bool) and "tools" in req

    messages = req["messages"]
    assert isinstance(messages, list) and messages, "no messages"
    open_calls: set[str] = set()  # calls of the latest assistant message not answered yet
    seen_ids: set[str] = set()
    answering = False  # inside the run of tool messages right after an assistant with tool_calls
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        role = msg.get("role")
        if role != "tool" and open_calls:
            raise AssertionError(f"{where}: tool calls {open_calls} were never answered")
        if role == "system":
            assert set(msg) == {"role", "content"} and isinstance(msg["content"], str) and msg["content"], where
            answering = False
        elif role == "user":
            assert set(msg) <= {"role", "content", "name"}, where
            _check_parts(msg["content"], where)
            answering = False
        elif role == "assistant":
            assert set(msg) <= {"role", "content", "tool_calls"}, where
            content = msg.get("content")
            assert content is None or (isinstance(content, str) and content), f"{where}: content {content!r}"
            calls = msg.get("tool_calls")
            assert content is not None or calls, f"{where}: neither content nor tool_calls"
            if calls is not None:
                assert isinstance(calls, list) and calls, where
                for call in calls:
                    assert set(call) == {"id", "type", "function"} and call["type"] == "function", call
                    assert isinstance(call["id"], str) and call["id"] and call["id"] not in seen_ids, call
                    seen_ids.add(call["id"])
                    fn = call["function"]
                    assert set(fn) == {"name", "arguments"} and isinstance(fn["name"], str) and fn["name"]
                    assert isinstance(fn["arguments"], str), "arguments must be a JSON string"
                    assert isinstance(json.loads(fn["arguments"]), dict), fn["arguments"]
                open_calls = {c["id"] for c in calls}
                answering = True
            else:
                answering = False
        elif role == "tool":
            assert set(msg) == {"role", "tool_call_id", "content"}, where
            assert answering, f"{where}: a tool message that does not follow an assistant's tool_calls"
            assert msg["tool_call_id"] in open_calls, f"{where}: answers unknown or already answered call"
            open_calls.discard(msg["tool_call_id"])
            assert isinstance(msg["content"], str), where
        else:
            raise AssertionError(f"{where}: unknown role {role!r}")
    assert not open_calls, f"tool calls {open_calls} were never answered"


def _route(body: dict) -> Route:
    return Route(model="up/model", max_tokens=min(body["max_tokens"], 8192), reasoning=False)


@SETTINGS
@given(anthropic_requests())
def test_any_valid_anthropic_request_becomes_a_strictly_valid_openai_request(body):
    validate_messages_request(body)  # the generator only makes requests the proxy's validator accepts
    snapshot = json.dumps(body)
    out = anthropic_to_openai(body, _route(body), stream=body["stream"])
    assert json.dumps(body) == snapshot, "the input request was modified"
    check_openai_request(out, body)
    # what the request said is still there
    calls = [b for m in body["messages"] if m["role"] == "assistant" and isinstance(m["content"], list)
             for b in m["content"] if b["type"] == "tool_use"]
    sent = {c["id"]: json.loads(c["function"]["arguments"]) for m in out["messages"] for c in m.get("tool_calls", ())}
    assert sent == {c["id"]: c["input"] for c in calls}
    answered = {m["tool_call_id"] for m in out["messages"] if m["role"] == "tool"}
    assert answered == set(sent)


@SETTINGS
@given(anthropic_requests(allow_unsupported=True))
def test_conversion_raises_only_unsupported_content_and_only_for_unsupported_content(body):
    try:
        out = anthropic_to_openai(body, _route(body), stream=body["stream"])
    except UnsupportedContent as exc:
        assert "document" in str(exc) and "messages." in str(exc), str(exc)
        assert any(isinstance(m["content"], list) and any(b.get("type") == "document" and b["source"]["type"] ==
                                                          "base64" for b in m["content"]) for m in body["messages"])
    else:
        check_openai_request(out, body)


# ---------------------------------------------------------------- OpenAI stream chunks


def _chunk(delta: dict | None = None, finish: str | None = None, **extra) -> dict:
    chunk = {"id": "chatcmpl-p", "object": "chat.completion.chunk", "created": 1, "model": "up/model", **extra}
    if delta is not None or finish is not None:
        chunk["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    return chunk


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:])]


@st.composite
def chunk_streams(draw) -> dict:
    """OpenAI chunks with text, reasoning and tool-call fragments interleaved at random."""
    text_parts = draw(st.lists(st.text(min_size=1, max_size=12), max_size=6))
    reasoning_parts = draw(st.lists(st.text(min_size=1, max_size=12), max_size=4))
    tools = []
    indices = draw(st.lists(st.integers(0, 7), unique=True, max_size=3))
    for index in indices:
        args = json.dumps(draw(json_objects)) if draw(st.integers(0, 5)) else ""
        pieces = _split(args, draw(st.lists(st.integers(0, 200), max_size=5))) if args else []
        tools.append({"index": index, "id": f"call_{index}_{draw(names)}", "name": draw(names), "args": args,
                      "pieces": pieces})
    # Some upstreams send no `index`; they never interleave calls, so neither does this case.
    no_index = bool(tools) and draw(st.integers(0, 4)) == 0
    queues = [[("text", p) for p in text_parts], [("reasoning", p) for p in reasoning_parts]]
    for tool in tools:
        first = {"index": tool["index"], "id": tool["id"], "type": "function",
                 "function": {"name": tool["name"], "arguments": tool["pieces"][0] if tool["pieces"] else ""}}
        rest = [{"index": tool["index"], "function": {"arguments": p}} for p in tool["pieces"][1:]]
        calls = [first] + rest
        if no_index:
            for call in calls:
                del call["index"]
        queues.append([("tool", c) for c in calls])
    merged: list[tuple[str, object]] = []
    while any(queues):
        q = draw(st.sampled_from([q for q in queues if q]))
        merged.append(q.pop(0))
        while no_index and q and q[0][0] == "tool" and merged[-1][0] == "tool":
            merged.append(q.pop(0))  # the rest of this call before anything else
    chunks = [_chunk({"role": "assistant", "content": ""})] if draw(st.booleans()) else []
    for kind, payload in merged:
        if kind == "text":
            chunks.append(_chunk({"content": payload}))
        elif kind == "reasoning":
            chunks.append(_chunk({draw(st.sampled_from(["reasoning_content", "reasoning"])): payload}))
        else:
            chunks.append(_chunk({"tool_calls": [payload]}))
        if draw(st.integers(0, 8)) == 0:
            chunks.append(draw(st.sampled_from([_chunk({}), _chunk({"content": None}), {"choices": []},
                                                _chunk({"role": "assistant"}), _chunk({"content": ""})])))
    finish = draw(st.sampled_from([None, "stop", "length", "tool_calls", "content_filter", "function_call"]))
    usage = None
    if draw(st.booleans()):
        prompt = draw(st.integers(0, 10**6))
        usage = {"prompt_tokens": prompt, "completion_tokens": draw(st.integers(0, 10**5)),
                 "total_tokens": 0}
        if draw(st.booleans()):
            usage["prompt_tokens_details"] = {"cached_tokens": draw(st.integers(0, prompt))}
    tail: list[dict] = []
    if finish:
        tail.append(_chunk({}, finish))
    if usage is not None:
        tail.append({"id": "chatcmpl-p", "object": "chat.completion.chunk", "choices": [], "usage": usage})
    # finish reason and usage usually come last, but not always
    for chunk in tail:
        position = len(chunks) if draw(st.integers(0, 3)) else draw(st.integers(0, len(chunks)))
        chunks.insert(position, chunk)
    error_at = None
    if draw(st.integers(0, 6)) == 0:
        error_at = draw(st.integers(0, len(chunks)))
        error = draw(st.sampled_from([{"message": "boom", "code": 502}, {"message": "slow down", "type":
                                                                          "rate_limit_exceeded"},
                                      {"message": "x", "code": "server_error"}, "plain string error"]))
        chunks.insert(error_at, {"error": error})
    return {"chunks": chunks, "text": "".join(text_parts), "reasoning": "".join(reasoning_parts),
            "tools": tools, "finish": finish, "usage": usage, "error_at": error_at}


def parse_events(raw: bytes) -> list[tuple[str, dict]]:
    text = raw.decode("utf-8")
    assert text.endswith("\n\n")
    out = []
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = json.loads(lines[1][6:])
        assert data["type"] == lines[0][7:]
        out.append((lines[0][7:], data))
    return out


_DELTA_FOR = {"text": {"text_delta"}, "thinking": {"thinking_delta", "signature_delta"},
              "tool_use": {"input_json_delta"}}


def check_event_sequence(events: list[tuple[str, dict]]) -> None:
    """message_start first; blocks opened and closed in order with indices 0, 1, 2...; deltas only inside the
    open block and of its type; message_delta then message_stop last (or an error event last)."""
    names = [n for n, _ in events]
    assert names[0] == "message_start", names
    assert names.count("message_start") == 1
    if "error" in names:
        assert names[-1] == "error" and names.count("error") == 1, names
        assert "message_stop" not in names
        events = events[:-1]
    else:
        assert names[-2:] == ["message_delta", "message_stop"], names
        assert names.count("message_delta") == 1 and names.count("message_stop") == 1
    open_block = None
    next_index = 0
    for name, data in events[1:]:
        if name == "ping":
            continue
        if name == "content_block_start":
            assert open_block is None, "a block started while another is open"
            assert data["index"] == next_index, (data["index"], next_index)
            open_block = (data["index"], data["content_block"]["type"])
            next_index += 1
        elif name == "content_block_delta":
            assert open_block is not None and data["index"] == open_block[0], data
            assert data["delta"]["type"] in _DELTA_FOR[open_block[1]], (open_block, data)
        elif name == "content_block_stop":
            assert open_block is not None and data["index"] == open_block[0], data
            open_block = None
        elif name == "message_delta":
            assert open_block is None, "message_delta with a block still open"
        elif name == "message_stop":
            pass
        else:
            raise AssertionError(f"unexpected event {name}")


@SETTINGS
@given(chunk_streams())
def test_any_openai_chunk_sequence_becomes_a_well_formed_anthropic_stream(case):
    translator = StreamTranslator(model="claude-sonnet-4-5", input_tokens=42)
    out = translator.start()
    for chunk in case["chunks"]:
        out += translator.feed(json.loads(json.dumps(chunk)))
    out += translator.finish()
    events = parse_events(out)
    check_event_sequence(events)

    snapshot, bufs = None, {}
    for name, data in events:
        if name == "error":
            assert data["error"]["type"] and data["error"]["message"]
            continue
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None

    if case["error_at"] is not None:
        assert events[-1][0] == "error"
        return
    # the content says what the chunks said: text and reasoning in order, each tool's exact input
    text = "".join(b.text for b in snapshot.content if b.type == "text")
    thinking = "".join(b.thinking for b in snapshot.content if b.type == "thinking")
    assert text == case["text"]
    assert thinking == case["reasoning"]
    tool_blocks = [b for b in snapshot.content if b.type == "tool_use"]
    assert sorted((b.id, b.name) for b in tool_blocks) == sorted((t["id"], t["name"]) for t in case["tools"])
    by_id = {t["id"]: t for t in case["tools"]}
    for block in tool_blocks:
        expected = json.loads(by_id[block.id]["args"]) if by_id[block.id]["args"] else {}
        assert block.input == expected
    assert snapshot.stop_reason in ("end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal")
    if case["tools"] and snapshot.stop_reason == "end_turn":
        raise AssertionError("tool calls were made but stop_reason is end_turn")
    if case["usage"] is not None:
        cached = (case["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        assert snapshot.usage.output_tokens == case["usage"]["completion_tokens"]
        assert snapshot.usage.input_tokens == case["usage"]["prompt_tokens"] - cached
