"""Anthropic Messages request -> OpenAI Chat Completions request (pure; rules in docs/translation.md)."""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from app.jsonenc import compact

from .models import Route
from .schema import clean_schema

log = logging.getLogger(__name__)

MAX_STOP = 4  # OpenAI accepts at most 4 stop sequences
TOOL_ERROR_PREFIX = "[tool error] "
BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
_JOIN = "\n\n"  # separator between text blocks merged into one OpenAI string
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
_UPSTREAM = "cannot be sent to an OpenAI-compatible upstream"


class UnsupportedContent(ValueError):
    """Content the upstream cannot take; the message names its place (e.g. "messages.3.content.0: ...")."""


def anthropic_to_openai(body: dict, route: Route, *, stream: bool) -> dict:
    """Build the Chat Completions body. Only fields listed here are sent (an allow-list)."""
    messages: list[dict] = []
    system = body.get("system")
    if system:
        text = _system_text(system, "system")
        if text:
            messages.append({"role": "system", "content": text})
    _Conversation(messages).add_all(body.get("messages") or ())

    out: dict[str, Any] = {"model": route.model, "messages": messages}
    if route.max_tokens is not None:
        out["max_tokens"] = route.max_tokens
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    stops = body.get("stop_sequences")
    if isinstance(stops, list):
        stops = [s for s in stops if isinstance(s, str) and s][:MAX_STOP]
        if stops:
            out["stop"] = stops
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "tool" and isinstance(choice.get("name"), str):
                out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
            elif kind in _TOOL_CHOICE:
                out["tool_choice"] = _TOOL_CHOICE[kind]
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
    user = _user_hash(body.get("metadata"))
    if user:
        out["user"] = user
    return out


def _unsupported(path: str, what: str) -> UnsupportedContent:
    return UnsupportedContent(f"{path}: {what} {_UPSTREAM}")


def _system_text(system: Any, path: str) -> str:
    """System prompt (string or text blocks) as one string; Claude Code's billing-header block is dropped."""
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise UnsupportedContent(f"{path}: must be a string or a list of text blocks")
    texts = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise _unsupported(f"{path}.{j}", f"system block type {kind!r}")
        text = block.get("text")
        if not isinstance(text, str):
            raise UnsupportedContent(f"{path}.{j}.text: must be a string")
        if text and not text.startswith(BILLING_HEADER_PREFIX):
            texts.append(text)
    return texts[0] if len(texts) == 1 else _JOIN.join(texts)


def _image_part(block: dict, path: str) -> dict:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
        raise UnsupportedContent(f"{path}.source: base64 image needs string media_type and data")
    if kind == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _unsupported(path, f"image with source type {kind!r}")


