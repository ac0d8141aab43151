"""A Responses API reasoning item carried in an Anthropic thinking block's `signature` (pure).

The block's `thinking` is the item's summary texts joined by a blank line; the signature is the proxy's
own (app.translation.thinking, kind `resp:`) over the item's id, its encrypted content and the lengths of
the summary parts, so the same item can be rebuilt when the client sends the block back.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from . import thinking

SUMMARY_JOIN = "\n\n"
_KIND = "resp:"  # the payload's kind tag (app.translation.thinking)
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def summary_texts(item: dict) -> list[str]:
    summary = item.get("summary")
    if not isinstance(summary, list):
        return []
    return [p["text"] for p in summary if isinstance(p, dict) and isinstance(p.get("text"), str)]


def seal(item_id: str, encrypted_content: str, lengths: Sequence[int], key: bytes) -> str:
    """The signature for a reasoning item whose summary parts have these lengths."""
    payload = {"id": item_id, "ec": encrypted_content, "p": list(lengths)}
    return thinking.sign(_KIND + _compact(payload), key)


def unseal(block: dict, key: bytes) -> dict | None:
    """The reasoning input item for a thinking block the proxy made from one, else None."""
    payload = thinking.verify(block.get("signature"), key)
    if payload is None or not payload.startswith(_KIND):
        return None  # not the proxy's, or the proxy's over something else (Chat-path thinking text)
    try:
        data = json.loads(payload[len(_KIND):])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    item_id, encrypted = data.get("id"), data.get("ec")
    if not isinstance(item_id, str) or not isinstance(encrypted, str) or not encrypted:
        return None
    text = block.get("thinking") if isinstance(block.get("thinking"), str) else ""
    return {"type": "reasoning", "id": item_id, "summary": _split(text, data.get("p")),
            "encrypted_content": encrypted}


def _split(text: str, lengths: Any) -> list[dict]:
    """The summary parts again: by their recorded lengths when the text is unchanged, else as one part."""
    parts: list[str] = []
    if isinstance(lengths, list) and all(type(n) is int and n >= 0 for n in lengths):
        expected = sum(lengths) + len(SUMMARY_JOIN) * max(len(lengths) - 1, 0)
        if expected == len(text):
            pos = 0
            for n in lengths:
                parts.append(text[pos:pos + n])
                pos += n + len(SUMMARY_JOIN)
    if not parts and text:
        parts = [text]
    return [{"type": "summary_text", "text": p} for p in parts]
