"""The proxy's own thinking signatures and the thinking -> reasoning effort mapping (pure).

Placeholder with the agreed interface until the reasoning-round-trip work lands; that version replaces
this file. `sign` wraps a payload so that only this proxy (holding `key`) can make or read one;
`verify` returns the payload of a signature it made, and None for any other (Anthropic's included).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any

PREFIX = "nexus1."
_EFFORTS = ("low", "medium", "high")


def _key(key: bytes | str) -> bytes:
    return key.encode() if isinstance(key, str) else key


def sign(payload: str, key: bytes | str) -> str:
    data = payload.encode("utf-8")
    mac = hmac.new(_key(key), data, hashlib.sha256).digest()[:16]
    return PREFIX + base64.urlsafe_b64encode(mac + data).decode("ascii")


def verify(signature: Any, key: bytes | str) -> str | None:
    if not isinstance(signature, str) or not signature.startswith(PREFIX):
        return None
    try:
        raw = base64.urlsafe_b64decode(signature[len(PREFIX):].encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    mac, data = raw[:16], raw[16:]
    if len(mac) != 16 or not hmac.compare_digest(mac, hmac.new(_key(key), data, hashlib.sha256).digest()[:16]):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def reasoning_effort(body: dict) -> str | None:
    """low / medium / high for a request that asks for thinking, else None."""
    thinking = body.get("thinking") if isinstance(body, dict) else None
    if not isinstance(thinking, dict):
        return None
    kind = thinking.get("type")
    if kind == "adaptive":
        config = body.get("output_config")
        effort = config.get("effort") if isinstance(config, dict) else None
        if effort in _EFFORTS:
            return effort
        return "high" if effort == "max" else "medium"
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if type(budget) is not int:
            return "medium"
        if budget < 4096:
            return "low"
        if budget < 16384:
            return "medium"
        return "high"
    return None


_PROCESS_KEY = os.urandom(32)


def signing_key(settings: Any) -> bytes:
    """The key thinking signatures are made with."""
    return _PROCESS_KEY
