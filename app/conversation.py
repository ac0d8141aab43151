"""Which conversation a request belongs to: pure, read from the request body.

Claude Code puts its session in `metadata.user_id`, as a JSON string
(`{"device_id": …, "account_uuid": …, "session_id": …}`) since 2.x, and before that as
`user_<hash>_account_<uuid>_session_<uuid>`. One conversation keeps one session id across its turns,
so it is what keeps a conversation on one credential and one upstream prompt cache.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

_LEGACY_SESSION = re.compile(r"_session_([0-9A-Za-z-]{8,64})$")


def session_id(body: Any) -> str | None:
    """The Claude Code session id of a Messages request body, or None."""
    if not isinstance(body, dict):
        return None
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user_id, str) or not user_id:
        return None
    if user_id[:1] == "{":
        try:
            parsed = json.loads(user_id)
        except (ValueError, RecursionError):
            return None
        sid = parsed.get("session_id") if isinstance(parsed, dict) else None
        return sid if isinstance(sid, str) and sid else None
    match = _LEGACY_SESSION.search(user_id)
    return match.group(1) if match else None


def conversation_key(body: Any, client_key: str | None = None) -> str | None:
    """A stable key for the conversation: the session id, else a hash of the client key and the first user text.

    None when neither exists (a body with no user message cannot be told apart from any other).
    """
    sid = session_id(body)
    if sid:
        return "s:" + sid
    first = _first_user_text(body)
    if first is None:
        return None
    digest = hashlib.sha256()
    digest.update((client_key or "").encode("utf-8", "replace"))
    digest.update(b"\0")
    digest.update(first.encode("utf-8", "replace"))
    return "h:" + digest.hexdigest()[:32]


def _first_user_text(body: Any) -> str | None:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return None
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
            return "\n".join(t for t in texts if isinstance(t, str))
        return None
    return None
