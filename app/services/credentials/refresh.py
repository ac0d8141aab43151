"""OAuth refresh as a single flight: per file in a worker (a gevent lock), across workers with a `flock` on
`<file>.lock` (or across hosts with the shared store's lock), re-reading under the lock before deciding,
and written back atomically with mode 0600."""
from __future__ import annotations

import logging
import time
from typing import Callable

import requests

from .. import oauth as oauth_mod
from .credential import iso, os_reason
from .files import CredentialFile
from .store_sync import StoreDown, StoreSync
from ..oauth import OAuthError
from ...settings import Settings

log = logging.getLogger("app.services.credentials")

REFRESH_MARGIN_MS = 60_000  # refresh a token that expires within this
RETRY_AFTER_FAILURE = 30.0  # no new refresh attempt for this long after one failed
FORCED_REFRESH_INTERVAL = 30.0  # a 401 does not force a refresh sooner than this after the last one


def needs_refresh(f: CredentialFile, stale: str | None, now: float) -> bool:
    if f.kind != "oauth" or f.secret is None:
        return False
    if stale is not None:
        return f.secret == stale
    return f.expires_ms is not None and f.expires_ms - now * 1000 <= REFRESH_MARGIN_MS


class Refresher:
    def __init__(self, settings: Settings, sync: StoreSync, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._token_url = settings.oauth_token_url
        self._client_id = settings.oauth_client_id
        self._session = session or requests.Session()
        self._sync = sync
        self._clock = clock

    def refresh(self, f: CredentialFile, domain: str, stale: str | None) -> None:
        """Bring `f` to a token that needs no refresh. Raises OAuthError on failure.

        `stale` is the token the upstream refused (401 path), else None (expiry path).
        """
        with f.lock:
            now = self._clock()
            f.check(now)  # another process or the operator may have replaced it
            if not needs_refresh(f, stale, now):
                return
            if now < f.retry_at:
                raise OAuthError(f.last_refresh_error or "a recent refresh failed")
            if stale is not None and now - f.refreshed_at < FORCED_REFRESH_INTERVAL:
                return  # refreshed moments ago: a 401 now is not the token's age; do not hammer
            f.refreshing = True
            try:
                if self._sync.enabled:
                    try:
                        self._refresh_via_store(f, domain, stale)
                        return
                    except StoreDown as exc:
                        log.warning("Shared credential store unavailable for '%s' (%s); refreshing under the "
                                    "file lock instead", f.key, exc)
                with oauth_mod.file_lock(f.path):
                    f.check(self._clock())
                    if needs_refresh(f, stale, self._clock()):
                        self._refresh_now(f, domain)
                        # The refresh rotated the token the store holds: the other hosts need this copy.
                        f.store_pending = self._sync.enabled
            except OAuthError as exc:
                f.last_refresh_error = str(exc)
                f.retry_at = self._clock() + RETRY_AFTER_FAILURE
                log.warning("OAuth token refresh failed for %s: %s", domain, exc)
                raise
            except OSError as exc:  # the lock file could not be used
                reason = f"credential lock unavailable ({os_reason(exc)})"
                f.last_refresh_error = reason
                f.retry_at = self._clock() + RETRY_AFTER_FAILURE
                log.warning("OAuth token refresh failed for %s: %s", domain, reason)
                raise OAuthError(reason) from None
            finally:
                f.refreshing = False

    def _refresh_now(self, f: CredentialFile, domain: str) -> str | None:
        """Call the token endpoint and write the result back. Returns the refresh token that was used."""
        used = dict(f.data["oauth"])
        block = oauth_mod.refresh_oauth(self._session, self._token_url, self._client_id, used,
                                        now_ms=int(self._clock() * 1000))
        data = dict(f.data)
        data["oauth"] = block
        now = self._clock()
        f.adopt(data, "refresh", now)
        f.refreshed_at = now
        f.last_refresh_error = None
        f.retry_at = 0.0
        try:
            s = oauth_mod.atomic_write_json(f.path, data)
            f.sig, f.mtime, f.mode = (s.st_mtime_ns, s.st_size, s.st_ino), s.st_mtime, s.st_mode
        except OSError as exc:
            # kept in memory; other workers of a host cannot see it (make the folder writable or use DATABASE_URL)
            log.warning("Refreshed OAuth credential for %s could not be written back to its file (%s); "
                        "it is kept in memory only", domain, os_reason(exc))
        log.info("OAuth token refreshed for %s (expires %s)", domain, iso(f.expires_ms) or "unknown")
        return used.get("refreshToken")

    def _refresh_via_store(self, f: CredentialFile, domain: str, stale: str | None) -> None:
        sync = self._sync
        with sync.locked(f.key):
            stored = sync.load(f.key)
            decision = sync.decide(f, stored)
            if decision == "stored":
                sync.adopt_stored(f, stored)
            if not needs_refresh(f, stale, self._clock()):
                if decision == "push":
                    sync.save(f, stored, ())
                return
            used = self._refresh_now(f, domain)
            superseded = (used, stored[0]["oauth"].get("refreshToken") if stored else None)
            sync.save(f, stored, superseded)
