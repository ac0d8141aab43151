"""The shape of a client key and the one hash the store keeps of it."""
from __future__ import annotations

import hashlib
import secrets

PREFIX = "sk-nexus-"
# 32 random bytes: 256 bits, twice the 128 the keys need, as url-safe base64 (43 characters).
_RANDOM_BYTES = 32


def generate_key() -> str:
    return PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def hash_key(key: str) -> str:
    """SHA-256 of the key, hex. The store holds only this and the last 4 characters."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_key(value: str | None) -> bool:
    return bool(value) and value.startswith(PREFIX)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)
