"""OpenAI Responses API response -> Anthropic Messages response (pure; rules in docs/translation.md)."""
from __future__ import annotations

from typing import Any

from . import reasoning as reasoning_items
from ..errors import error_type_for_upstream, upstream_error_text

from .response import UpstreamFormatError, message_id_from, new_tool_id, parse_arguments


class ResponseFailed(Exception):
    """The upstream answered 2xx with a response whose status is `failed`."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def _int(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def counts_input(resp: Any) -> bool:
    """Whether an answer's usage counts its input tokens (else the caller's estimate stands in for them)."""
    usage = resp.get("usage") if isinstance(resp, dict) else None
    return isinstance(usage, dict) and _int(usage.get("input_tokens")) is not None


def cached_input_tokens(usage: Any) -> int | None:
    details = usage.get("input_tokens_details") if isinstance(usage, dict) else None
    return _int(details.get("cached_tokens")) if isinstance(details, dict) else None


def map_usage(usage: Any, fallback_input_tokens: int = 0) -> dict:
    """Anthropic usage: input excludes cached tokens (Anthropic counts cache reads apart); output includes
    the reasoning tokens (OpenAI's output_tokens already counts them)."""
    if not isinstance(usage, dict):
        return {"input_tokens": fallback_input_tokens, "output_tokens": 0}
    total_in = _int(usage.get("input_tokens"))
    cached = cached_input_tokens(usage)
    out = {
        "input_tokens": max(total_in - (cached or 0), 0) if total_in is not None else fallback_input_tokens,
        "output_tokens": _int(usage.get("output_tokens")) or 0,
    }
    if cached is not None:
        out["cache_read_input_tokens"] = cached
    return out


def stop_reason_for(status: Any, incomplete_details: Any, *, has_tool_calls: bool, refused: bool) -> str:
    if status == "incomplete":
        reason = incomplete_details.get("reason") if isinstance(incomplete_details, dict) else None
        if reason == "max_output_tokens":
            return "max_tokens"
        if reason == "content_filter":
            return "refusal"
        return "end_turn"
    if refused:
        return "refusal"
    return "tool_use" if has_tool_calls else "end_turn"


def failure(error: Any) -> ResponseFailed:
    """The Anthropic error type and message for a Responses `error` object."""
    if not isinstance(error, dict):
        return ResponseFailed("api_error", "Upstream response failed")
    return ResponseFailed(error_type_for_upstream(error), upstream_error_text(error))


def reasoning_block(item: dict, signing_key: bytes | str) -> dict | None:
    """A thinking block for a reasoning item (None when it carries neither summary nor encrypted content)."""
    parts = reasoning_items.summary_texts(item)
    encrypted = item.get("encrypted_content")
    item_id = item.get("id")
    signature = ""
    if isinstance(encrypted, str) and encrypted and isinstance(item_id, str):
        signature = reasoning_items.seal(item_id, encrypted, [len(p) for p in parts], signing_key)
    if not parts and not signature:
        return None
    return {"type": "thinking", "thinking": reasoning_items.SUMMARY_JOIN.join(parts), "signature": signature}


def responses_to_anthropic(resp: dict, *, model: str, signing_key: bytes | str, input_tokens: int = 0) -> dict:
    """The Anthropic message for a non-streaming Responses API answer.

    Raises UpstreamFormatError for a body that is no response, ResponseFailed for a failed one.
    """
    if not isinstance(resp, dict):
        raise UpstreamFormatError("Upstream response is not a JSON object")
    if resp.get("status") == "failed" or resp.get("error"):
        raise failure(resp.get("error"))
    output = resp.get("output")
    if not isinstance(output, list):
        raise UpstreamFormatError("Upstream response has no output")
    content: list[dict] = []
    refused = False
    for item in output:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "reasoning":
            block = reasoning_block(item, signing_key)
            if block is not None:
                content.append(block)
        elif kind == "message":
            parts = item.get("content") if isinstance(item.get("content"), list) else []
            for part in parts:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "output_text" and isinstance(part.get("text"), str) and part["text"]:
                    content.append({"type": "text", "text": part["text"]})
                elif part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                    refused = True
                    content.append({"type": "text", "text": part["refusal"]})
        elif kind == "function_call":
            call_id = item.get("call_id")
            content.append({
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else new_tool_id(),
                "name": item.get("name") if isinstance(item.get("name"), str) else "",
                "input": parse_arguments(item.get("arguments")),
            })
    has_tools = any(b["type"] == "tool_use" for b in content)
    return {
        "id": message_id_from(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason_for(resp.get("status"), resp.get("incomplete_details"),
                                       has_tool_calls=has_tools, refused=refused),
        "stop_sequence": None,
        "usage": map_usage(resp.get("usage"), input_tokens),
    }
