"""Thinking across translation: the proxy's own thinking signature and the reasoning-effort mapping (pure).

Signature
---------
Anthropic requires every `thinking` block to carry a `signature`, and clients (Claude Code, the SDK) send
the block back unchanged on the next turn. Thinking the proxy made from an upstream's reasoning is signed
by the proxy, never with something that looks like Anthropic's:

    nxp1.<payload, base64url without padding>.<HMAC-SHA256 of "nxp1." + payload part, base64url>

The payload is whatever the caller needs back on the next turn (Chat Completions: a hash of the thinking
text; the Responses API: the reasoning item's id and encrypted_content). By convention it starts with a
short kind tag and a colon (`chat:`, `resp:`), so one kind is never taken for another. Anthropic's own
signatures are plain base64 and never contain ".", so `verify` tells them apart without a key; a block with
this prefix whose MAC does not match is treated exactly like a foreign one (None).

Reasoning effort
----------------
`reasoning_effort(body)` maps Anthropic's thinking controls to OpenAI's `reasoning_effort`:

- `output_config.effort` wins when present: "low" -> low, "medium" -> medium,
  "high", "xhigh", "max" -> high (OpenAI-style upstreams have nothing above high).
- else `thinking: {"type": "enabled", "budget_tokens": N}`:
  N < 8,192 -> low; 8,192 <= N < 24,576 -> medium; N >= 24,576 -> high.
  The bands bracket Claude Code's own levels ("think" 4,000, "think hard" 10,000, "ultrathink" 31,999).
- anything else (no thinking, "disabled", "adaptive" without an effort, odd types) -> None: the upstream's
  own default applies.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any, Literal

PREFIX = "nxp1."
LOW_BELOW = 8192  # budget_tokens below this -> "low"
MEDIUM_BELOW = 24576  # budget_tokens below this (and >= LOW_BELOW) -> "medium"; at or above -> "high"
MAX_SIGNATURE_CHARS = 1 << 20  # a longer string is not one of ours; never decode unbounded input

Effort = Literal["low", "medium", "high"]
_EFFORTS: dict[str, Effort] = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(signed_part: str, key: bytes) -> str:
    return _b64(hmac.new(key, signed_part.encode("ascii"), hashlib.sha256).digest())


def sign(payload: str, key: bytes) -> str:
    """A proxy signature carrying `payload` (any text), authenticated with `key`."""
    if not key:
        raise ValueError("the thinking signing key is empty")
    body = PREFIX + _b64(payload.encode("utf-8", "surrogatepass"))
    return body + "." + _mac(body, key)


def verify(signature: Any, key: bytes) -> str | None:
    """The payload of a signature this proxy made with `key`; None for anything else (Anthropic's included)."""
    if not isinstance(signature, str) or not key or not signature.startswith(PREFIX):
        return None
    if len(signature) > MAX_SIGNATURE_CHARS:
        return None
    body, dot, mac = signature.rpartition(".")
    if not dot or body.count(".") != 1:  # exactly PREFIX + payload part before the MAC
        return None
    if not (mac.isascii() and body.isascii()) or not hmac.compare_digest(mac, _mac(body, key)):
        return None
    try:
        return _unb64(body[len(PREFIX):]).decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError):
        return None


def is_proxy_signature(signature: Any) -> bool:
    """Whether a signature has this proxy's form (says nothing about whether it is valid)."""
    return isinstance(signature, str) and signature.startswith(PREFIX)


def text_digest(thinking: str) -> str:
    """The `chat:` payload for thinking text: binds a signature to the exact text it was made for."""
    return _digest_payload(hashlib.sha256(thinking.encode("utf-8", "surrogatepass")))


def _digest_payload(h: "hashlib._Hash") -> str:
    return "chat:" + h.hexdigest()[:32]


def sign_thinking_text(thinking: str, key: bytes) -> str:
    return sign(text_digest(thinking), key)


class ThinkingSigner:
    """Signs a thinking block that arrives in fragments (a stream) without keeping its text."""

    __slots__ = ("_key", "_hash")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._hash = hashlib.sha256()

    def add(self, fragment: str) -> None:
        self._hash.update(fragment.encode("utf-8", "surrogatepass"))

    def signature(self) -> str:
        """The signature of everything added, as `sign_thinking_text` would give for the joined text."""
        return sign(_digest_payload(self._hash), self._key)


def verify_thinking_text(thinking: Any, signature: Any, key: bytes) -> bool:
    """True when `signature` is this proxy's signature for exactly this thinking text."""
    if not isinstance(thinking, str):
        return False
    payload = verify(signature, key)
    return payload is not None and hmac.compare_digest(payload, text_digest(thinking))


def without_proxy_thinking(body: Any) -> dict | None:
    """`body` (an Anthropic request) without the thinking blocks this proxy signed, or None when it has none.

    A conversation that began in translation and goes on through passthrough carries the proxy's thinking
    back to Anthropic, which cannot verify the proxy's signature and refuses the whole request. Those
    blocks are the reasoning of another model and mean nothing to Claude, so they are left out; an assistant
    message left empty is left out too (Anthropic joins the consecutive turns around it).
    """
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return None
    kept_messages = []
    changed = False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            kept_messages.append(message)
            continue
        kept = [block for block in content
                if not (isinstance(block, dict) and block.get("type") == "thinking"
                        and is_proxy_signature(block.get("signature")))]
        if len(kept) == len(content):
            kept_messages.append(message)
            continue
        changed = True
        if kept:
            kept_messages.append({**message, "content": kept})
    return {**body, "messages": kept_messages} if changed else None


def reasoning_effort(body: Any) -> Effort | None:
    """OpenAI `reasoning_effort` for an Anthropic request body (rules in the module docstring)."""
    if not isinstance(body, dict):
        return None
    config = body.get("output_config")
    if isinstance(config, dict):
        effort = config.get("effort")
        if isinstance(effort, str) and effort.lower() in _EFFORTS:
            return _EFFORTS[effort.lower()]
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if type(budget) is not int or budget < 1:
        return None
    if budget < LOW_BELOW:
        return "low"
    if budget < MEDIUM_BELOW:
        return "medium"
    return "high"
