"""OpenAI Chat Completions response -> Anthropic Messages response (pure; rules in docs/translation.md)."""
from __future__ import annotations

import json
import re
import secrets
from typing import Any, Sequence

from app.errors import upstream_error_text

_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_USABLE_ID = re.compile(r"[A-Za-z0-9_\-]{1,100}\Z")


class UpstreamFormatError(ValueError):
    """The upstream answered 2xx with something that is not a usable chat completion."""


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def new_tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def message_id_from(upstream_id: Any) -> str:
    """`msg_<upstream id>` when the upstream id is short and plain, else a fresh `msg_…`."""
    if isinstance(upstream_id, str) and _USABLE_ID.match(upstream_id):
        return upstream_id if upstream_id.startswith("msg_") else "msg_" + upstream_id
    return new_message_id()


def parse_arguments(arguments: Any) -> dict:
    """Tool-call arguments as an object; never raises.

    Empty -> {}; a JSON object -> itself; anything else (invalid JSON, an array, a number)
    -> {"_raw": <the original string>} so the client sees what the model produced.
    """
    if isinstance(arguments, dict):
        return arguments
    if arguments is None:
        return {}
    if not isinstance(arguments, str):
        return {"_raw": json.dumps(arguments)}
    if not arguments.strip():
        return {}
    try:
        parsed = json.loads(arguments, parse_float=_finite_float, parse_constant=_no_constant)
    except ValueError:
        return {"_raw": arguments}
    return parsed if isinstance(parsed, dict) else {"_raw": arguments}


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):  # 1e999: no JSON spelling for the client
        raise ValueError(text)
    return value


def _no_constant(name: str):
    raise ValueError(name)


def map_stop_reason(
    finish_reason: Any, *, has_tool_calls: bool, matched_stop: Any = None, stop_sequences: Sequence[str] = ()
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for an OpenAI finish_reason."""
    if finish_reason == "stop" and isinstance(matched_stop, str) and matched_stop in stop_sequences:
        return "stop_sequence", matched_stop  # vLLM names the matched stop string in `stop_reason`
    reason = _FINISH.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"
    if has_tool_calls and reason == "end_turn":
        reason = "tool_use"
    return reason, None


def map_usage(usage: Any, fallback_input_tokens: int = 0) -> dict:
    """Anthropic usage from OpenAI usage.

    Anthropic's input_tokens excludes cache reads, OpenAI's prompt_tokens includes them, so
    input_tokens = prompt_tokens - cached and cache_read_input_tokens = cached (only when reported).
    """
    if not isinstance(usage, dict):
        return {"input_tokens": fallback_input_tokens, "output_tokens": 0}
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    cached = cached_tokens(usage)
    out = {
        "input_tokens": max(prompt - (cached or 0), 0) if prompt is not None else fallback_input_tokens,
        "output_tokens": completion or 0,
    }
    if cached is not None:
        out["cache_read_input_tokens"] = cached
    return out


def cached_tokens(usage: dict) -> int | None:
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        cached = _int(details.get("cached_tokens"))
        if cached is not None:
            return cached
    return _int(usage.get("prompt_cache_hit_tokens"))  # DeepSeek's name for it


def _int(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some upstreams return content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def openai_to_anthropic(
    resp: dict,
    *,
    model: str,
    message_id: str | None = None,
    stop_sequences: Sequence[str] = (),
    input_tokens: int = 0,
) -> dict:
    """The Anthropic message for a non-streaming chat completion.

    `model` is the model the client asked for; `input_tokens` is used only when the upstream
    reports no usage. Raises UpstreamFormatError for an error body or one without choices.
    """
    if not isinstance(resp, dict):
        raise UpstreamFormatError("Upstream response is not a JSON object")
    if resp.get("error"):
        raise UpstreamFormatError(f"Upstream returned an error: {upstream_error_text(resp['error'])}")
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamFormatError("Upstream response has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise UpstreamFormatError("Upstream response choice has no message")

    content: list[dict] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        calls = []
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        calls = [*calls, {"function": legacy}]
    for call in calls:
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        call_id = call.get("id")
        content.append({
            "type": "tool_use",
            "id": call_id if isinstance(call_id, str) and call_id else new_tool_id(),
            "name": function.get("name") if isinstance(function.get("name"), str) else "",
            "input": parse_arguments(function.get("arguments")),
        })

    has_tools = any(block["type"] == "tool_use" for block in content)
    stop_reason, stop_sequence = map_stop_reason(
        choice.get("finish_reason"),
        has_tool_calls=has_tools,
        matched_stop=choice.get("stop_reason"),
        stop_sequences=stop_sequences,
    )
    return {
        "id": message_id or message_id_from(resp.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": map_usage(resp.get("usage"), input_tokens),
    }
