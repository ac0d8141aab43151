"""Anthropic Messages request -> OpenAI Chat Completions request (pure; rules in docs/translation.md)."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Iterator

from ..conversation import session_id
from ..jsoncodec import dumps_lenient

from .models import Route
from .profiles import PROFILES, Profile
from .schema import clean_schema, clean_tool_schema
from .thinking import is_proxy_signature, reasoning_effort, verify_thinking_text

log = logging.getLogger(__name__)

MAX_STOP = 4  # OpenAI accepts at most 4 stop sequences
TOOL_ERROR_PREFIX = "[tool error] "
BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
_JOIN = "\n\n"  # separator between text blocks merged into one OpenAI string
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
# Tools only Anthropic runs: their `type` starts with one of these (web_search_20250305, code_execution_20250825, ...).
SERVER_TOOL_PREFIXES = ("web_search_", "web_fetch_", "code_execution_")
_WEB_SEARCH_PREFIX = "web_search_"
_DEFAULT_PDF_NAME = "document.pdf"
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")  # what OpenAI takes as json_schema.name
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
_UPSTREAM = "cannot be sent to an OpenAI-compatible upstream"


class UnsupportedContent(ValueError):
    """Content the upstream cannot take; the message names its place (e.g. "messages.3.content.0: ...")."""


_ROLES = ("user", "assistant", "system")


def each_message(messages: Any) -> Iterator[tuple[int, str, Any]]:
    """(index, role, content) of each message, for both upstream APIs' converters; a 400 for a message that
    is not an object or whose role is none of user, assistant, system."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise UnsupportedContent(f"messages.{i}: must be an object")
        role = message.get("role")
        if role not in _ROLES:
            raise UnsupportedContent(f"messages.{i}.role: must be one of user, assistant, system")
        yield i, role, message.get("content")


@dataclass(frozen=True)
class Options:
    """What the conversion needs to know about the upstream and the proxy (no I/O: values only)."""

    profile: Profile = PROFILES["generic"]
    signing_key: bytes = b""  # recognises thinking the proxy signed (app/translation/thinking.py)
    server_tools: str = "error"  # SERVER_TOOLS: "error" or "drop"
    upstream: str = ""  # the upstream's host, for error messages

    @property
    def label(self) -> str:
        """How error messages name the upstream: "api.deepseek.com (profile 'deepseek')"."""
        profile = f"profile {self.profile.name!r}"
        return f"{self.upstream} ({profile})" if self.upstream else profile


_DEFAULT_OPTIONS = Options()


def anthropic_to_openai(body: dict, route: Route, *, stream: bool, options: Options | None = None) -> dict:
    """Build the Chat Completions body. Only fields listed here are sent (an allow-list)."""
    opts = options or _DEFAULT_OPTIONS
    profile = opts.profile
    cache = profile.keeps_cache_control(route.model)
    messages: list[dict] = []
    system = body.get("system")
    if system:
        content = _system_content(system, "system", cache)
        if content:
            messages.append({"role": "system", "content": content})
    _Conversation(messages, opts, cache).add_all(body.get("messages") or ())

    out: dict[str, Any] = {"model": route.model, "messages": messages}
    if route.max_tokens is not None:
        out[profile.token_field(route.model)] = route.max_tokens
    if stream:
        out["stream"] = True
        if profile.stream_usage:
            out["stream_options"] = {"include_usage": True}
    if not profile.is_reasoning_model(route.model):  # OpenAI reasoning models refuse non-default sampling
        for key in ("temperature", "top_p"):
            value = body.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = value
    stops = body.get("stop_sequences")
    if isinstance(stops, list):
        stops = [s for s in stops if isinstance(s, str) and s][:MAX_STOP]
        if stops:
            out["stop"] = stops
    tools, web_search = _tools(body.get("tools"), body.get("tool_choice"), opts)
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "tool" and isinstance(choice.get("name"), str):
                out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
            elif kind in _TOOL_CHOICE:
                out["tool_choice"] = _TOOL_CHOICE[kind]
            if choice.get("disable_parallel_tool_use") is True and profile.parallel_tool_calls:
                out["parallel_tool_calls"] = False
    if web_search is not None:
        out["plugins"] = [web_search]
    effort = reasoning_effort(body)
    if effort and profile.sends_effort(route.model, route.reasoning):
        out["reasoning_effort"] = effort
    response_format = _response_format(body, profile, messages)
    if response_format is not None:
        out["response_format"] = response_format
    if profile.prompt_cache_key:
        key = _cache_key(body)
        if key:
            out["prompt_cache_key"] = key
    if profile.user:
        user = _user_hash(body.get("metadata"))
        if user:
            out["user"] = user
    return out


def _unsupported(path: str, what: str) -> UnsupportedContent:
    return UnsupportedContent(f"{path}: {what} {_UPSTREAM}")


