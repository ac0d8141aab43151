"""OpenAI chat.completion.chunk stream -> Anthropic SSE events, one chunk at a time (pure state machine).

Anthropic content blocks cannot interleave: one block is open at a time and indices only grow.
OpenAI may interleave parallel tool calls (fragments of call 0 and call 1 alternating), so:

- Output for the open block is emitted at once.
- Output for another block closes the open one and opens a new block, *unless* the open block is
  a tool call whose arguments are not yet a complete JSON value: then that output waits in a queue
  (order kept) until the open call's arguments complete, or until finish().
- At finish() the open block is closed and whatever still waits is emitted block by block,
  one block per key in first-seen order, so every tool's accumulated input is exactly the
  concatenation of its fragments.
- A fragment for a tool call that was already closed (its arguments were complete JSON) can only be
  whitespace or make the JSON invalid; it is counted but not emitted.
"""
from __future__ import annotations

import json
import math
from json.encoder import encode_basestring as _json_string
from json.encoder import encode_basestring_ascii as _json_string_ascii
from typing import Any, Sequence

from ..errors import error_type_for_upstream, from_upstream, sse_error_event, upstream_error_text
from ..jsoncodec import dumps_lenient
from ..usage import TEXT_CAP, Usage

from .response import (cache_write_tokens, cached_tokens, citation_text, collect_citations, map_stop_reason,
                       new_message_id, new_tool_id, prompt_tokens)
from .thinking import ThinkingSigner

_TEXT, _THINKING = "text", "thinking"  # block keys; tool-call keys are their OpenAI index (int)


def format_sse(event: str, data: dict) -> bytes:
    """`event: <event>\\ndata: <compact json>\\n\\n` (a lone surrogate from the upstream is escaped)."""
    return b"event: %s\ndata: %s\n\n" % (event.encode(), dumps_lenient(data))


def _delta_event(index: int, kind: str, field: str, fragment: str) -> bytes:
    """content_block_delta without a generic encoder: the hot path of every stream."""
    try:
        text = _json_string(fragment).encode()
    except UnicodeEncodeError:
        text = _json_string_ascii(fragment).encode()
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"%s","%s":%s}}\n\n'
        % (index, kind.encode(), field.encode(), text)
    )


PING = format_sse("ping", {"type": "ping"})


class _Tool:
    __slots__ = ("key", "id", "name", "args", "held", "opened", "closed", "checked", "complete", "late")

    def __init__(self, key: int, call_id: str | None) -> None:
        self.key = key
        self.id = call_id
        self.name: str | None = None
        self.args: list[str] = []  # fragments routed so far
        self.held: list[str] = []  # fragments that arrived before the name
        self.opened = False
        self.closed = False
        self.checked = -1  # len(args) when `complete` was last computed
        self.complete = False
        self.late = 0  # fragments that arrived after the block was closed

    def is_complete(self) -> bool:
        if self.checked != len(self.args):
            self.checked = len(self.args)
            last = next((a for a in reversed(self.args) if a.strip()), "")
            if not last.rstrip().endswith("}"):
                self.complete = False
            else:
                try:
                    json.loads("".join(self.args))
                    self.complete = True
                except ValueError:
                    self.complete = False
        return self.complete


class StreamFailure:
    """How a stream translator says it failed: `_error` is (Anthropic error type, message) once an
    `event: error` went out, and `_failed` is set with it. Shared by both upstream APIs' translators."""

    _error: tuple[str, str] | None = None
    _failed: bool = False

    @property
    def error_type(self) -> str | None:
        """The Anthropic error type sent in the `event: error`, if the stream failed."""
        return self._error[0] if self._error else None

    @property
    def error_message(self) -> str | None:
        return self._error[1] if self._error else None

    @property
    def failed(self) -> bool:
        return self._failed


