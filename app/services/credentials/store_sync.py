"""The sync of refreshed OAuth credentials with the shared store (PostgreSQL), so a fleet shares one token."""
from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Iterator

from .credential import parse_credential
from ..oauth import refresh_token_hash

if TYPE_CHECKING:  # pragma: no cover
    from .files import CredentialFile

log = logging.getLogger("app.services.credentials")

HISTORY_MAX = 10  # rotated refresh-token fingerprints kept in the shared store


class StoreDown(Exception):
    """The shared store failed; the caller falls back to the single-host file path."""


class StoreSync:
    def __init__(self, store) -> None:
        self.store = store

    @property
    def enabled(self) -> bool:
        return self.store is not None and bool(getattr(self.store, "supports_credentials", False))

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        try:
            cm = self.store.credential_lock(key)
            cm.__enter__()
        except Exception as exc:
            raise StoreDown(type(exc).__name__) from None
        try:
            yield
        finally:
            try:
                cm.__exit__(None, None, None)
            except Exception as exc:
                log.warning("Releasing the shared credential lock for '%s' failed (%s)", key, type(exc).__name__)

    def load(self, key: str) -> tuple[dict, float] | None:
        try:
            rec = self.store.load_credential(key)
        except Exception as exc:
            raise StoreDown(type(exc).__name__) from None
        if not rec:
            return None
        data, updated_at = rec
        if not isinstance(data, dict) or not isinstance(data.get("oauth"), dict):
            return None
        try:
            parse_credential({"type": "oauth", "oauth": data["oauth"]})
        except ValueError:
            return None
        return data, float(updated_at or 0)

    def save(self, f: "CredentialFile", stored: tuple[dict, float] | None, superseded: tuple) -> None:
        history = list((stored[0].get("rotatedRefreshTokens") or []) if stored else [])
        current = f.data["oauth"].get("refreshToken")
        for token in superseded:
            h = refresh_token_hash(token)
            if token and token != current and h not in history:
                history.append(h)
        payload = {"type": "oauth", "oauth": f.data["oauth"], "rotatedRefreshTokens": history[-HISTORY_MAX:]}
        try:
            self.store.save_credential(f.key, payload)
        except Exception as exc:
            log.warning("Refreshed OAuth credential for '%s' could not be saved to the shared store (%s)",
                        f.key, type(exc).__name__)

    @staticmethod
    def decide(f: "CredentialFile", stored: tuple[dict, float] | None) -> str:
        """"keep" the held copy, adopt the "stored" one, or "push" the held one to the store."""
        if f.kind != "oauth":
            return "keep"
        if stored is None:
            return "push" if f.origin == "refresh" else "keep"  # a file seed is stored at its first refresh
        sdata, updated_at = stored
        mine, theirs = f.data["oauth"], sdata["oauth"]
        if mine.get("accessToken") == theirs.get("accessToken") and \
                mine.get("refreshToken") == theirs.get("refreshToken"):
            return "keep"
        if f.origin == "store":
            return "stored"
        if f.origin == "file" and refresh_token_hash(mine.get("refreshToken")) in \
                (sdata.get("rotatedRefreshTokens") or []):
            return "stored"  # the file still holds a refresh token the fleet has rotated away
        return "push" if f.origin_time > updated_at else "stored"

    def sync(self, f: "CredentialFile", locked: bool) -> None:
        """Reconcile the held copy with the shared store's. Raises StoreDown."""
        stored = self.load(f.key)
        decision = self.decide(f, stored)
        if decision == "stored":
            self.adopt_stored(f, stored)
        elif decision == "push":
            if not locked:
                with self.locked(f.key):
                    return self.sync(f, locked=True)
            if f.origin == "file":
                log.info("credential file for %s is newer than the stored copy; using the file", f.key)
            self.save(f, stored, (stored[0]["oauth"].get("refreshToken"),) if stored else ())

    def push_pending(self, f: "CredentialFile") -> None:
        """Hand the store a token refreshed during its outage, once it answers again."""
        with f.lock:
            if not f.store_pending:
                return
            try:
                self.sync(f, locked=False)
            except StoreDown:
                return
            f.store_pending = False

    @staticmethod
    def adopt_stored(f: "CredentialFile", stored: tuple[dict, float]) -> None:
        data = dict(f.data or {})
        data["type"] = "oauth"
        data["oauth"] = dict(stored[0]["oauth"])
        f.adopt(data, "store", stored[1])
        log.debug("Using the shared store's copy of the credential for '%s'", f.key)