def _system_content(system: Any, path: str, cache: bool) -> str | list[dict]:
    """System prompt (string or text blocks); Claude Code's billing-header block is dropped.

    One string, unless `cache` (the upstream honours cache_control) and a block carries cache_control:
    then the text parts, each keeping its own marker.
    """
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise UnsupportedContent(f"{path}: must be a string or a list of text blocks")
    parts: list[dict] = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise _unsupported(f"{path}.{j}", f"system block type {kind!r}")
        text = block.get("text")
        if not isinstance(text, str):
            raise UnsupportedContent(f"{path}.{j}.text: must be a string")
        if text and not text.startswith(BILLING_HEADER_PREFIX):
            parts.append(_text_part(text, block, cache))
    return _parts_to_content(parts) if parts else ""


def _system_text(system: Any, path: str) -> str:
    content = _system_content(system, path, False)
    assert isinstance(content, str)
    return content


def _text_part(text: str, block: dict, cache: bool) -> dict:
    part = {"type": "text", "text": text}
    if cache and isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


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


def _document_parts(block: dict, path: str, opts: Options = _DEFAULT_OPTIONS) -> list[dict]:
    """A document as text parts (text and content sources) or, where the profile takes it, a PDF `file` part."""
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
    if kind in ("base64", "url", "file"):
        return [_pdf_part(block, source, kind, path, opts)]
    raise _unsupported(path, f"block type 'document' with source type {kind!r}")


def _pdf_part(block: dict, source: dict, kind: str, path: str, opts: Options) -> dict:
    media = source.get("media_type")
    if kind == "base64" and media not in (None, "application/pdf"):
        raise _unsupported(path, f"block type 'document' with a base64 {media} source")
    what = {"base64": "a base64 PDF", "url": "a URL PDF", "file": "a file (file_id)"}[kind]
    if kind not in opts.profile.pdf_sources:
        raise UnsupportedContent(
            f"{path}: block type 'document' with {what} cannot be sent to upstream {opts.label}: "
            "it takes no such PDF input (see docs/upstreams.md)")
    title = block.get("title")
    filename = title if isinstance(title, str) and title else _DEFAULT_PDF_NAME
    if kind == "base64":
        data = source.get("data")
        if not isinstance(data, str) or not data:
            raise UnsupportedContent(f"{path}.source.data: must be a non-empty base64 string")
        return {"type": "file", "file": {"filename": filename, "file_data": f"data:application/pdf;base64,{data}"}}
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise UnsupportedContent(f"{path}.source.url: must be a non-empty string")
        return {"type": "file", "file": {"filename": filename, "file_data": url}}
    file_id = source.get("file_id")
    if not isinstance(file_id, str) or not file_id:
        raise UnsupportedContent(f"{path}.source.file_id: must be a non-empty string")
    return {"type": "file", "file": {"file_id": file_id}}


def _parts_to_content(parts: list[dict]) -> str | list[dict]:
    """Text-only parts become one string (every upstream takes that); with images, files or cache_control
    markers, the part list."""
    if all(p["type"] == "text" and "cache_control" not in p for p in parts):
        return parts[0]["text"] if len(parts) == 1 else _JOIN.join(p["text"] for p in parts)
    return parts


