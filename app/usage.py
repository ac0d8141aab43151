"""Pure usage helpers: request classification and token/tool extraction from Anthropic answers.

No I/O here. `StreamUsage` sits beside every relayed stream, so it parses only the events it needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .jsoncodec import loads_lenient

if TYPE_CHECKING:
    from .records import RequestRecord

# Slack shows the user's prompt and the assistant's answer; nothing else needs more, so texts stop here.
TEXT_CAP = 4000

_TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
# Anthropic's `usage.cache_creation` object: cache writes by TTL (priced differently) -> our names.
_CACHE_SPLIT_KEYS = (("ephemeral_5m_input_tokens", "cache_creation_5m_input_tokens"),
                     ("ephemeral_1h_input_tokens", "cache_creation_1h_input_tokens"))


def count_system_messages(body: dict) -> int:
    """The product's count: a string `system` is 1 (empty: 0), an array its length, plus `role: system` messages."""
    n = 0
    system = body.get("system")
    if isinstance(system, str):
        n += 1 if system else 0
    elif isinstance(system, list):
        n += len(system)
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict) and m.get("role") == "system":
                n += 1
    return n


@dataclass(slots=True)
class Usage:
    """What one answer used and said, however it was read: a JSON answer in either mode, a passthrough
    stream's side parser, or the stream translator. `apply_usage` puts it on the request record."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    tool_names: list[str] = field(default_factory=list)
    text: str | None = None  # the answer's text, at most TEXT_CAP characters (for Slack)
    error_type: str | None = None  # an error the answer itself reported (an `event: error`)
    error_message: str | None = None
    # cache_creation_input_tokens split by TTL, from `usage.cache_creation` (0 and 0 when the upstream did not say)
    cache_creation_5m_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0

    @property
    def tool_calls(self) -> int:
        return len(self.tool_names)


def apply_usage(rec: "RequestRecord", usage: Usage) -> None:
    """The one place a request record learns its usage. An error already on the record stays."""
    rec.input_tokens = usage.input_tokens
    rec.output_tokens = usage.output_tokens
    rec.cache_creation_input_tokens = usage.cache_creation_input_tokens
    rec.cache_read_input_tokens = usage.cache_read_input_tokens
    rec.cache_creation_5m_input_tokens = usage.cache_creation_5m_input_tokens
    rec.cache_creation_1h_input_tokens = usage.cache_creation_1h_input_tokens
    rec.tool_calls = usage.tool_calls
    rec.tool_names = list(usage.tool_names)
    rec.assistant_text = usage.text
    if rec.error_type is None and usage.error_type:
        rec.error_type = usage.error_type
        rec.error_message = usage.error_message


def classify_request(body: dict) -> str:
    """"query" for exactly one system message, "inference" for more than one.

    Zero system messages counts as "query", so that Reqs = Query + Infer always holds in the report.
    """
    return "inference" if count_system_messages(body) > 1 else "query"


def _int(value: Any) -> int:
    # Upstreams send null for counts they do not know; bools are not counts; 1e999 parses as infinity.
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value > 0 else 0
    if isinstance(value, float):
        return int(value) if value > 0 and math.isfinite(value) else 0
    return 0


def usage_from_message(msg: dict) -> Usage:
    """Token counts, tool calls and (capped) text of an Anthropic message JSON."""
    usage = msg.get("usage") if isinstance(msg, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    out = Usage(*(_int(usage.get(k)) for k in _TOKEN_KEYS))
    split = usage.get("cache_creation")
    if isinstance(split, dict):
        out.cache_creation_5m_input_tokens = _int(split.get(_CACHE_SPLIT_KEYS[0][0]))
        out.cache_creation_1h_input_tokens = _int(split.get(_CACHE_SPLIT_KEYS[1][0]))
    parts: list[str] = []
    size = 0
    content = msg.get("content") if isinstance(msg, dict) else None
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "tool_use":
                out.tool_names.append(str(block.get("name") or ""))
            elif kind == "text" and size < TEXT_CAP:
                text = block.get("text")
                if isinstance(text, str) and text:
                    piece = text[: TEXT_CAP - size]
                    parts.append(piece)
                    size += len(piece)
    out.text = "".join(parts)
    return out


class StreamUsage:
    """Accumulates usage from an Anthropic SSE stream, event by event.

    `feed(event, data)` takes the event name and its data (bytes or str). Only `message_start`,
    `message_delta`, `content_block_start`, `error` and (while text is still wanted)
    `content_block_delta` text deltas are JSON-decoded; everything else costs a string compare.
    """

    __slots__ = (
        "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
        "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens",
        "tool_calls", "tool_names", "error_type", "error_message",
        "_parts", "_size", "_collect_text",
    )

    def __init__(self, collect_text: bool = True) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_creation_input_tokens = 0
        self.cache_read_input_tokens = 0
        self.cache_creation_5m_input_tokens = 0
        self.cache_creation_1h_input_tokens = 0
        self.tool_calls = 0
        self.tool_names: list[str] = []
        self.error_type: str | None = None
        self.error_message: str | None = None
        self._parts: list[str] = []
        self._size = 0
        self._collect_text = collect_text

    @property
    def wants_text(self) -> bool:
        """Text deltas still count (collecting, and under the cap)."""
        return self._collect_text and self._size < TEXT_CAP

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, event: str | None, data: bytes | str) -> None:
        """Account one SSE event. Never raises on malformed data."""
        if not event:
            # A producer that omits `event:` lines: the type is inside the data.
            obj = _loads(data)
            if obj is None:
                return
            event = obj.get("type")
            if not isinstance(event, str):
                return
            self._apply(event, obj, data)
            return
        if event == "content_block_delta":
            # The hot case: most events of a stream. Only text deltas are wanted, and only until the cap.
            if not self._collect_text or self._size >= TEXT_CAP:
                return
            if isinstance(data, bytes):
                if b'"text_delta"' not in data:
                    return
            elif '"text_delta"' not in data:
                return
            obj = _loads(data)
            if obj is not None:
                self._apply(event, obj, data)
            return
        if event in ("message_start", "message_delta", "content_block_start", "error"):
            obj = _loads(data)
            if obj is not None:
                self._apply(event, obj, data)

    def _apply(self, event: str, obj: dict, data: bytes | str) -> None:
        if event == "content_block_delta":
            if not self._collect_text or self._size >= TEXT_CAP:
                return
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    piece = text[: TEXT_CAP - self._size]
                    self._parts.append(piece)
                    self._size += len(piece)
        elif event == "message_start":
            msg = obj.get("message")
            if isinstance(msg, dict):
                self._take_usage(msg.get("usage"))
        elif event == "message_delta":
            self._take_usage(obj.get("usage"))
        elif event == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use":
                self.tool_calls += 1
                self.tool_names.append(str(block.get("name") or ""))
        elif event == "error":
            err = obj.get("error")
            if isinstance(err, dict):
                self.error_type = str(err.get("type") or "api_error")
                msg = err.get("message")
                self.error_message = msg[:500] if isinstance(msg, str) else None
            else:
                self.error_type = "api_error"

    def _take_usage(self, usage: Any) -> None:
        # Counts are cumulative across events, so the largest seen wins; an upstream that repeats
        # a count as 0 or null in `message_delta` does not erase what `message_start` said.
        if not isinstance(usage, dict):
            return
        for key in _TOKEN_KEYS:
            value = _int(usage.get(key))
            if value > getattr(self, key):
                setattr(self, key, value)
        split = usage.get("cache_creation")
        if isinstance(split, dict):
            for theirs, ours in _CACHE_SPLIT_KEYS:
                value = _int(split.get(theirs))
                if value > getattr(self, ours):
                    setattr(self, ours, value)

    def usage(self) -> Usage:
        """What the stream has said so far."""
        return Usage(self.input_tokens, self.output_tokens, self.cache_creation_input_tokens,
                     self.cache_read_input_tokens, list(self.tool_names), self.text, self.error_type,
                     self.error_message, self.cache_creation_5m_input_tokens, self.cache_creation_1h_input_tokens)


def _loads(data: bytes | str) -> dict | None:
    try:
        obj = loads_lenient(data)
    except (ValueError, TypeError):
        return None
    return obj if isinstance(obj, dict) else None