def _document_parts(block: dict, path: str) -> list[dict]:
    """A document as text parts (text sources, content sources); PDFs and files are refused."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    head = [t for t in (block.get("title"), block.get("context")) if isinstance(t, str) and t]
    if kind == "text" and isinstance(source.get("data"), str):
        return [{"type": "text", "text": _JOIN.join([*head, source["data"]])}]
    if kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return [{"type": "text", "text": _JOIN.join([*head, content])}]
        if isinstance(content, list):
            parts = [{"type": "text", "text": _JOIN.join(head)}] if head else []
            for k, item in enumerate(content):
                sub = f"{path}.source.content.{k}"
                item_type = item.get("type") if isinstance(item, dict) else None
                if item_type == "text":
                    if isinstance(item.get("text"), str) and item["text"]:
                        parts.append({"type": "text", "text": item["text"]})
                elif item_type == "image":
                    parts.append(_image_part(item, sub))
                else:
                    raise _unsupported(sub, f"block type {item_type!r}")
            return parts
    if kind in ("base64", "url"):
        media = source.get("media_type") or "PDF"
        what = "a base64 PDF" if kind == "base64" else "a URL source"
        if kind == "base64" and media != "application/pdf":
            what = f"a base64 {media} source"
        raise _unsupported(path, f"block type 'document' with {what}")
    raise _unsupported(path, f"block type 'document' with source type {kind!r}")


def _parts_to_content(parts: list[dict]) -> str | list[dict]:
    """Text-only parts become one string (every upstream takes that); with images, the part list."""
    if all(p["type"] == "text" for p in parts):
        return parts[0]["text"] if len(parts) == 1 else _JOIN.join(p["text"] for p in parts)
    return parts


class _Conversation:
    """Appends OpenAI messages, keeping tool messages right after the assistant message that called them."""

    def __init__(self, out: list[dict]) -> None:
        self.out = out
        self.open_calls: set[str] = set()  # tool_call ids of the last assistant message with tool_calls
        self.tool_slot = 0  # where the next tool message goes (just after that assistant + earlier results)

    def add_all(self, messages: Any) -> None:
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise UnsupportedContent(f"messages.{i}: must be an object")
            role = message.get("role")
            content = message.get("content")
            if role == "assistant":
                self.assistant(content, i)
            elif role == "user":
                self.user(content, i)
            elif role == "system":
                # Mid-conversation system message (beta mid-conversation-system): kept at its place.
                text = _system_text(content, f"messages.{i}.content")
                if text:
                    self.out.append({"role": "system", "content": text})
            else:
                raise UnsupportedContent(f"messages.{i}.role: must be one of user, assistant, system")

    def _append(self, message: dict) -> None:
        out = self.out
        prev = out[-1] if out else None
        if prev is not None and prev["role"] == message["role"] and message["role"] in ("user", "assistant"):
            _merge(prev, message)
        else:
            out.append(message)

    def assistant(self, content: Any, i: int) -> None:
        if isinstance(content, str):
            if content:
                self._append({"role": "assistant", "content": content})
            return
        if not isinstance(content, list):
            raise UnsupportedContent(f"messages.{i}.content: must be a string or a list of content blocks")
        texts: list[str] = []
        calls: list[dict] = []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                text = _block_text(block, i, j)
                if text:
                    texts.append(text)
            elif kind == "tool_use":
                call_id, name = block.get("id"), block.get("name")
                if not isinstance(call_id, str) or not isinstance(name, str):
                    raise UnsupportedContent(f"messages.{i}.content.{j}: tool_use needs string id and name")
                args = block.get("input")
                calls.append({
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": compact({} if args is None else args),
                    },
                })
            elif kind in _DROPPED_BLOCKS:
                continue
            elif not isinstance(block, dict):
                raise UnsupportedContent(f"messages.{i}.content.{j}: must be an object")
            else:
                raise _unsupported(f"messages.{i}.content.{j}", f"block type {kind!r} in an assistant message")
        if not texts and not calls:
            return  # e.g. only thinking: nothing the upstream can use
        message: dict[str, Any] = {
            "role": "assistant",
            "content": (texts[0] if len(texts) == 1 else _JOIN.join(texts)) if texts else None,
        }
        if calls:
            message["tool_calls"] = calls
        self._append(message)
        if calls:
            # Merging may have put these calls on the previous assistant message: point at the one in `out`.
            self.open_calls = {c["id"] for c in self.out[-1]["tool_calls"]}
            self.tool_slot = len(self.out)
        elif self.out[-1] is message:
            self.open_calls = set()

    def user(self, content: Any, i: int) -> None:
        if isinstance(content, str):
            if content:
                self._append({"role": "user", "content": content})
            return
        if not isinstance(content, list):
            raise UnsupportedContent(f"messages.{i}.content: must be a string or a list of content blocks")
        parts: list[dict] = []
        tool_images: list[dict] = []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                text = _block_text(block, i, j)
                if text:
                    parts.append({"type": "text", "text": text})
            elif kind == "tool_result":
                self._tool_result(block, f"messages.{i}.content.{j}", parts, tool_images)
            elif kind == "image":
                parts.append(_image_part(block, f"messages.{i}.content.{j}"))
            elif kind == "document":
                parts.extend(_document_parts(block, f"messages.{i}.content.{j}"))
            elif kind in _DROPPED_BLOCKS:
                continue
            elif not isinstance(block, dict):
                raise UnsupportedContent(f"messages.{i}.content.{j}: must be an object")
            else:
                raise _unsupported(f"messages.{i}.content.{j}", f"block type {kind!r}")
        parts = tool_images + parts if tool_images else parts
        if parts:
            self._append({"role": "user", "content": _parts_to_content(parts)})

    def _tool_result(self, block: dict, path: str, parts: list[dict], tool_images: list[dict]) -> None:
        call_id = block.get("tool_use_id")
        if not isinstance(call_id, str):
            raise UnsupportedContent(f"{path}.tool_use_id: must be a string")
        texts, images = _tool_result_content(block.get("content"), path)
        text = texts[0] if len(texts) == 1 else _JOIN.join(texts)
        if block.get("is_error") is True:
            text = TOOL_ERROR_PREFIX + text if text else TOOL_ERROR_PREFIX.rstrip()
        if call_id in self.open_calls:
            self.open_calls.discard(call_id)
            self.out.insert(self.tool_slot, {"role": "tool", "tool_call_id": call_id, "content": text})
            self.tool_slot += 1
        else:
            # No matching tool call before it (e.g. history trimmed): OpenAI would reject a tool message,
            # so the result stays visible as user text.
            parts.append({"type": "text", "text": f"[tool result for {call_id}]\n{text}"})
        if images:
            tool_images.append({"type": "text", "text": f"Image(s) returned by tool call {call_id}:"})
            tool_images.extend(images)


def _tool_result_content(content: Any, path: str) -> tuple[list[str], list[dict]]:
    if content is None:
        return [], []
    if isinstance(content, str):
        return ([content] if content else []), []
    if not isinstance(content, list):
        raise UnsupportedContent(f"{path}.content: must be a string or a list of content blocks")
    texts: list[str] = []
    images: list[dict] = []
    for k, item in enumerate(content):
        kind = item.get("type") if isinstance(item, dict) else None
        sub = f"{path}.content.{k}"
        if kind == "text":
            if isinstance(item.get("text"), str) and item["text"]:
                texts.append(item["text"])
        elif kind == "image":
            images.append(_image_part(item, sub))
        elif kind == "document":
            for part in _document_parts(item, sub):
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    images.append(part)
        else:
            raise _unsupported(sub, f"block type {kind!r} in a tool_result")
    return texts, images


def _merge(prev: dict, message: dict) -> None:
    """Merge two consecutive same-role messages (OpenAI upstreams often reject or mis-template them)."""
    a, b = prev.get("content"), message.get("content")
    if a is None or b is None:
        prev["content"] = a if b is None else b
    elif isinstance(a, str) and isinstance(b, str):
        prev["content"] = a + _JOIN + b
    else:
        la = [{"type": "text", "text": a}] if isinstance(a, str) else a
        lb = [{"type": "text", "text": b}] if isinstance(b, str) else b
        prev["content"] = la + lb
    if "tool_calls" in message:
        prev["tool_calls"] = prev.get("tool_calls", []) + message["tool_calls"]


def _tools(tools: Any) -> list[dict]:
    if not isinstance(tools, list):
        return []
    out = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        schema = tool.get("input_schema")
        name = tool.get("name")
        if not isinstance(schema, dict) or not isinstance(name, str):
            # Anthropic server tools (web_search_20250305, bash_20250124, text_editor_…) run at Anthropic.
            log.debug("translation: skipping tool %r (type %r) without input_schema", name, tool.get("type"))
            continue
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if isinstance(description, str) and description:
            function["description"] = description
        function["parameters"] = clean_schema(schema)
        out.append({"type": "function", "function": function})
    return out


def _user_hash(metadata: Any) -> str | None:
    """A stable 32-hex-char hash of metadata.user_id (OpenAI's `user` takes at most 64 characters).

    Claude Code's user_id is a JSON string with a per-session `session_id`; it is left out so one
    device/account keeps one hash across sessions.
    """
    if not isinstance(metadata, dict):
        return None
    user_id = metadata.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        return None
    key = user_id
    if user_id[:1] == "{":
        try:
            parsed = json.loads(user_id)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            parsed.pop("session_id", None)
            key = json.dumps(parsed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _block_text(block: dict, i: int, j: int) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise UnsupportedContent(f"messages.{i}.content.{j}.text: must be a string")
    return text
