"""Anthropic Messages request -> OpenAI Responses API request (pure; rules in docs/translation.md).

The conversation becomes `input` items in the original order: messages (`input_text`, `output_text`,
`input_image`, `input_file`), `function_call` / `function_call_output` items, and `reasoning` items
rebuilt from thinking blocks the proxy signed. The proxy keeps no state upstream (`store: false`), so
reasoning travels as encrypted content inside the thinking block's signature.
"""
from __future__ import annotations

import logging
from typing import Any

from ..conversation import session_id
from ..jsoncodec import dumps_lenient

from . import reasoning as reasoning_items
from .models import Route
from .request import (TOOL_ERROR_PREFIX, Options, UnsupportedContent, _block_text, _document_parts, _image_part,
                      _system_text, _unsupported, _user_hash, each_message)
from .request import _tools as _chat_tools
from .thinking import reasoning_effort

log = logging.getLogger(__name__)

INCLUDE = ("reasoning.encrypted_content",)
MIN_OUTPUT_TOKENS = 16  # the Responses API refuses a smaller max_output_tokens
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def anthropic_to_responses(body: dict, route: Route, *, stream: bool, signing_key: bytes,
                           server_tools: str = "error", upstream: str = "") -> dict:
    """Build the Responses API body. Only fields listed here are sent (an allow-list).

    `server_tools` is SERVER_TOOLS (Anthropic-only server tools refused or dropped, as on the Chat path);
    `upstream` names the upstream in error messages.
    """
    out: dict[str, Any] = {"model": route.model}
    system = body.get("system")
    if system:
        text = _system_text(system, "system")
        if text:
            out["instructions"] = text
    out["input"] = _Input(signing_key).build(body.get("messages") or ())
    if route.max_tokens is not None:
        out["max_output_tokens"] = max(route.max_tokens, MIN_OUTPUT_TOKENS)
    if stream:
        out["stream"] = True
    if not route.reasoning:
        # Reasoning models refuse sampling parameters; Anthropic forbids them with thinking too.
        for key in ("temperature", "top_p"):
            value = body.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = value
    tools = _tools(body.get("tools"), body.get("tool_choice"),
                   Options(signing_key=signing_key, server_tools=server_tools, upstream=upstream))
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "tool" and isinstance(choice.get("name"), str):
                out["tool_choice"] = {"type": "function", "name": choice["name"]}
            elif kind in _TOOL_CHOICE:
                out["tool_choice"] = _TOOL_CHOICE[kind]
            if choice.get("disable_parallel_tool_use") is True:
                out["parallel_tool_calls"] = False
    if route.reasoning:
        out["reasoning"] = {"effort": reasoning_effort(body) or "medium", "summary": "auto"}
    out["store"] = False
    out["include"] = list(INCLUDE)
    session = session_id(body)
    if session:
        out["prompt_cache_key"] = session[:64]
    user = _user_hash(body.get("metadata"))
    if user:
        out["safety_identifier"] = user
    return out


def _text_part(text: str) -> dict:
    return {"type": "input_text", "text": text}


def _image(block: dict, path: str) -> dict:
    url = _image_part(block, path)["image_url"]["url"]
    return {"type": "input_image", "image_url": url, "detail": "auto"}


def _document(block: dict, path: str) -> list[dict]:
    """A PDF (base64 or URL) becomes an input_file; text documents stay text (as on the Chat path)."""
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    title = block.get("title") if isinstance(block.get("title"), str) and block.get("title") else None
    if kind == "base64" and source.get("media_type") == "application/pdf" and isinstance(source.get("data"), str):
        filename = title if title and title.lower().endswith(".pdf") else (title or "document") + ".pdf"
        return [{"type": "input_file", "filename": filename,
                 "file_data": "data:application/pdf;base64," + source["data"]}]
    if kind == "url" and isinstance(source.get("url"), str):
        return [{"type": "input_file", "file_url": source["url"]}]
    parts = []
    for part in _document_parts(block, path):
        if part["type"] == "text":
            parts.append(_text_part(part["text"]))
        else:
            parts.append({"type": "input_image", "image_url": part["image_url"]["url"], "detail": "auto"})
    return parts


