"""The key that signs thinking the proxy made (see app/translation/thinking.py), shared by every worker and host.

Where it comes from, first match wins:
1. `THINKING_SIGNING_KEY` (any text of 16+ characters): set it when several hosts share no database.
2. With `DATABASE_URL` (PostgreSQL): a random key generated once and kept in the shared store
   (`nexus_credentials`, key `nexus:thinking-signing-key`), created under the store's lock so a fleet agrees.
3. Otherwise: a random key in a file beside the SQLite usage database (`<dir of USAGE_DB_PATH>/thinking-signing-key`,
   mode 0600), created with O_EXCL so the workers of one host agree (an in-memory database: a per-process key).
If the store or the file cannot be used, a per-process key is used until it can (logged once): signatures made
meanwhile are not recognised by other processes, so that thinking is dropped on its way back, nothing fails.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time

from typing import TYPE_CHECKING

from app.masking import register_secret

if TYPE_CHECKING:
    from app.storage import Storage
    from config.settings import Settings

log = logging.getLogger("nexus.translation")

STORE_KEY = "nexus:thinking-signing-key"
FILE_NAME = "thinking-signing-key"


class ThinkingKey:
    """`get()` -> the signing key (bytes); resolved lazily once, then cached for the process."""

    def __init__(self, settings: "Settings", store: "Storage | None" = None) -> None:
        self._settings = settings
        self._store = store if getattr(store, "supports_credentials", False) else None
        self._key: bytes | None = None
        self._fallback: bytes | None = None
        self._lock = threading.Lock()

    def get(self) -> bytes:
        key = self._key
        if key is not None:
            return key
        with self._lock:
            if self._key is None:
                try:
                    self._key = self._resolve()
                except Exception as exc:  # store down, read-only data dir: keep serving
                    if self._fallback is None:
                        log.warning("thinking signing key unavailable (%s); using a per-process key for now",
                                    type(exc).__name__)
                        self._fallback = secrets.token_bytes(32)
                    return self._fallback
            return self._key

    def _resolve(self) -> bytes:
        configured = self._settings.thinking_signing_key
        if configured:
            register_secret(configured)
            return hashlib.sha256(b"nexus-thinking\0" + configured.encode("utf-8")).digest()
        if self._store is not None:
            return self._from_store()
        return self._from_file()

    def _from_store(self) -> bytes:
        with self._store.credential_lock(STORE_KEY):
            found = self._store.load_credential(STORE_KEY)
            if found and isinstance(found[0], dict) and isinstance(found[0].get("key"), str):
                return _decode(found[0]["key"])
            value = secrets.token_hex(32)
            self._store.save_credential(STORE_KEY, {"type": "thinking-signing-key", "key": value})
            return _decode(value)

    def _from_file(self) -> bytes:
        db_path = self._settings.usage_db_path
        if db_path == ":memory:" or db_path.startswith("file:"):
            # An in-memory store lives in one process: so does its key.
            return secrets.token_bytes(32)
        path = os.path.join(os.path.dirname(os.path.abspath(db_path)), FILE_NAME)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        value = secrets.token_hex(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _read_file(path)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        return _decode(value)


def _read_file(path: str) -> bytes:
    # Another worker may have created it an instant ago and not written it yet.
    for _ in range(50):
        with open(path) as fh:
            text = fh.read().strip()
        if len(text) == 64:
            return _decode(text)
        time.sleep(0.02)
    raise ValueError("the thinking signing key file is not a 64-hex-digit key")


def _decode(text: str) -> bytes:
    key = bytes.fromhex(text)
    register_secret(text)
    return key
