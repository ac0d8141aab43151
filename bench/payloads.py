"""Request bodies for the benchmark: a ~2 KB request and a ~200 KB Claude Code conversation.

The long conversation is the captured Claude Code 2.1.197 turn-2 body (24 tools, system array, a
mid-conversation system message, thinking history) with Read tool calls and results repeated until it
reaches the target size. `to_openai` makes the equivalent Chat Completions body for the direct side of
translation mode, so both sides send a body of about the same size.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
_FIXTURE = Path("fixtures") / "claude-code-2.1.197" / "messages-turn2.json"

SOURCE_LINES = [
    "def handler(request):",
    "    \"\"\"Route a request to its service and return the response.\"\"\"",
    "    service = registry.lookup(request.path)",
    "    if service is None:",
    "        return Response(status=404, body=b'not found')",
    "    return service.call(request)",
    "",
]


def fixture_path() -> Path | None:
    """The captured turn-2 body (tests/fixtures, copied from the Claude Code CLI's real traffic)."""
    path = REPO_ROOT / "tests" / _FIXTURE
    return path if path.is_file() else None


def small_request(stream: bool) -> dict:
    """A ~2 KB Anthropic request: system prompt, three turns, one tool."""
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are a concise assistant for a software team. " * 14}],
        "messages": [
            {"role": "user", "content": "Summarise what a reverse proxy does in two sentences. " * 6},
            {"role": "assistant", "content": [{"type": "text", "text": "A reverse proxy receives client "
                                                                       "requests and forwards them. " * 4}]},
            {"role": "user", "content": [{"type": "text", "text": "Now explain connection pooling briefly. "
                                                                  "Keep it short and concrete. " * 3}]},
        ],
        "tools": [{"name": "lookup", "description": "Look up a term in the team glossary.",
                   "input_schema": {"type": "object", "properties": {"term": {"type": "string"}},
                                    "required": ["term"]}}],
        "stream": stream,
    }
    return body


def _synthetic_base() -> dict:
    """Used when the captured fixture is not available: same shape, made-up tools."""
    tools = [{"name": name, "description": ("Tool %s. " % name) * 300,
              "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}}}
             for name in ("Read", "Bash", "Edit", "Write", "Grep", "Glob")]
    return {
        "model": "claude-opus-4-8", "max_tokens": 64000, "thinking": {"type": "adaptive"},
        "system": [{"type": "text", "text": "You are an interactive agent. " * 200}],
        "tools": tools,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Read /repo/app.py and explain it."}]}],
    }


def long_conversation(stream: bool, target_bytes: int = 200_000) -> dict:
    """A ~200 KB Claude Code conversation with tools and tool results."""
    path = fixture_path()
    body = json.loads(path.read_text()) if path else _synthetic_base()
    body = copy.deepcopy(body)
    messages = body["messages"]
    file_text = "\n".join("%d\t%s" % (i + 1, SOURCE_LINES[i % len(SOURCE_LINES)]) for i in range(120))
    n = 0
    while len(json.dumps(body)) < target_bytes:
        n += 1
        tool_id = "toolu_bench%020d" % n
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": "Let me read the next file."},
            {"type": "tool_use", "id": tool_id, "name": "Read", "input": {"file_path": "/repo/src/mod%d.py" % n}}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": file_text}]})
    messages.append({"role": "user", "content": [{"type": "text", "text": "Summarise what these files do."}]})
    body["stream"] = stream
    return body


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


def to_openai(body: dict) -> dict:
    """A rough Chat Completions equivalent of an Anthropic body (for the direct side only)."""
    messages: list[dict] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text(body["system"])})
    for m in body["messages"]:
        content = m["content"]
        if m["role"] == "system":
            messages.append({"role": "system", "content": _text(content)})
        elif m["role"] == "assistant":
            blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
            calls = [{"id": b["id"], "type": "function",
                      "function": {"name": b["name"], "arguments": json.dumps(b["input"])}}
                     for b in blocks if b.get("type") == "tool_use"]
            msg: dict = {"role": "assistant", "content": _text(blocks) or None}
            if calls:
                msg["tool_calls"] = calls
            messages.append(msg)
        else:
            blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
            for b in blocks:
                if b.get("type") == "tool_result":
                    messages.append({"role": "tool", "tool_call_id": b["tool_use_id"],
                                     "content": _text(b["content"])})
            text = _text(blocks)
            if text:
                messages.append({"role": "user", "content": text})
    out = {"model": "gpt-bench", "max_tokens": min(int(body.get("max_tokens") or 1024), 32000),
           "messages": messages, "stream": bool(body.get("stream"))}
    if body.get("tools"):
        out["tools"] = [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                                          "parameters": t.get("input_schema", {})}}
                        for t in body["tools"]]
    if out["stream"]:
        out["stream_options"] = {"include_usage": True}
    return out


def encode(body: dict) -> bytes:
    return json.dumps(body).encode()


def to_responses(body: dict) -> dict:
    """The Responses API equivalent of an Anthropic body (for the direct side only): the proxy's own converter."""
    from app.translation.models import Route, wants_thinking
    from app.translation.responses_request import anthropic_to_responses

    route = Route(model="gpt-bench", max_tokens=min(int(body.get("max_tokens") or 1024), 32000),
                  reasoning=wants_thinking(body))
    return anthropic_to_responses(body, route, stream=bool(body.get("stream")), signing_key=b"bench")