class StreamTranslator(StreamFailure):
    """Turns parsed OpenAI stream chunks into Anthropic SSE bytes. Not thread-safe; one per response."""

    def __init__(
        self, *, model: str, message_id: str | None = None, stop_sequences: Sequence[str] = (), input_tokens: int = 0,
        signing_key: bytes = b"",
        upstream_host: str = "(unknown)",
    ) -> None:
        self.model = model
        self.upstream_host = upstream_host  # named in an error the upstream reports mid-stream
        self._signing_key = signing_key
        self._signer: ThinkingSigner | None = None  # of the open thinking block
        self._citations: list[tuple[str, str]] = []  # web-plugin sources, sent after the answer
        self.message_id = message_id or new_message_id()
        self.stop_sequences = tuple(stop_sequences)
        self._estimate = input_tokens
        self._started = False
        self._finished = False
        self._failed = False
        self._index = -1  # Anthropic index of the last opened block
        self._open: str | int | None = None  # key of the open block
        self._queue: list[tuple[str | int, str]] = []
        self._draining = False
        self._tools: dict[int, _Tool] = {}
        self._last_tool: _Tool | None = None
        self._text: list[str] = []
        self._text_len = 0
        self._chars = 0  # all generated characters, for an output estimate when usage is missing
        self._finish_reason: Any = None
        self._matched_stop: Any = None
        self._usage: dict | None = None
        self._stop_reason: str | None = None
        self._error: tuple[str, str] | None = None

    # -- public ---------------------------------------------------------------------------------

    def start(self) -> bytes:
        """message_start (usage = the input estimate) and a ping."""
        if self._started:
            return b""
        self._started = True
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._estimate, "output_tokens": 0},
        }
        return format_sse("message_start", {"type": "message_start", "message": message}) + PING

    def feed(self, chunk: dict) -> bytes:
        """The events one parsed OpenAI chunk causes (b"" if none)."""
        if self._finished or not isinstance(chunk, dict):
            return b""
        out: list[bytes] = []
        if not self._started:
            out.append(self.start())
        if chunk.get("error"):
            error = chunk["error"]
            out.append(self.error(error_type_for_upstream(error), from_upstream(
                self.upstream_host, "reported an error mid-stream: " + upstream_error_text(error))))
            return b"".join(out)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, out)
            finish = choice.get("finish_reason")
            if finish == "error":  # OpenRouter's mid-stream error marker without an error object
                out.append(self.error("api_error", "Upstream reported an error during the response"))
                return b"".join(out)
            if finish:
                self._finish_reason = finish
                self._matched_stop = choice.get("stop_reason")
        return b"".join(out)

    def finish(self) -> bytes:
        """Close open blocks, then message_delta and message_stop. Idempotent."""
        if self._finished:
            return b""
        out: list[bytes] = []
        if not self._started:
            out.append(self.start())
        if self._citations:
            self._route(_TEXT, citation_text(self._citations), out)
        for tool in self._tools.values():
            if not tool.opened and tool.name is None:
                tool.name = ""  # never named: still shown, so the client reports an unknown tool
                self._route(tool.key, "".join(tool.held), out)
                tool.held = []
        self._close(out)
        groups: dict[str | int, list[str]] = {}
        for key, fragment in self._queue:
            groups.setdefault(key, []).append(fragment)
        self._queue = []
        for key, fragments in groups.items():
            self._open_block(key, out)
            self._emit(key, "".join(fragments), out)
            self._close(out)

        self._stop_reason, stop_sequence = map_stop_reason(
            self._finish_reason,
            has_tool_calls=bool(self._tools),
            matched_stop=self._matched_stop,
            stop_sequences=self.stop_sequences,
        )
        usage: dict[str, int] = {"output_tokens": self.output_tokens}
        if self._usage_reported:
            usage["input_tokens"] = self.input_tokens
            if cached_tokens(self._usage) is not None:
                usage["cache_read_input_tokens"] = self.cache_read_input_tokens
            if cache_write_tokens(self._usage) is not None:
                usage["cache_creation_input_tokens"] = self.cache_creation_input_tokens
        out.append(format_sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason, "stop_sequence": stop_sequence},
            "usage": usage,
        }))
        out.append(format_sse("message_stop", {"type": "message_stop"}))
        self._finished = True
        return b"".join(out)

    def error(self, error_type: str, message: str) -> bytes:
        """An `event: error`; the stream is over after it."""
        if self._finished:
            return b""
        self._finished = True
        self._failed = True
        self._error = (error_type, message)
        return sse_error_event(error_type, message)

    # -- accounting -----------------------------------------------------------------------------

    def usage(self) -> Usage:
        """What the stream has used and said so far; an error it sent is reported with it."""
        return Usage(self.input_tokens, self.output_tokens, self.cache_creation_input_tokens,
                     self.cache_read_input_tokens, self.tool_names,
                     self.text, (self.error_type or "api_error") if self._failed else None, self.error_message)

    @property
    def _usage_reported(self) -> bool:
        return self._usage is not None and prompt_tokens(self._usage) is not None

    @property
    def input_tokens(self) -> int:
        """Upstream prompt tokens minus cache reads and writes when reported, else the estimate given at start."""
        if not self._usage_reported:
            return self._estimate
        total = prompt_tokens(self._usage) or 0
        return max(total - self.cache_read_input_tokens - self.cache_creation_input_tokens, 0)

    @property
    def output_tokens(self) -> int:
        """Upstream completion tokens, else ~4 characters per token of what was generated."""
        if self._usage is not None and type(self._usage.get("completion_tokens")) is int:
            return self._usage["completion_tokens"]
        return math.ceil(self._chars / 4)

    @property
    def cache_read_input_tokens(self) -> int:
        """Cached prompt tokens the upstream reported (0 when it reported none)."""
        return (cached_tokens(self._usage) or 0) if self._usage is not None else 0

    @property
    def cache_creation_input_tokens(self) -> int:
        """Prompt tokens the upstream reported writing to its cache (0 when it reported none)."""
        return (cache_write_tokens(self._usage) or 0) if self._usage is not None else 0

    @property
    def tool_calls(self) -> int:
        return len(self._tools)

    @property
    def tool_names(self) -> list[str]:
        return [t.name or "" for t in self._tools.values()]

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def stop_reason(self) -> str | None:
        """Final after finish(); before it, the mapped upstream finish_reason if one came, else None."""
        if self._stop_reason is None and self._finish_reason and not self._finished:
            return map_stop_reason(
                self._finish_reason, has_tool_calls=bool(self._tools),
                matched_stop=self._matched_stop, stop_sequences=self.stop_sequences,
            )[0]
        return self._stop_reason

    # -- internals ------------------------------------------------------------------------------

    def _delta(self, delta: dict, out: list[bytes]) -> None:
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._route(_THINKING, reasoning, out)
        content = delta.get("content")
        if isinstance(content, str) and content:
            self._route(_TEXT, content, out)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    self._tool_delta(call, out)
        annotations = delta.get("annotations")
        if annotations is not None:
            collect_citations(annotations, self._citations)

    def _tool_delta(self, call: dict, out: list[bytes]) -> None:
        key = call.get("index")
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else None
        if type(key) is not int:
            # No index (some upstreams): a new id starts a new call, otherwise it continues the last one.
            if call_id is not None and not any(t.id == call_id for t in self._tools.values()):
                key = max(self._tools, default=-1) + 1
            elif self._last_tool is not None:
                key = self._last_tool.key
            else:
                key = 0
        tool = self._tools.get(key)
        if tool is None:
            tool = self._tools[key] = _Tool(key, call_id)
        elif tool.id is None and call_id is not None:
            tool.id = call_id
        self._last_tool = tool
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        name = function.get("name")
        args = function.get("arguments")
        fragment = args if isinstance(args, str) else ""
        if tool.name is None:
            if isinstance(name, str) and name:
                tool.name = name
                held = "".join(tool.held) + fragment
                tool.held = []
                self._route(key, held, out)
            elif fragment:
                tool.held.append(fragment)
            return
        if fragment:
            self._route(key, fragment, out)

    def _closable(self) -> bool:
        key = self._open
        return not isinstance(key, int) or self._tools[key].is_complete()

    def _route(self, key: str | int, fragment: str, out: list[bytes]) -> None:
        if key == self._open:
            self._emit(key, fragment, out)
            if self._queue and not self._draining and isinstance(key, int) and self._closable():
                self._drain(out)
            return
        if isinstance(key, int) and self._tools[key].closed:
            self._tools[key].late += 1
            return
        if self._queue or not self._closable():
            self._queue.append((key, fragment))
            return
        self._close(out)
        self._open_block(key, out)
        self._emit(key, fragment, out)

    def _drain(self, out: list[bytes]) -> None:
        self._draining = True
        try:
            while self._queue and self._closable():
                items, self._queue = self._queue, []
                self._close(out)
                for key, fragment in items:
                    self._route(key, fragment, out)
        finally:
            self._draining = False

    def _open_block(self, key: str | int, out: list[bytes]) -> None:
        self._index += 1
        self._open = key
        if key == _TEXT:
            block: dict[str, Any] = {"type": "text", "text": ""}
        elif key == _THINKING:
            block = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            tool = self._tools[key]
            tool.opened = True
            if tool.id is None:
                tool.id = new_tool_id()
            block = {"type": "tool_use", "id": tool.id, "name": tool.name or "", "input": {}}
        out.append(format_sse(
            "content_block_start", {"type": "content_block_start", "index": self._index, "content_block": block}
        ))

    def _emit(self, key: str | int, fragment: str, out: list[bytes]) -> None:
        if not fragment:
            return
        self._chars += len(fragment)
        if key == _TEXT:
            out.append(_delta_event(self._index, "text_delta", "text", fragment))
            if self._text_len < TEXT_CAP:
                piece = fragment[: TEXT_CAP - self._text_len]
                self._text.append(piece)
                self._text_len += len(piece)
        elif key == _THINKING:
            out.append(_delta_event(self._index, "thinking_delta", "thinking", fragment))
            if self._signing_key:
                if self._signer is None:
                    self._signer = ThinkingSigner(self._signing_key)
                self._signer.add(fragment)
        else:
            self._tools[key].args.append(fragment)
            out.append(_delta_event(self._index, "input_json_delta", "partial_json", fragment))

    def _close(self, out: list[bytes]) -> None:
        key = self._open
        if key is None:
            return
        if key == _THINKING:
            # The real API ends every thinking block with its signature: here the proxy's own, over the
            # block's text, so the next turn can give this reasoning back to the upstream.
            if self._signing_key:
                sig = (self._signer or ThinkingSigner(self._signing_key)).signature()
            else:
                sig = ""
            self._signer = None
            signature = {"type": "signature_delta", "signature": sig}
            out.append(format_sse(
                "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": signature}
            ))
        elif isinstance(key, int):
            self._tools[key].closed = True
        out.append(format_sse("content_block_stop", {"type": "content_block_stop", "index": self._index}))
        self._open = None