class _Input:
    """Builds the `input` list; remembers which calls were made so each output has its call."""

    def __init__(self, signing_key: bytes | str) -> None:
        self.key = signing_key
        self.items: list[dict] = []
        self.calls: set[str] = set()

    def build(self, messages: Any) -> list[dict]:
        for i, role, content in each_message(messages):
            if role == "assistant":
                self.assistant(content, i)
            elif role == "user":
                self.user(content, i)
            else:
                text = _system_text(content, f"messages.{i}.content")
                if text:
                    self.items.append({"type": "message", "role": "developer", "content": [_text_part(text)]})
        return self.items

    def _message(self, role: str, parts: list[dict]) -> None:
        if parts:
            self.items.append({"type": "message", "role": role, "content": parts})

    def user(self, content: Any, i: int) -> None:
        if isinstance(content, str):
            if content:
                self._message("user", [_text_part(content)])
            return
        if not isinstance(content, list):
            raise UnsupportedContent(f"messages.{i}.content: must be a string or a list of content blocks")
        parts: list[dict] = []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            path = f"messages.{i}.content.{j}"
            if kind == "text":
                text = _block_text(block, i, j)
                if text:
                    parts.append(_text_part(text))
            elif kind == "tool_result":
                call_id = block.get("tool_use_id")
                if not isinstance(call_id, str):
                    raise UnsupportedContent(f"{path}.tool_use_id: must be a string")
                output = _tool_output(block, path)
                if call_id in self.calls:
                    self._message("user", parts)  # what came before the result stays before it
                    parts = []
                    self.items.append({"type": "function_call_output", "call_id": call_id, "output": output})
                else:
                    # No call before it (history trimmed): the API refuses an orphan output, so it stays text.
                    if isinstance(output, str):
                        parts.append(_text_part(f"[tool result for {call_id}]\n{output}"))
                    else:
                        parts.append(_text_part(f"[tool result for {call_id}]"))
                        parts.extend(output)
            elif kind == "image":
                parts.append(_image(block, path))
            elif kind == "document":
                parts.extend(_document(block, path))
            elif kind in ("thinking", "redacted_thinking"):
                continue
            elif not isinstance(block, dict):
                raise UnsupportedContent(f"{path}: must be an object")
            else:
                raise _unsupported(path, f"block type {kind!r}")
        self._message("user", parts)

    def assistant(self, content: Any, i: int) -> None:
        if isinstance(content, str):
            if content:
                self._message("assistant", [{"type": "output_text", "text": content}])
            return
        if not isinstance(content, list):
            raise UnsupportedContent(f"messages.{i}.content: must be a string or a list of content blocks")
        start = len(self.items)
        texts: list[dict] = []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                text = _block_text(block, i, j)
                if text:
                    texts.append({"type": "output_text", "text": text})
            elif kind == "tool_use":
                call_id, name = block.get("id"), block.get("name")
                if not isinstance(call_id, str) or not isinstance(name, str):
                    raise UnsupportedContent(f"messages.{i}.content.{j}: tool_use needs string id and name")
                self._message("assistant", texts)
                texts = []
                args = block.get("input")
                self.items.append({"type": "function_call", "call_id": call_id, "name": name,
                                   "arguments": dumps_lenient({} if args is None else args).decode()})
                self.calls.add(call_id)
            elif kind == "thinking":
                item = reasoning_items.unseal(block, self.key)
                if item is None:
                    log.debug("translation: dropping a thinking block the proxy did not sign (messages.%d.content.%d)",
                              i, j)
                    continue
                self._message("assistant", texts)
                texts = []
                self.items.append(item)
            elif kind == "redacted_thinking":
                continue
            elif not isinstance(block, dict):
                raise UnsupportedContent(f"messages.{i}.content.{j}: must be an object")
            else:
                raise _unsupported(f"messages.{i}.content.{j}", f"block type {kind!r} in an assistant message")
        self._message("assistant", texts)
        # A reasoning item must be followed by the output it led to; one left at the end of a turn is refused.
        while len(self.items) > start and self.items[-1]["type"] == "reasoning":
            self.items.pop()


def _tool_output(block: dict, path: str) -> str | list[dict]:
    """A tool_result's content as function_call_output `output`: a string, or parts when there are images."""
    content = block.get("content")
    is_error = block.get("is_error") is True
    if content is None or isinstance(content, str):
        text = content or ""
        return (TOOL_ERROR_PREFIX + text if text else TOOL_ERROR_PREFIX.rstrip()) if is_error else text
    if not isinstance(content, list):
        raise UnsupportedContent(f"{path}.content: must be a string or a list of content blocks")
    parts: list[dict] = []
    for k, item in enumerate(content):
        kind = item.get("type") if isinstance(item, dict) else None
        sub = f"{path}.content.{k}"
        if kind == "text":
            if isinstance(item.get("text"), str) and item["text"]:
                parts.append(_text_part(item["text"]))
        elif kind == "image":
            parts.append(_image(item, sub))
        elif kind == "document":
            parts.extend(_document(item, sub))
        else:
            raise _unsupported(sub, f"block type {kind!r} in a tool_result")
    if all(p["type"] == "input_text" for p in parts):
        text = "\n\n".join(p["text"] for p in parts)
        return (TOOL_ERROR_PREFIX + text if text else TOOL_ERROR_PREFIX.rstrip()) if is_error else text
    if is_error:
        parts.insert(0, _text_part(TOOL_ERROR_PREFIX.rstrip()))
    return parts


def _tools(tools: Any, tool_choice: Any, options: Options) -> list[dict]:
    """The Chat path's tools (schemas cleaned, server tools by SERVER_TOOLS) in the Responses shape."""
    out = []
    for tool in _chat_tools(tools, tool_choice, options)[0]:
        function = tool["function"]
        item: dict[str, Any] = {"type": "function", "name": function["name"]}
        if "description" in function:
            item["description"] = function["description"]
        item["parameters"] = function["parameters"]
        # Responses makes functions strict by default, which Claude Code's schemas do not satisfy.
        item["strict"] = False
        out.append(item)
    return out
