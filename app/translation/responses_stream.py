"""OpenAI Responses API stream events -> Anthropic SSE events, one event at a time (pure state machine).

Each output item is one Anthropic block: `response.output_item.added` starts it and `.done` stops it.
Items stream one after another, so blocks never interleave; a delta for an item that was never added
opens its block, and a delta for an item already done is dropped (its block was stopped).
"""
from __future__ import annotations

import math
from typing import Any

from ..errors import sse_error_event
from ..usage import TEXT_CAP, Usage

from . import reasoning as reasoning_items
from .response import message_id_from, new_message_id, new_tool_id
from .responses_response import cached_input_tokens, failure, stop_reason_for
from .stream import PING, StreamFailure, _delta_event, format_sse

_REASONING, _MESSAGE, _FUNCTION = "reasoning", "message", "function_call"
# Events that add nothing to what the deltas and the item events carry (several repeat the whole text):
# a relay may skip them by their SSE event name without parsing them.
IGNORED_EVENTS = frozenset({
    "response.queued", "response.in_progress", "response.content_part.added", "response.content_part.done",
    "response.output_text.done", "response.refusal.done", "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done", "response.function_call_arguments.done",
    "response.output_text.annotation.added",
})
_SEPARATOR = reasoning_items.SUMMARY_JOIN
_MESSAGE_STOP = format_sse("message_stop", {"type": "message_stop"})


def _item_key(event: dict) -> Any:
    """Which block an event is for: its output_index, else (an upstream that leaves it out) its item_id."""
    output_index = event.get("output_index")
    return output_index if type(output_index) is int else event.get("item_id")


class _Block:
    __slots__ = ("kind", "index", "item_id", "closed", "parts", "streamed", "call_id", "name")

    def __init__(self, kind: str, index: int, item: dict) -> None:
        self.kind = kind
        self.index = index
        self.item_id = item.get("id")
        self.closed = False
        self.parts: list[int] = []  # reasoning: length of each summary part sent
        self.streamed = False  # any delta sent
        self.call_id = ""  # only a tool_use block shows one (so only a call draws a random one)
        if kind == _FUNCTION:
            call_id = item.get("call_id")
            self.call_id = call_id if isinstance(call_id, str) and call_id else new_tool_id()
        self.name = item.get("name") if isinstance(item.get("name"), str) else ""