class _Conversation:
    """Appends OpenAI messages, keeping tool messages right after the assistant message that called them."""

    def __init__(self, out: list[dict], opts: Options = _DEFAULT_OPTIONS, cache: bool = False) -> None:
        self.out = out
        self.opts = opts
        self.profile = opts.profile
        self.cache = cache  # keep cache_control markers on content parts
        self.open_calls: set[str] = set()  # tool_call ids of the last assistant message with tool_calls
        self.tool_slot = 0  # where the next tool message goes (just after that assistant + earlier results)

    def add_all(self, messages: Any) -> None:
        for i, role, content in each_message(messages):
            if role == "assistant":
                self.assistant(content, i)
            elif role == "user":
                self.user(content, i)
            else:
                # Mid-conversation system message (beta mid-conversation-system): kept at its place.
                text = _system_content(content, f"messages.{i}.content", self.cache)
                if text:
                    self.out.append({"role": "system", "content": text})

    def _append(self, message: dict) -> None:
        out = self.out
        prev = out[-1] if out else None
        if prev is not None and prev["role"] == message["role"] and message["role"] in ("user", "assistant"):
            _merge(prev, message)
        else:
            out.append(message)

    def _thinking(self, block: dict, path: str) -> str | None:
        """The text of thinking the proxy signed, else None (Anthropic's own, redacted or unsigned: dropped)."""
        signature = block.get("signature")
        text = block.get("thinking")
        if block.get("type") == "thinking" and verify_thinking_text(text, signature, self.opts.signing_key):
            return text
        if block.get("type") == "redacted_thinking" or (isinstance(signature, str) and signature
                                                         and not is_proxy_signature(signature)):
            log.debug("translation: %s: dropping thinking signed by Anthropic (an OpenAI-style upstream "
                      "cannot verify or use it)", path)
        else:
            log.debug("translation: %s: dropping thinking without a valid proxy signature", path)
        return None

    def assistant(self, content: Any, i: int) -> None:
        if isinstance(content, str):
            if content:
                self._append({"role": "assistant", "content": content})
            return
        if not isinstance(content, list):
            raise UnsupportedContent(f"messages.{i}.content: must be a string or a list of content blocks")
        texts: list[str] = []
        calls: list[dict] = []
        reasoning: list[str] = []
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
                        "arguments": dumps_lenient({} if args is None else args).decode(),
                    },
                })
            elif kind in _DROPPED_BLOCKS:
                thought = self._thinking(block, f"messages.{i}.content.{j}")
                if thought:
                    reasoning.append(thought)
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
        if self.profile.reasoning_round_trip and (calls or reasoning):
            # DeepSeek's thinking mode refuses a tool-call turn whose reasoning is missing; an empty one is
            # accepted (thinking that came from elsewhere cannot be given back).
            message["reasoning_content"] = "".join(reasoning)
        if calls:
            message["tool_calls"] = calls
        self._append(message)
        if calls:
            # Merging may have put these calls on the previous assistant message: point at the one in `out`.
            self.open_calls = {c["id"] for c in self.out[-1]["tool_calls"]}
            self.tool_slot = len(self.out)
        elif self.out[-1] is message:
            self.open_calls = set()

    def _image(self, block: dict, path: str) -> dict:
        if not self.profile.images:
            raise UnsupportedContent(f"{path}: block type 'image' cannot be sent to upstream "
                                     f"{self.opts.label}: it takes no images (see docs/upstreams.md)")
        part = _image_part(block, path)
        if self.cache and isinstance(block.get("cache_control"), dict):
            part["cache_control"] = block["cache_control"]
        return part

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
                    parts.append(_text_part(text, block, self.cache))
            elif kind == "tool_result":
                self._tool_result(block, f"messages.{i}.content.{j}", parts, tool_images)
            elif kind == "image":
                parts.append(self._image(block, f"messages.{i}.content.{j}"))
            elif kind == "document":
                parts.extend(self._document(block, f"messages.{i}.content.{j}"))
            elif kind in _DROPPED_BLOCKS:
                continue
            elif not isinstance(block, dict):
                raise UnsupportedContent(f"messages.{i}.content.{j}: must be an object")
            else:
                raise _unsupported(f"messages.{i}.content.{j}", f"block type {kind!r}")
        parts = tool_images + parts if tool_images else parts
        if parts:
            self._append({"role": "user", "content": _parts_to_content(parts)})

    def _document(self, block: dict, path: str) -> list[dict]:
        parts = _document_parts(block, path, self.opts)
        if not self.profile.images and any(p["type"] == "image_url" for p in parts):
            raise UnsupportedContent(f"{path}: a document with images cannot be sent to upstream "
                                     f"{self.opts.label}: it takes no images (see docs/upstreams.md)")
        if self.cache and parts and isinstance(block.get("cache_control"), dict):
            parts[-1] = dict(parts[-1], cache_control=block["cache_control"])
        return parts

    def _tool_result(self, block: dict, path: str, parts: list[dict], tool_images: list[dict]) -> None:
        call_id = block.get("tool_use_id")
        if not isinstance(call_id, str):
            raise UnsupportedContent(f"{path}.tool_use_id: must be a string")
        texts, images = _tool_result_content(block.get("content"), path, self.opts)
        if images and not self.profile.images and any(p["type"] == "image_url" for p in images):
            raise UnsupportedContent(f"{path}: a tool_result with images cannot be sent to upstream "
                                     f"{self.opts.label}: it takes no images (see docs/upstreams.md)")
        text = texts[0] if len(texts) == 1 else _JOIN.join(texts)
        if block.get("is_error") is True:
            text = TOOL_ERROR_PREFIX + text if text else TOOL_ERROR_PREFIX.rstrip()
        marker = block.get("cache_control") if self.cache else None
        if call_id in self.open_calls:
            self.open_calls.discard(call_id)
            content: str | list[dict] = text
            if isinstance(marker, dict):
                content = [{"type": "text", "text": text, "cache_control": marker}]
            self.out.insert(self.tool_slot, {"role": "tool", "tool_call_id": call_id, "content": content})
            self.tool_slot += 1
        else:
            # No matching tool call before it (e.g. history trimmed): OpenAI would reject a tool message,
            # so the result stays visible as user text.
            part = {"type": "text", "text": f"[tool result for {call_id}]\n{text}"}
            if isinstance(marker, dict):
                part["cache_control"] = marker
            parts.append(part)
        if images:
            tool_images.append({"type": "text", "text": f"Image(s) returned by tool call {call_id}:"})
            tool_images.extend(images)


