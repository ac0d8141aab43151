"""One credential file, cached in memory and re-read when its (mtime, size, inode) changes."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING

from gevent.lock import RLock

from .credential import Credential, iso, os_reason, parse_credential, register

if TYPE_CHECKING:  # pragma: no cover
    from .store_sync import StoreSync

log = logging.getLogger("app.services.credentials")

CHECK_INTERVAL = 1.0  # seconds between stat() calls per credential file


class CredentialFile:
    """One credential file (shared by every domain and pool that names the same path)."""

    def __init__(self, path: str, configured: str, key: str, name: str, sync: "StoreSync | None" = None) -> None:
        self.path = path  # absolute
        self.configured = configured  # as the operator wrote it
        self.key = key  # shared-store key: the first domain mapped to this file
        self.name = name  # what accounting, GET / and Slack call it: the file name, never its secret
        self.sync = sync
        self.lock = RLock()  # single-flight refresh; cooperative under gevent
        self.sig: tuple | None = None  # (mtime_ns, size, inode) of the content held
        self.mtime = 0.0
        self.mode = 0
        self.checked_at = float("-inf")
        self.found = False
        self.error: str | None = "not loaded yet"
        self.data: dict | None = None  # the whole file (oauth block possibly from the store or a refresh)
        self.kind: str | None = None
        self.secret: str | None = None
        self.expires_ms: int | None = None
        self.version = 0
        self.origin = "file"  # "file" | "store" | "refresh": where the held oauth block came from
        self.origin_time = 0.0  # epoch seconds of that copy (mtime, store updated_at, refresh time)
        self.last_refresh_error: str | None = None
        self.retry_at = 0.0
        self.refreshed_at = float("-inf")
        self.refreshing = False
        self.store_pending = False  # refreshed while the shared store was down: push it when it is back
        self._cred: Credential | None = None
        self._cred_key: tuple | None = None
        self._fp: tuple | None = None

    def get(self, name: str):
        """A top-level field of the file (e.g. `client_api_key`, `slack`)."""
        return self.data.get(name) if self.data else None

    @property
    def usable(self) -> bool:
        return self.secret is not None

    @property
    def fingerprint(self) -> str | None:
        """Names the secret held without revealing it: a credential marked broken stays broken until this changes
        (the operator replaced the file), the same on every worker and host."""
        if self.secret is None:
            return None
        if self._fp is None or self._fp[0] != self.version:
            self._fp = (self.version, hashlib.sha256(self.secret.encode()).hexdigest()[:16])
        return self._fp[1]

    def credential(self, domain: str) -> Credential:
        """The held secret as a Credential, rebuilt only when the file or the domain changes."""
        key = (self.version, domain)
        if self._cred_key != key or self._cred is None:
            self._cred = Credential(self.kind, self.secret, "domain", domain, self.name)
            self._cred_key = key
        return self._cred

    # ------------------------------------------------------------ reading

    def check_due(self, now: float) -> None:
        """Re-check the file if the last check is at least CHECK_INTERVAL old."""
        if now - self.checked_at >= CHECK_INTERVAL:
            self.check(now)

    def check(self, now: float) -> None:
        """Re-read the file when its (mtime, size, inode) changed."""
        self.checked_at = now
        try:
            s = os.stat(self.path)
        except OSError as exc:
            reason = os_reason(exc)
            if self.found or self.error != reason:
                self.mark_unusable(found=False, error=reason)
            return
        if self.store_pending and self.sync is not None:
            self.sync.push_pending(self)
        if (s.st_mtime_ns, s.st_size, s.st_ino) == self.sig:
            return
        with self.lock:  # another greenlet may be loading it (the store sync can yield)
            self.load()

    def load(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                s = os.fstat(fh.fileno())
                raw = fh.read()
        except OSError as exc:
            self.mark_unusable(found=not isinstance(exc, FileNotFoundError), error=os_reason(exc))
            return
        sig = (s.st_mtime_ns, s.st_size, s.st_ino)
        if sig == self.sig:
            return
        self.sig, self.mtime, self.mode = sig, s.st_mtime, s.st_mode
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            self.mark_unusable(found=True, error=f"not valid JSON ({exc.msg} at line {exc.lineno})")
            return
        except ValueError:
            self.mark_unusable(found=True, error="not valid JSON (not UTF-8 text)")
            return
        try:
            parse_credential(data)
        except ValueError as exc:
            self.mark_unusable(found=True, error=str(exc))
            if isinstance(data, dict):
                # client_api_key and slack still apply: dropping them would leave the domain unprotected
                self.data = data
                register(data.get("client_api_key"))
            return
        self.adopt(data, "file", s.st_mtime)
        # the file changed: an operator's fix or another worker's refresh; try again at once
        self.last_refresh_error = None
        self.retry_at = 0.0
        if self.kind == "oauth" and self.sync is not None and self.sync.enabled:
            from .store_sync import StoreDown

            try:
                self.sync.sync(self, locked=False)
            except StoreDown as exc:
                log.warning("Shared credential store unavailable for '%s' (%s); using the file", self.key, exc)

    def mark_unusable(self, found: bool, error: str) -> None:
        if not found:
            self.sig = None
        self.found, self.error = found, error
        self.data = self.kind = self.secret = self.expires_ms = None
        self.version += 1

    def adopt(self, data: dict, origin: str, origin_time: float) -> None:
        kind, secret, expires = parse_credential(data)
        self.data, self.kind, self.secret, self.expires_ms = data, kind, secret, expires
        self.found, self.error = True, None
        self.origin, self.origin_time = origin, origin_time
        self.version += 1
        block = data.get("oauth") if kind == "oauth" else None
        register(secret, block.get("refreshToken") if isinstance(block, dict) else None, data.get("client_api_key"))

    # ------------------------------------------------------------ start-up checks and health

    def problems(self, domain: str) -> list[str]:
        where = self.configured
        if not self.found:
            return [f"Credential file for '{domain}' not found: {where}"]
        if self.secret is None:
            return [f"Credential file for '{domain}' is invalid: {self.error} ({where})"]
        out = []
        if self.mode & 0o077:
            out.append(f"Credential file for '{domain}' is accessible by other users "
                       f"(mode {self.mode & 0o777:04o}): run chmod 600 {where}")
        if self.kind == "oauth" and not (self.data or {}).get("oauth", {}).get("refreshToken"):
            out.append(f"OAuth credential for '{domain}' has no refreshToken: it cannot be refreshed ({where})")
        return out

    def status(self, now: float) -> dict:
        """For `GET /`. Never a secret, not even partly."""
        expires = self.expires_ms if self.kind == "oauth" else None
        return {
            "file": self.configured,
            "found": self.found,
            "valid": self.secret is not None,
            "type": self.kind,
            "expiresAt": iso(expires),
            "expired": expires is not None and expires <= now * 1000,
            "lastRefreshError": self.last_refresh_error,
            # when the held OAuth token was refreshed (here, or by another worker through the store)
            "lastRefresh": iso(int(self.origin_time * 1000))
            if self.kind == "oauth" and self.origin in ("refresh", "store") and self.origin_time else None,
            "error": self.error,
            "source": self.origin if self.secret is not None else None,
        }