class ResponsesStreamTranslator(StreamFailure):
    """Turns parsed Responses API stream events into Anthropic SSE bytes. One per response."""

    def __init__(self, *, model: str, signing_key: bytes | str, input_tokens: int = 0) -> None:
        self.model = model
        self.key = signing_key
        self._estimate = input_tokens
        self.message_id = new_message_id()
        self._started = False
        self._finished = False
        self._failed = False
        self._done = False
        self._index = -1
        self._open: _Block | None = None
        self._blocks: dict[Any, _Block] = {}  # by output_index
        self._tool_names: list[str] = []
        self._text: list[str] = []
        self._text_len = 0
        self._chars = 0
        self._refused = False
        self._usage: dict | None = None
        self._cached: int | None = None  # the usage's cached input tokens, when it reports them
        self._stop_reason: str | None = None
        self._error: tuple[str, str] | None = None

    # -- public ---------------------------------------------------------------------------------

    def start(self, response: Any = None) -> bytes:
        if self._started:
            return b""
        self._started = True
        if isinstance(response, dict) and response.get("id"):
            self.message_id = message_id_from(response.get("id"))
        message = {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self._estimate, "output_tokens": 0},
        }
        return format_sse("message_start", {"type": "message_start", "message": message}) + PING

    def feed(self, event: dict) -> bytes:
        """The Anthropic events one parsed Responses event causes (b"" if none)."""
        if self._finished or not isinstance(event, dict):
            return b""
        kind = event.get("type")
        if kind == "response.output_text.delta" and self._started:
            # Most events of an answer are this one, for the block already open: it goes out without the
            # general path (any other case, such as a block not yet open, takes it below).
            block = self._blocks.get(_item_key(event))
            delta = event.get("delta")
            if block is not None and not block.closed and isinstance(delta, str) and delta:
                return self._text_event(block, delta)
        out: list[bytes] = []
        if kind == "response.created":
            return self.start(event.get("response"))
        if not self._started:
            out.append(self.start(event.get("response")))
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            if kind == "response.refusal.delta":
                self._refused = True
            self._text_delta(event, out)
        elif kind == "response.reasoning_summary_text.delta":
            self._summary_delta(event, out)
        elif kind == "response.function_call_arguments.delta":
            delta = event.get("delta")
            block = self._block_for(event, _FUNCTION, out)
            if block is not None and isinstance(delta, str) and delta:
                self._emit(block, "input_json_delta", "partial_json", delta, out)
        elif kind == "response.reasoning_summary_part.added":
            block = self._block_for(event, _REASONING, out)
            if block is not None:
                self._summary_part(block, event.get("summary_index"), out)
        elif kind == "response.output_item.added":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") in (_REASONING, _MESSAGE, _FUNCTION):
                self._open_block(event.get("output_index"), item, out)
        elif kind == "response.output_item.done":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") in (_REASONING, _MESSAGE, _FUNCTION):
                self._item_done(event.get("output_index"), item, out)
        elif kind in ("response.completed", "response.incomplete"):
            response = event.get("response") if isinstance(event.get("response"), dict) else {}
            self._usage = response.get("usage") if isinstance(response.get("usage"), dict) else None
            self._cached = cached_input_tokens(self._usage)
            open_block = self._open
            if open_block is not None and open_block.kind == _REASONING and isinstance(response.get("output"), list):
                # its .done never came: the final output still holds the encrypted content
                item = next((i for i in response["output"] if isinstance(i, dict)
                             and i.get("id") == open_block.item_id), None)
                if item is not None:
                    self._close(open_block, item, out)
            self._stop_reason = stop_reason_for(
                response.get("status") or kind.rsplit(".", 1)[1], response.get("incomplete_details"),
                has_tool_calls=bool(self._tool_names), refused=self._refused)
            out.append(self.finish())
        elif kind == "response.failed":
            response = event.get("response") if isinstance(event.get("response"), dict) else {}
            failed = failure(response.get("error"))
            out.append(self.error(failed.error_type, failed.message))
        elif kind == "error":
            error = event.get("error") if isinstance(event.get("error"), dict) else event
            failed = failure({k: error.get(k) for k in ("code", "message", "type") if error.get(k) is not None})
            out.append(self.error(failed.error_type, failed.message))
        return b"".join(out)

    def finish(self) -> bytes:
        """Stop the open block, then message_delta and message_stop. Idempotent."""
        if self._finished:
            return b""
        out: list[bytes] = []
        if not self._started:
            out.append(self.start())
        if self._open is not None:
            self._close(self._open, None, out)
        if self._stop_reason is None:
            self._stop_reason = "tool_use" if self._tool_names else ("refusal" if self._refused else "end_turn")
        usage: dict[str, int] = {"output_tokens": self.output_tokens}
        if self._usage_reported:
            usage["input_tokens"] = self.input_tokens
            if self._cached is not None:
                usage["cache_read_input_tokens"] = self.cache_read_input_tokens
        out.append(format_sse("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
            "usage": usage,
        }))
        out.append(_MESSAGE_STOP)
        self._finished = True
        self._done = True
        return b"".join(out)

    def error(self, error_type: str, message: str) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        self._failed = True
        self._done = True
        self._error = (error_type, message)
        return sse_error_event(error_type, message)

    # -- accounting -----------------------------------------------------------------------------

    def usage(self) -> Usage:
        """What the stream has used and said so far; an error it sent is reported with it."""
        return Usage(self.input_tokens, self.output_tokens, 0, self.cache_read_input_tokens, self.tool_names,
                     self.text, (self.error_type or "api_error") if self._failed else None, self.error_message)

    @property
    def _usage_reported(self) -> bool:
        return self._usage is not None and type(self._usage.get("input_tokens")) is int

    @property
    def input_tokens(self) -> int:
        if not self._usage_reported:
            return self._estimate
        return max(self._usage["input_tokens"] - self.cache_read_input_tokens, 0)

    @property
    def output_tokens(self) -> int:
        if self._usage is not None and type(self._usage.get("output_tokens")) is int:
            return self._usage["output_tokens"]
        return math.ceil(self._chars / 4)

    @property
    def reasoning_tokens(self) -> int:
        details = self._usage.get("output_tokens_details") if self._usage else None
        value = details.get("reasoning_tokens") if isinstance(details, dict) else None
        return value if type(value) is int and value >= 0 else 0

    @property
    def cache_read_input_tokens(self) -> int:
        return self._cached or 0

    @property
    def tool_calls(self) -> int:
        return len(self._tool_names)

    @property
    def tool_names(self) -> list[str]:
        return list(self._tool_names)

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    @property
    def done(self) -> bool:
        """A terminal event (completed, incomplete, failed, error) was seen: nothing more will come."""
        return self._done

    @property
    def started(self) -> bool:
        return self._started

    # -- internals ------------------------------------------------------------------------------

    def _open_block(self, output_index: Any, item: dict, out: list[bytes]) -> _Block | None:
        key = output_index if type(output_index) is int else item.get("id")
        existing = self._blocks.get(key)
        if existing is not None:
            return None if existing.closed else existing
        if self._open is not None:
            self._close(self._open, None, out)
        self._index += 1
        kind = item["type"]
        block = self._blocks[key] = _Block(kind, self._index, item)
        self._open = block
        if kind == _REASONING:
            content: dict = {"type": "thinking", "thinking": "", "signature": ""}
        elif kind == _MESSAGE:
            content = {"type": "text", "text": ""}
        else:
            self._tool_names.append(block.name)
            content = {"type": "tool_use", "id": block.call_id, "name": block.name, "input": {}}
        out.append(format_sse("content_block_start",
                              {"type": "content_block_start", "index": block.index, "content_block": content}))
        return block

    def _block_for(self, event: dict, kind: str, out: list[bytes]) -> _Block | None:
        """The open block for a delta's item, opening one if the item was never added; None if it is done."""
        block = self._blocks.get(_item_key(event))
        if block is None:
            return self._open_block(event.get("output_index"), {"type": kind, "id": event.get("item_id")}, out)
        return None if block.closed else block

    def _emit(self, block: _Block, delta_type: str, field: str, fragment: str, out: list[bytes]) -> None:
        out.append(self._delta(block, delta_type, field, fragment))

    def _delta(self, block: _Block, delta_type: str, field: str, fragment: str) -> bytes:
        block.streamed = True
        self._chars += len(fragment)
        return _delta_event(block.index, delta_type, field, fragment)

    def _text_delta(self, event: dict, out: list[bytes]) -> None:
        delta = event.get("delta")
        block = self._block_for(event, _MESSAGE, out)
        if block is None or not isinstance(delta, str) or not delta:
            return
        out.append(self._text_event(block, delta))

    def _text_event(self, block: _Block, delta: str) -> bytes:
        """The event for a text fragment of `block`; the text is kept (up to TEXT_CAP) for the record."""
        if self._text_len < TEXT_CAP:
            piece = delta[: TEXT_CAP - self._text_len]
            self._text.append(piece)
            self._text_len += len(piece)
        return self._delta(block, "text_delta", "text", delta)

    def _summary_part(self, block: _Block, summary_index: Any, out: list[bytes]) -> None:
        """Start summary parts up to `summary_index`; parts after the first are set off by a blank line."""
        target = summary_index if type(summary_index) is int and summary_index >= 0 else len(block.parts)
        while len(block.parts) <= target:
            if block.parts:
                self._emit(block, "thinking_delta", "thinking", _SEPARATOR, out)
            block.parts.append(0)

    def _summary_delta(self, event: dict, out: list[bytes]) -> None:
        delta = event.get("delta")
        block = self._block_for(event, _REASONING, out)
        if block is None or not isinstance(delta, str) or not delta:
            return
        index = event.get("summary_index")
        index = index if type(index) is int and index >= 0 else max(len(block.parts) - 1, 0)
        self._summary_part(block, index, out)
        block.parts[index] += len(delta)
        self._emit(block, "thinking_delta", "thinking", delta, out)

    def _item_done(self, output_index: Any, item: dict, out: list[bytes]) -> None:
        key = output_index if type(output_index) is int else item.get("id")
        block = self._blocks.get(key)
        if block is None:
            block = self._open_block(output_index, item, out)
        if block is None or block.closed:
            return
        if not block.streamed:
            # Nothing came as deltas: the finished item holds it all.
            if block.kind == _MESSAGE:
                for part in item.get("content") or ():
                    if not isinstance(part, dict):
                        continue
                    if part.get("type") == "output_text" and isinstance(part.get("text"), str) and part["text"]:
                        self._text_delta({"output_index": output_index, "item_id": item.get("id"),
                                          "delta": part["text"]}, out)
                    elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                        self._refused = True
                        self._text_delta({"output_index": output_index, "delta": part["refusal"]}, out)
            elif block.kind == _FUNCTION:
                args = item.get("arguments")
                if isinstance(args, str) and args:
                    self._emit(block, "input_json_delta", "partial_json", args, out)
            else:
                for i, text in enumerate(reasoning_items.summary_texts(item)):
                    self._summary_part(block, i, out)
                    if text:
                        block.parts[i] += len(text)
                        self._emit(block, "thinking_delta", "thinking", text, out)
        self._close(block, item, out)

    def _close(self, block: _Block, item: dict | None, out: list[bytes]) -> None:
        if block.kind == _REASONING:
            signature = ""
            encrypted = item.get("encrypted_content") if item else None
            item_id = (item.get("id") if item else None) or block.item_id
            if isinstance(encrypted, str) and encrypted and isinstance(item_id, str):
                # only the parts' lengths are kept: the client sends the thinking text itself back
                signature = reasoning_items.seal(item_id, encrypted, block.parts, self.key)
            out.append(format_sse("content_block_delta", {
                "type": "content_block_delta", "index": block.index,
                "delta": {"type": "signature_delta", "signature": signature}}))
        block.closed = True
        out.append(format_sse("content_block_stop", {"type": "content_block_stop", "index": block.index}))
        if self._open is block:
            self._open = None