def _tool_result_content(content: Any, path: str,
                         opts: Options = _DEFAULT_OPTIONS) -> tuple[list[str], list[dict]]:
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
            for part in _document_parts(item, sub, opts):
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
    if "reasoning_content" in message:  # both halves' reasoning stays with the merged tool calls
        prev["reasoning_content"] = prev.get("reasoning_content", "") + message["reasoning_content"]


def is_server_tool(tool: Any) -> bool:
    """A tool only Anthropic can run (web search, web fetch, code execution)."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    return isinstance(kind, str) and kind.startswith(SERVER_TOOL_PREFIXES)


def _tools(tools: Any, tool_choice: Any, opts: Options) -> tuple[list[dict], dict | None]:
    """(function tools, the OpenRouter web plugin or None). Server tools follow SERVER_TOOLS."""
    if not isinstance(tools, list):
        return [], None
    out = []
    dropped: list[str] = []
    web_plugin: dict | None = None
    for j, tool in enumerate(tools):
        if not isinstance(tool, dict):
            continue
        name = tool.get("name")
        schema = tool.get("input_schema")
        if isinstance(schema, dict) and isinstance(name, str):
            pass  # a function tool (the usual case: checked first, it is every tool Claude Code sends)
        elif is_server_tool(tool):
            kind = tool["type"]
            if kind.startswith(_WEB_SEARCH_PREFIX) and opts.profile.web_search_plugin:
                web_plugin = {"id": "web"}
                uses = tool.get("max_uses")
                if type(uses) is int and uses > 0:
                    web_plugin["max_results"] = min(uses, 10)  # the plugin takes 1-10
                continue
            if opts.server_tools != "drop":
                raise UnsupportedContent(
                    f"tools.{j}: server tool {name!r} (type {kind!r}) runs only at Anthropic; upstream "
                    f"{opts.label} cannot run it. Remove the tool, or set SERVER_TOOLS=drop "
                    "on the proxy to send the request without it")
            log.info("translation: dropping server tool %r (type %r): the upstream cannot run it", name, kind)
            dropped.append(name if isinstance(name, str) else kind)
            continue
        else:
            # Anthropic client tools without a schema (bash_20250124, text_editor_...): nothing to describe.
            log.debug("translation: skipping tool %r (type %r) without input_schema", name, tool.get("type"))
            continue
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if isinstance(description, str) and description:
            function["description"] = description
        function["parameters"] = clean_tool_schema(schema)
        out.append({"type": "function", "function": function})
    if dropped:
        forced = tool_choice.get("name") if isinstance(tool_choice, dict) and tool_choice.get("type") == "tool" else None
        if forced in dropped or (not out and web_plugin is None):
            # A request that is only about the dropped tool (Claude Code's WebSearch asks with nothing else)
            # would come back as an answer that searched nothing: say so instead.
            raise UnsupportedContent(
                f"tools: the request needs server tool {dropped[0]!r}, which runs only at Anthropic; upstream "
                f"{opts.label} cannot run it, so there would be no results")
    return out, web_plugin


def _response_format(body: dict, profile: Profile, messages: list[dict]) -> dict | None:
    """Structured outputs: `output_format` / `output_config.format` with a JSON schema -> response_format."""
    spec = body.get("output_format")
    config = body.get("output_config")
    if not isinstance(spec, dict) and isinstance(config, dict):
        spec = config.get("format")
    if not isinstance(spec, dict) or spec.get("type") != "json_schema":
        return None
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise UnsupportedContent("output_format.schema: must be a JSON Schema object")
    cleaned = clean_schema(schema)
    if profile.structured_output == "json_object":
        # JSON mode only (DeepSeek): the schema goes into the prompt, which must also say "json".
        instruction = ("Respond with a single JSON object, and nothing else, that matches this JSON Schema:\n"
                       + dumps_lenient(cleaned).decode())
        messages.append({"role": "system", "content": instruction})
        return {"type": "json_object"}
    name = spec.get("name")
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
        name = "output"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": cleaned}}


def _cache_key(body: dict) -> str | None:
    """prompt_cache_key: one per Claude Code session, so one conversation keeps hitting one cache."""
    sid = session_id(body)
    if not sid:
        return None
    return "nexus-" + hashlib.sha256(sid.encode("utf-8", "surrogatepass")).hexdigest()[:32]


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
    return _hash_user_id(user_id)


@functools.lru_cache(maxsize=1024)  # one Claude Code session sends the same user_id on every turn
def _hash_user_id(user_id: str) -> str:
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
