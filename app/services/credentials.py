"""Credential files, the credential chosen for each passthrough request, and OAuth refresh coordination.

Choice order (docs/credentials.md):
1. `DOMAIN_CREDENTIAL_MAPPING` by request host (no port, case-insensitive): wins over the client's headers.
2. The client's own `x-api-key` or `Authorization: Bearer …` (`sk-ant-oat…` = OAuth access token).
3. An unmapped host when a mapping exists: strict -> 401; lenient -> the first valid mapped credential
   that has no `client_api_key` (warned once per host).
4. `CLAUDE_API_KEY`, then `CLAUDE_CODE_PROXY_API_KEY`.

Files are cached and re-read when their (mtime, size, inode) changes, checked at most once a second.
OAuth refresh is single-flight per file in a worker (a gevent lock), serialised across workers with a
`flock` on `<file>.lock` (or across hosts with the shared store's lock), re-reading under the lock
before deciding, and written back atomically with mode 0600.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import requests
from gevent.lock import RLock

from ..client_key import presented_key
from ..errors import ProxyError
from ..masking import mask_secret, register_secret
from . import oauth as oauth_mod
from .oauth import OAuthError, refresh_token_hash
from ..settings import Settings


log = logging.getLogger(__name__)

OAUTH_BETA = "oauth-2025-04-20"
OAUTH_TOKEN_PREFIX = "sk-ant-oat"
REFRESH_MARGIN_MS = 60_000  # refresh a token that expires within this
CHECK_INTERVAL = 1.0  # seconds between stat() calls per credential file
RETRY_AFTER_FAILURE = 30.0  # no new refresh attempt for this long after one failed
FORCED_REFRESH_INTERVAL = 30.0  # a 401 does not force a refresh sooner than this after the last one
HISTORY_MAX = 10  # rotated refresh-token fingerprints kept in the shared store
_WARNED_HOSTS_MAX = 1024


def _register(*values: object) -> None:
    for v in values:
        if isinstance(v, str) and v:
            register_secret(v)


def host_without_port(host: str | None) -> str:
    """`Example.COM:443` -> `example.com`; `[::1]:3000` -> `::1`; a bare IPv6 literal stays whole."""
    if not host:
        return ""
    host = host.strip()
    if host[:1] == "[":
        end = host.find("]")
        return host[1:end].lower() if end > 0 else host.lower()
    i = host.find(":")
    if i != -1 and host.find(":", i + 1) == -1:  # exactly one colon: host:port
        host = host[:i]
    return host.rstrip(".").lower()


def merge_beta(value: str | None, beta: str = OAUTH_BETA) -> str:
    """The client's `anthropic-beta` list (order kept, duplicates dropped) with `beta` added once."""
    if not value:
        return beta
    parts: list[str] = []
    for p in value.split(","):
        p = p.strip()
        if p and p not in parts:
            parts.append(p)
    if beta not in parts:
        parts.append(beta)
    return ",".join(parts)


@dataclass(frozen=True)
class Credential:
    kind: str  # "api_key" | "oauth"
    secret: str = field(repr=False)  # never logged: repr() leaves it out
    source: str = "env"  # "domain" | "client" | "env"
    domain: str | None = None  # the mapping domain whose file was used

    def apply(self, headers: dict[str, str]) -> None:
        """Set the auth headers on an outgoing, lower-case keyed header dict."""
        if self.kind == "oauth":
            headers.pop("x-api-key", None)
            headers["authorization"] = "Bearer " + self.secret
            headers["anthropic-beta"] = merge_beta(headers.get("anthropic-beta"))
        else:
            headers.pop("authorization", None)
            headers["x-api-key"] = self.secret

    @property
    def masked(self) -> str:
        return mask_secret(self.secret)


def parse_credential(data: object) -> tuple[str, str, int | None]:
    """(kind, secret, expiresAt ms or None) of a credential file's JSON; ValueError with a safe reason."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    kind = data.get("type")
    if kind is None:
        kind = "oauth" if "oauth" in data else "api_key" if "api_key" in data else None
    if kind == "api_key":
        key = data.get("api_key")
        if not isinstance(key, str) or not key.strip():
            raise ValueError('"api_key" is missing or empty')
        return "api_key", key.strip(), None
    if kind == "oauth":
        block = data.get("oauth")
        if not isinstance(block, dict):
            raise ValueError('"oauth" object is missing')
        token = block.get("accessToken")
        if not isinstance(token, str) or not token.strip():
            raise ValueError('"oauth.accessToken" is missing or empty')
        exp = block.get("expiresAt")
        if exp is None:
            expires = None
        elif isinstance(exp, (int, float)) and not isinstance(exp, bool):
            expires = int(exp)
        elif isinstance(exp, str) and exp.strip().isdigit():
            expires = int(exp.strip())
        else:
            raise ValueError('"oauth.expiresAt" is not a number (milliseconds since the epoch)')
        return "oauth", token.strip(), expires
    if kind is None:
        raise ValueError('no "type" field ("api_key" or "oauth")')
    raise ValueError(f'unknown "type" {str(kind)[:20]!r} (expected "api_key" or "oauth")')


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    try:
        moment = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class _StoreDown(Exception):
    """The shared store failed; the caller falls back to the single-host file path."""


class _FileState:
    """One credential file (shared by every domain mapped to the same path)."""

    def __init__(self, path: str, configured: str, key: str) -> None:
        self.path = path  # absolute
        self.configured = configured  # as the operator wrote it
        self.key = key  # shared-store key: the first domain mapped to this file
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

    def get(self, name: str):
        """A top-level field of the file (e.g. `client_api_key`, `slack`)."""
        return self.data.get(name) if self.data else None


class _Slot:
    """One mapping entry: a domain and its file."""

    __slots__ = ("domain", "configured", "state", "cred", "cred_version")

    def __init__(self, domain: str, configured: str, state: _FileState) -> None:
        self.domain = domain
        self.configured = configured
        self.state = state
        self.cred: Credential | None = None
        self.cred_version = -1


class CredentialManager:
    """Chooses the credential of each passthrough request and keeps OAuth credentials fresh."""

    def __init__(self, settings: Settings, store=None, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._store = store
        self._session = session or requests.Session()
        self._token_url = settings.oauth_token_url
        self._client_id = settings.oauth_client_id
        self._strict = settings.strict_domain_mapping
        self._warned_hosts: set[str] = set()
        self._slots: list[_Slot] = []
        self._by_host: dict[str, _Slot] = {}
        states: dict[str, _FileState] = {}
        for domain, configured in (settings.domain_credential_mapping or {}).items():
            host = host_without_port(domain)
            if not host or host in self._by_host:
                continue
            path = os.path.abspath(os.path.expanduser(str(configured)))
            state = states.get(path)
            if state is None:
                state = states[path] = _FileState(path, str(configured), host)
            slot = _Slot(host, str(configured), state)
            self._slots.append(slot)
            self._by_host[host] = slot
        self._env: Credential | None = None
        for key in (settings.claude_api_key, settings.claude_code_proxy_api_key):
            if key and key.strip():
                self._env = Credential("api_key", key.strip(), "env", None)
                _register(key.strip())
                break

    # ------------------------------------------------------------ the choice per request

    def resolve(self, host: str, headers: Mapping[str, str]) -> Credential:
        """The credential for one request (see the module docstring for the order)."""
        name = host_without_port(host)
        slot = self._by_host.get(name)
        if slot is not None:
            return self._domain_credential(slot)
        client = client_credential(headers)
        if client is not None:
            return client
        if self._slots:
            if self._strict:
                raise ProxyError(401, f"No credential is configured for host '{name[:253]}' (strict domain "
                                      "mapping is on) and the request carries no credential of its own",
                                 "authentication_error")
            cred = self._lenient_fallback(name)
            if cred is not None:
                return cred
        if self._env is not None:
            return self._env
        raise ProxyError(401, "No credential available: no domain mapping for this host, no x-api-key or "
                              "Authorization header, and neither CLAUDE_API_KEY nor CLAUDE_CODE_PROXY_API_KEY is set",
                         "authentication_error")

    def refresh_after_unauthorized(self, cred: Credential) -> Credential | None:
        """After an upstream 401 on a domain OAuth credential: a refreshed credential, or None (relay the 401)."""
        if cred.kind != "oauth" or cred.source != "domain" or not cred.domain:
            return None
        slot = self._by_host.get(cred.domain)
        if slot is None:
            return None
        st = slot.state
        try:
            self._refresh(st, slot.domain, stale=cred.secret)
        except OAuthError:
            return None
        if st.kind != "oauth" or st.secret is None or st.secret == cred.secret:
            return None
        return self._slot_credential(slot)

    def client_api_key_for(self, host: str) -> str | None:
        """The `client_api_key` of the host's mapped credential file, when it is a usable string."""
        value = self._field_for(host, "client_api_key")
        return value if isinstance(value, str) and value else None

    def file_field(self, host: str, name: str):
        """A top-level field of the host's mapped credential file, as the file holds it (None when absent)."""
        return self._field_for(host, name)

    def is_mapped(self, host: str) -> bool:
        return host_without_port(host) in self._by_host

    def mapped_but_unreadable(self, host: str) -> bool:
        """The host is mapped but its file could not be read: whether it holds a `client_api_key` is unknown."""
        slot = self._by_host.get(host_without_port(host))
        if slot is None:
            return False
        self._field_for(host, "client_api_key")  # re-checks the file at most once a second
        return slot.state.data is None

    def slack_override_for(self, host: str) -> dict | None:
        """The `slack` block of the host's mapped credential file."""
        value = self._field_for(host, "slack")
        return value if isinstance(value, dict) else None

    # ------------------------------------------------------------ start-up and health

    def validate_all(self) -> list[str]:
        """Load every mapped file; log and return the problems found. Never raises."""
        warnings: list[str] = []
        loaded: set[int] = set()
        for slot in self._slots:
            st = slot.state
            try:
                if id(st) not in loaded:
                    loaded.add(id(st))
                    with st.lock:
                        self._check_file(st, self._clock())
                warnings.extend(self._problems(slot))
            except Exception as exc:  # a start-up check must never stop the proxy
                warnings.append(f"Credential file for '{slot.domain}' could not be checked ({type(exc).__name__})")
        for w in warnings:
            log.warning("%s", w)
        if self._slots and not self._strict:
            log.info("Requests for hosts missing from DOMAIN_CREDENTIAL_MAPPING that bring no credential of their "
                     "own use the first valid mapped credential (STRICT_DOMAIN_MAPPING=true refuses them)")
        return warnings

    def _problems(self, slot: _Slot) -> list[str]:
        st, where = slot.state, slot.configured
        if not st.found:
            return [f"Credential file for '{slot.domain}' not found: {where}"]
        if st.secret is None:
            return [f"Credential file for '{slot.domain}' is invalid: {st.error} ({where})"]
        out = []
        if st.mode & 0o077:
            out.append(f"Credential file for '{slot.domain}' is accessible by other users "
                       f"(mode {st.mode & 0o777:04o}): run chmod 600 {where}")
        if st.kind == "oauth" and not (st.data or {}).get("oauth", {}).get("refreshToken"):
            out.append(f"OAuth credential for '{slot.domain}' has no refreshToken: it cannot be refreshed ({where})")
        return out

    def status(self) -> dict:
        """Per mapped domain, for `GET /`. Never a secret, not even partly."""
        now = self._clock()
        out = {}
        for slot in self._slots:
            st = slot.state
            if now - st.checked_at >= CHECK_INTERVAL:
                self._check_file(st, now)
            expires = st.expires_ms if st.kind == "oauth" else None
            out[slot.domain] = {
                "file": slot.configured,
                "found": st.found,
                "valid": st.secret is not None,
                "type": st.kind,
                "expiresAt": _iso(expires),
                "expired": expires is not None and expires <= now * 1000,
                "lastRefreshError": st.last_refresh_error,
                # when the held OAuth token was refreshed (here, or by another worker through the store)
                "lastRefresh": _iso(int(st.origin_time * 1000))
                if st.kind == "oauth" and st.origin in ("refresh", "store") and st.origin_time else None,
                "error": st.error,
                "source": st.origin if st.secret is not None else None,
            }
        return out

    def oauth_expiry(self) -> dict[str, int]:
        """Mapped domain -> when its OAuth access token expires (epoch ms), for the metrics."""
        now = self._clock()
        out = {}
        for slot in self._slots:
            st = slot.state
            if now - st.checked_at >= CHECK_INTERVAL:
                self._check_file(st, now)
            if st.kind == "oauth" and st.expires_ms is not None:
                out[slot.domain] = st.expires_ms
        return out

    # ------------------------------------------------------------ internals: choice

    def _domain_credential(self, slot: _Slot) -> Credential:
        st = slot.state
        now = self._clock()
        if now - st.checked_at >= CHECK_INTERVAL:
            self._check_file(st, now)
        if st.kind == "oauth" and st.expires_ms is not None and st.expires_ms - now * 1000 <= REFRESH_MARGIN_MS:
            self._refresh_for_request(slot, now)
        if st.secret is None:
            raise ProxyError(401, f"The credential configured for '{slot.domain}' is not usable: {st.error}",
                             "authentication_error")
        return self._slot_credential(slot)

    def _slot_credential(self, slot: _Slot) -> Credential:
        st = slot.state
        if slot.cred_version != st.version or slot.cred is None:
            slot.cred = Credential(st.kind, st.secret, "domain", slot.domain)
            slot.cred_version = st.version
        return slot.cred

    def _refresh_for_request(self, slot: _Slot, now: float) -> None:
        st = slot.state
        still_valid = st.expires_ms > now * 1000
        if st.refreshing and still_valid:
            return  # another greenlet is refreshing; the current token works for a few more seconds
        try:
            self._refresh(st, slot.domain, stale=None)
        except OAuthError as exc:
            if st.kind == "oauth" and st.secret and st.expires_ms is not None \
                    and st.expires_ms > self._clock() * 1000:
                return  # not expired yet: use it while it lasts (the failure is in status())
            raise ProxyError(401, f"OAuth token refresh failed for {slot.domain}: {exc}",
                             "authentication_error") from None

    def _lenient_fallback(self, host: str) -> Credential | None:
        now = self._clock()
        for slot in self._slots:
            st = slot.state
            if now - st.checked_at >= CHECK_INTERVAL:
                self._check_file(st, now)
            # a file with client_api_key is protected: lending it to another host would bypass that key
            if st.secret is None or st.get("client_api_key"):
                continue
            if host not in self._warned_hosts:
                if len(self._warned_hosts) >= _WARNED_HOSTS_MAX:
                    self._warned_hosts.clear()
                self._warned_hosts.add(host)
                log.warning("No credential mapping found for host '%s'; using the credential of '%s' "
                            "(STRICT_DOMAIN_MAPPING=true refuses unmapped hosts)", host[:253], slot.domain)
            log.debug("Unmapped host '%s' uses the credential of '%s'", host[:253], slot.domain)
            return self._domain_credential(slot)
        return None

    def _field_for(self, host: str, name: str):
        slot = self._by_host.get(host_without_port(host))
        if slot is None:
            return None
        st = slot.state
        now = self._clock()
        if now - st.checked_at >= CHECK_INTERVAL:
            self._check_file(st, now)
        return st.get(name)

    # ------------------------------------------------------------ internals: files

    def _check_file(self, st: _FileState, now: float) -> None:
        """Re-read the file when its (mtime, size, inode) changed (callers throttle to once a second)."""
        st.checked_at = now
        try:
            s = os.stat(st.path)
        except OSError as exc:
            reason = _os_reason(exc)
            if st.found or st.error != reason:
                self._mark_unusable(st, found=False, error=reason)
            return
        if st.store_pending:
            self._push_pending(st)
        if (s.st_mtime_ns, s.st_size, s.st_ino) == st.sig:
            return
        with st.lock:  # another greenlet may be loading it (the store sync can yield)
            self._load(st)

    def _push_pending(self, st: _FileState) -> None:
        """Hand the store a token refreshed during its outage, once it answers again."""
        with st.lock:
            if not st.store_pending:
                return
            try:
                self._sync_store(st, locked=False)
            except _StoreDown:
                return
            st.store_pending = False

    def _load(self, st: _FileState) -> None:
        try:
            with open(st.path, "rb") as fh:
                s = os.fstat(fh.fileno())
                raw = fh.read()
        except OSError as exc:
            self._mark_unusable(st, found=not isinstance(exc, FileNotFoundError), error=_os_reason(exc))
            return
        sig = (s.st_mtime_ns, s.st_size, s.st_ino)
        if sig == st.sig:
            return
        st.sig, st.mtime, st.mode = sig, s.st_mtime, s.st_mode
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            self._mark_unusable(st, found=True, error=f"not valid JSON ({exc.msg} at line {exc.lineno})")
            return
        except ValueError:
            self._mark_unusable(st, found=True, error="not valid JSON (not UTF-8 text)")
            return
        try:
            parse_credential(data)
        except ValueError as exc:
            self._mark_unusable(st, found=True, error=str(exc))
            if isinstance(data, dict):
                # client_api_key and slack still apply: dropping them would leave the domain unprotected
                st.data = data
                _register(data.get("client_api_key"))
            return
        self._adopt(st, data, "file", s.st_mtime)
        # the file changed: an operator's fix or another worker's refresh; try again at once
        st.last_refresh_error = None
        st.retry_at = 0.0
        if st.kind == "oauth" and self._store_enabled():
            try:
                self._sync_store(st, locked=False)
            except _StoreDown as exc:
                log.warning("Shared credential store unavailable for '%s' (%s); using the file", st.key, exc)

    def _mark_unusable(self, st: _FileState, found: bool, error: str) -> None:
        if not found:
            st.sig = None
        st.found, st.error = found, error
        st.data = st.kind = st.secret = st.expires_ms = None
        st.version += 1

    def _adopt(self, st: _FileState, data: dict, origin: str, origin_time: float) -> None:
        kind, secret, expires = parse_credential(data)
        st.data, st.kind, st.secret, st.expires_ms = data, kind, secret, expires
        st.found, st.error = True, None
        st.origin, st.origin_time = origin, origin_time
        st.version += 1
        block = data.get("oauth") if kind == "oauth" else None
        _register(secret, block.get("refreshToken") if isinstance(block, dict) else None, data.get("client_api_key"))

    # ------------------------------------------------------------ internals: refresh

    @staticmethod
    def _needs_refresh(st: _FileState, stale: str | None, now: float) -> bool:
        if st.kind != "oauth" or st.secret is None:
            return False
        if stale is not None:
            return st.secret == stale
        return st.expires_ms is not None and st.expires_ms - now * 1000 <= REFRESH_MARGIN_MS

    def _refresh(self, st: _FileState, domain: str, stale: str | None) -> None:
        """Single-flight: bring `st` to a token that needs no refresh. Raises OAuthError on failure.

        `stale` is the token the upstream refused (401 path), else None (expiry path).
        """
        with st.lock:
            now = self._clock()
            self._check_file(st, now)  # another process or the operator may have replaced it
            if not self._needs_refresh(st, stale, now):
                return
            if now < st.retry_at:
                raise OAuthError(st.last_refresh_error or "a recent refresh failed")
            if stale is not None and now - st.refreshed_at < FORCED_REFRESH_INTERVAL:
                return  # refreshed moments ago: a 401 now is not the token's age; do not hammer
            st.refreshing = True
            try:
                if self._store_enabled():
                    try:
                        self._refresh_via_store(st, domain, stale)
                        return
                    except _StoreDown as exc:
                        log.warning("Shared credential store unavailable for '%s' (%s); refreshing under the "
                                    "file lock instead", st.key, exc)
                with oauth_mod.file_lock(st.path):
                    self._check_file(st, self._clock())
                    if self._needs_refresh(st, stale, self._clock()):
                        self._refresh_now(st, domain)
                        # The refresh rotated the token the store holds: the other hosts need this copy.
                        st.store_pending = self._store_enabled()
            except OAuthError as exc:
                st.last_refresh_error = str(exc)
                st.retry_at = self._clock() + RETRY_AFTER_FAILURE
                log.warning("OAuth token refresh failed for %s: %s", domain, exc)
                raise
            except OSError as exc:  # the lock file could not be used
                reason = f"credential lock unavailable ({_os_reason(exc)})"
                st.last_refresh_error = reason
                st.retry_at = self._clock() + RETRY_AFTER_FAILURE
                log.warning("OAuth token refresh failed for %s: %s", domain, reason)
                raise OAuthError(reason) from None
            finally:
                st.refreshing = False

    def _refresh_now(self, st: _FileState, domain: str) -> str | None:
        """Call the token endpoint and write the result back. Returns the refresh token that was used."""
        used = dict(st.data["oauth"])
        block = oauth_mod.refresh_oauth(self._session, self._token_url, self._client_id, used,
                                        now_ms=int(self._clock() * 1000))
        data = dict(st.data)
        data["oauth"] = block
        now = self._clock()
        self._adopt(st, data, "refresh", now)
        st.refreshed_at = now
        st.last_refresh_error = None
        st.retry_at = 0.0
        try:
            s = oauth_mod.atomic_write_json(st.path, data)
            st.sig, st.mtime, st.mode = (s.st_mtime_ns, s.st_size, s.st_ino), s.st_mtime, s.st_mode
        except OSError as exc:
            # kept in memory; other workers of a host cannot see it (make the folder writable or use DATABASE_URL)
            log.warning("Refreshed OAuth credential for %s could not be written back to its file (%s); "
                        "it is kept in memory only", domain, _os_reason(exc))
        log.info("OAuth token refreshed for %s (expires %s)", domain, _iso(st.expires_ms) or "unknown")
        return used.get("refreshToken")

    # ------------------------------------------------------------ internals: shared store

    def _store_enabled(self) -> bool:
        return self._store is not None and bool(getattr(self._store, "supports_credentials", False))

    @contextlib.contextmanager
    def _store_lock(self, key: str) -> Iterator[None]:
        try:
            cm = self._store.credential_lock(key)
            cm.__enter__()
        except Exception as exc:
            raise _StoreDown(type(exc).__name__) from None
        try:
            yield
        finally:
            try:
                cm.__exit__(None, None, None)
            except Exception as exc:
                log.warning("Releasing the shared credential lock for '%s' failed (%s)", key, type(exc).__name__)

    def _load_stored(self, key: str) -> tuple[dict, float] | None:
        try:
            rec = self._store.load_credential(key)
        except Exception as exc:
            raise _StoreDown(type(exc).__name__) from None
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

    def _save_stored(self, st: _FileState, stored: tuple[dict, float] | None, superseded: tuple) -> None:
        history = list((stored[0].get("rotatedRefreshTokens") or []) if stored else [])
        current = st.data["oauth"].get("refreshToken")
        for token in superseded:
            h = refresh_token_hash(token)
            if token and token != current and h not in history:
                history.append(h)
        payload = {"type": "oauth", "oauth": st.data["oauth"], "rotatedRefreshTokens": history[-HISTORY_MAX:]}
        try:
            self._store.save_credential(st.key, payload)
        except Exception as exc:
            log.warning("Refreshed OAuth credential for '%s' could not be saved to the shared store (%s)",
                        st.key, type(exc).__name__)

    def _decide(self, st: _FileState, stored: tuple[dict, float] | None) -> str:
        """"keep" the held copy, adopt the "stored" one, or "push" the held one to the store."""
        if st.kind != "oauth":
            return "keep"
        if stored is None:
            return "push" if st.origin == "refresh" else "keep"  # a file seed is stored at its first refresh
        sdata, updated_at = stored
        mine, theirs = st.data["oauth"], sdata["oauth"]
        if mine.get("accessToken") == theirs.get("accessToken") and \
                mine.get("refreshToken") == theirs.get("refreshToken"):
            return "keep"
        if st.origin == "store":
            return "stored"
        if st.origin == "file" and refresh_token_hash(mine.get("refreshToken")) in \
                (sdata.get("rotatedRefreshTokens") or []):
            return "stored"  # the file still holds a refresh token the fleet has rotated away
        return "push" if st.origin_time > updated_at else "stored"

    def _sync_store(self, st: _FileState, locked: bool) -> None:
        """Reconcile the held copy with the shared store's. Raises _StoreDown."""
        stored = self._load_stored(st.key)
        decision = self._decide(st, stored)
        if decision == "stored":
            self._adopt_stored(st, stored)
        elif decision == "push":
            if not locked:
                with self._store_lock(st.key):
                    return self._sync_store(st, locked=True)
            if st.origin == "file":
                log.info("credential file for %s is newer than the stored copy; using the file", st.key)
            self._save_stored(st, stored, (stored[0]["oauth"].get("refreshToken"),) if stored else ())

    def _adopt_stored(self, st: _FileState, stored: tuple[dict, float]) -> None:
        data = dict(st.data or {})
        data["type"] = "oauth"
        data["oauth"] = dict(stored[0]["oauth"])
        self._adopt(st, data, "store", stored[1])
        log.debug("Using the shared store's copy of the credential for '%s'", st.key)

    def _refresh_via_store(self, st: _FileState, domain: str, stale: str | None) -> None:
        with self._store_lock(st.key):
            stored = self._load_stored(st.key)
            decision = self._decide(st, stored)
            if decision == "stored":
                self._adopt_stored(st, stored)
            if not self._needs_refresh(st, stale, self._clock()):
                if decision == "push":
                    self._save_stored(st, stored, ())
                return
            used = self._refresh_now(st, domain)
            superseded = (used, stored[0]["oauth"].get("refreshToken") if stored else None)
            self._save_stored(st, stored, superseded)


def client_credential(headers: Mapping[str, str]) -> Credential | None:
    """The client's own credential: the key it presents (`app.client_key`), as an API key or an OAuth token."""
    value = presented_key(headers)
    if value is None:
        return None
    kind = "oauth" if value.startswith(OAUTH_TOKEN_PREFIX) else "api_key"
    return Credential(kind, value, "client", None)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or type(exc).__name__
