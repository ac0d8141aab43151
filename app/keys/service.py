"""What a request meets when it carries a client key: identify (401), admit (403, 429), finish.

The keys and each budgeted key's spend live in the usage store; this process keeps a copy of both and
refreshes it in the background every KEYS_REFRESH_INTERVAL (at most 5 s), so the request path does
no I/O for them. Rate limits are checked against the shared state (Redis with REDIS_URL, else the
host's SQLite file) on every admitted request: that is their one round trip.
"""
from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from ..errors import ProxyError
from .keyformat import hash_key, looks_like_key
from .limits import Limits, refusal_headers, refusal_message
from .rules import ClientKey, budget_text, iso_minute, period_bounds
from .store import KeyStore
from ..masking import mask_text

log = logging.getLogger("nexus.keys")

UNKNOWN_KEY = "Missing or invalid proxy API key (send it as x-api-key or Authorization: Bearer)"
CLIENT_KEY_KIND = "client_key"  # Identity.kind of a request that came with one of these keys
# After a failed call to the shared state, skip it for this long: during an outage a request pays
# nothing for the limiter, instead of a timeout each.
RETRY_STATE_AFTER = 1.0


def default_state_path(settings) -> str:
    if getattr(settings, "rate_limit_state_path", None):
        return settings.rate_limit_state_path
    base = getattr(settings, "usage_db_path", "data/usage.sqlite3")
    if base == ":memory:" or base.startswith("file:"):
        base = "data/usage.sqlite3"
    return os.path.join(os.path.dirname(os.path.abspath(base)), "limits.sqlite3")


def open_state(settings):
    """The shared limiter state the settings ask for (nothing connects here)."""
    if getattr(settings, "redis_url", None):
        from .redis_state import RedisState

        return RedisState(settings.redis_url, getattr(settings, "redis_key_prefix", "nexus:"))
    from .local import LocalState

    return LocalState(default_state_path(settings))


@dataclass
class Admission:
    """What a request holds from its key's limiter until it finishes."""

    key: ClientKey
    lease_id: str | None


class _StateUnavailable(Exception):
    pass


def _money(amount: float) -> str:
    return f"${amount:.2f}" if amount >= 1 or amount == 0 else f"${amount:.4f}".rstrip("0").rstrip(".")


class ClientKeys:
    def __init__(self, settings, storage, *, state=None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = KeyStore(storage, clock=clock)
        self.clock = clock
        self.state = state if state is not None else open_state(settings)
        self.fail_open = getattr(settings, "rate_limit_fail", "open") != "closed"
        self.refresh_interval = min(5.0, float(getattr(settings, "keys_refresh_interval", 2.0) or 2.0))
        self._by_hash: dict[str, ClientKey] = {}
        self._by_id: dict[str, ClientKey] = {}
        self._count = 0
        self._loaded = False
        self._next_try = 0.0
        self._load_error: str | None = None
        # key id -> [dollars, period start, last used (monotonic), period, period end]
        self._spend: dict[str, list] = {}
        self._leases: dict[str, str] = {}  # lease id -> key id, for renewal
        self._lease_pid = 0  # the process the lease ids below were made for (a forked worker makes its own)
        self._lease_prefix = ""
        self._lease_seq = itertools.count()
        self._state_down_until = 0.0
        self._outage: dict | None = None
        self._lock = threading.Lock()
        self._stop = False
        self._loop = None

    # --- the keys ------------------------------------------------------------------------------

    def reload(self) -> bool:
        try:
            keys = self.store.all()
        except Exception as exc:
            if self._load_error is None:
                log.warning("client keys could not be read from the store (%s); using the last copy",
                            mask_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            self._load_error = mask_text(str(exc)[:200])
            return False
        self._by_hash = {k.key_hash: k for k in keys}
        self._by_id = {k.id: k for k in keys}
        self._count = len(keys)
        self._loaded = True
        self._load_error = None
        return True

    @property
    def any_keys(self) -> bool:
        """Whether any key exists (revoked ones too): then every request needs a valid key."""
        if not self._loaded and time.monotonic() >= self._next_try:
            self._next_try = time.monotonic() + self.refresh_interval
            self.reload()
        return self._count > 0

    # --- the key source of app.services.access -------------------------------------------------

    def has_keys(self) -> bool:
        return self.any_keys

    def match(self, presented_key: str, host: str, config=None):
        """The identity one of our keys opens on `host` (None for anything else, or a key refused)."""
        from ..services.access import Identity

        if not looks_like_key(presented_key) or (not self._loaded and not self.reload()):
            return None
        key = self._by_hash.get(hash_key(presented_key))
        if key is None or key.revoked_at is not None or key.expired(self.clock()):
            return None
        if key.domain and host != key.domain:
            return None
        return Identity(CLIENT_KEY_KIND, key.id, key.domain, False, presented_key)

    def refusal(self, presented_key: str, host: str) -> ProxyError | None:
        """Why one of our keys is refused (revoked, expired, another domain, store unreadable); None otherwise."""
        try:
            self.identify(presented_key, host)
        except ProxyError as exc:
            return None if exc.message == UNKNOWN_KEY else exc
        return None

    def record_of(self, identity) -> ClientKey:
        """The key behind an identity `match` gave."""
        return self._by_id[identity.name]

    def identify(self, presented: str | None, host: str) -> ClientKey | None:
        """The key behind a presented value, or None when it is not one of ours. 401 when it is ours but
        unknown, revoked or expired; 403 when it belongs to another domain."""
        if not looks_like_key(presented):
            return None
        if not self._loaded and not self.reload():
            # Fail closed: without the table we cannot tell a good key from a revoked one.
            raise ProxyError(503, "The client key store cannot be read right now; please retry", "overloaded_error")
        key = self._by_hash.get(hash_key(presented))
        if key is None:
            raise ProxyError(401, UNKNOWN_KEY, "authentication_error")
        if key.revoked_at is not None:
            raise ProxyError(401, f"This API key ('{key.name}') has been revoked", "authentication_error")
        if key.expired(self.clock()):
            raise ProxyError(401, f"This API key ('{key.name}') expired at {iso_minute(key.expires_at)}",
                             "authentication_error")
        if key.domain and host != key.domain:
            raise ProxyError(403, f"Key '{key.name}' may only be used on {key.domain}", "permission_error")
        return key

    # --- admission, before any upstream call ---------------------------------------------------

    def admit(self, key: ClientKey, rec, model: str | None) -> None:
        """Check the model rules, the budget and the rate limits; on success the record holds its admission."""
        if not key.allows_model(model):
            raise ProxyError(403, f"Key '{key.name}' may not use model '{model}'; allowed: {', '.join(key.models)}",
                             "permission_error")
        if key.budget_usd is not None and key.budget_period:
            self._check_budget(key)
            rec.admission = Admission(key, None)  # its cost is added to the cached spend when it ends
        if not key.limited:
            return
        lim = Limits.of(key)
        lease_id = self._new_lease_id() if key.concurrency else None
        try:
            verdict = self._state_call(self.state.admit, key.id, lim, time.time(), lease_id)
        except _StateUnavailable:
            if self.fail_open:
                return
            raise ProxyError(503, "Rate limits cannot be checked (the rate-limit store is unreachable) and "
                                  "RATE_LIMIT_FAIL=closed; please retry", "overloaded_error") from None
        if not verdict.allowed:
            raise ProxyError(429, refusal_message(key.name, lim, verdict), "rate_limit_error",
                             refusal_headers(lim, verdict))
        if lease_id:
            self._leases[lease_id] = key.id
        rec.admission = Admission(key, lease_id)

    def _new_lease_id(self) -> str:
        """Unique across workers and hosts: a random prefix per process, then a counter (no syscall each)."""
        pid = os.getpid()
        if pid != self._lease_pid:
            self._lease_pid, self._lease_prefix, self._lease_seq = pid, secrets.token_hex(8), itertools.count()
        return f"{self._lease_prefix}{next(self._lease_seq):x}"

    def _check_budget(self, key: ClientKey) -> None:
        now = self.clock()
        entry = self._spend.get(key.id)
        # The period's bounds are worked out again only when the clock leaves them or the period changes.
        if entry is None or entry[3] != key.budget_period or not entry[1] <= now < entry[4]:
            start, end = period_bounds(key.budget_period, now)
            if entry is None or entry[1] != start:
                try:
                    spent = self.store.spend([key.id], start).get(key.id, 0.0)
                except Exception as exc:
                    if not self.fail_open:
                        raise ProxyError(503, "The key's budget cannot be checked (the usage store is unreachable);"
                                              " please retry", "overloaded_error") from None
                    log.debug("budget of %s unknown: %s", key.id, mask_text(str(exc)[:200]))
                    return
                entry = self._spend[key.id] = [spent, start, 0.0, None, None]
            entry[3], entry[4] = key.budget_period, end
        entry[2] = time.monotonic()
        if entry[0] >= key.budget_usd:
            end = entry[4]
            raise ProxyError(403, f"Key '{key.name}' has used its budget of {budget_text(key.budget_usd, key.budget_period)}"
                                  f" (spent {_money(entry[0])}); it renews {iso_minute(end)}", "permission_error")

    # --- the end of a request (its stream ended or its client left) ------------------------------

    def finish(self, rec) -> None:
        admission = rec.admission
        if admission is None:
            return
        rec.admission = None
        key = admission.key
        cost = getattr(rec, "cost_usd", None)
        if cost and key.id in self._spend:
            self._spend[key.id][0] += float(cost)  # seen here at once; the store catches up at the next refresh
        if admission.lease_id:
            self._leases.pop(admission.lease_id, None)
        tokens = int(rec.input_tokens or 0) + int(rec.output_tokens or 0)
        if admission.lease_id or (key.tpm and tokens):
            try:
                self._state_call(self.state.finish, key.id, admission.lease_id, tokens, time.time(), bool(key.tpm))
            except _StateUnavailable:
                pass  # the lease expires by itself

    # --- the shared state, with the fail mode ------------------------------------------------------

    def _state_call(self, fn, *args):
        if self._state_down_until and time.monotonic() < self._state_down_until:
            raise _StateUnavailable
        try:
            result = fn(*args)
        except Exception as exc:
            self._state_down_until = time.monotonic() + RETRY_STATE_AFTER
            if self._outage is None:
                self._outage = {"since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "error": mask_text(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)}
                log.error("rate-limit store (%s) unreachable: %s; RATE_LIMIT_FAIL=%s: %s", self.state.backend,
                          self._outage["error"], "open" if self.fail_open else "closed",
                          "requests are admitted without rate limits until it is back" if self.fail_open
                          else "limited keys get 503 until it is back")
            raise _StateUnavailable from None
        if self._outage is not None:
            log.warning("rate-limit store (%s) is back; limits apply again", self.state.backend)
            self._outage = None
        self._state_down_until = 0.0
        return result

    # --- background: keys, spend, leases -----------------------------------------------------------

    def refresh_once(self) -> None:
        self.reload()
        self._refresh_spend()
        if self.state.backend != "local" and (self._count or self._outage):
            try:  # notice an outage (and its end) even while no limited request comes
                self._state_call(self.state.ping)
            except _StateUnavailable:
                pass
        if self._leases:
            try:
                self._state_call(self.state.renew, list((k, l) for l, k in self._leases.items()), time.time())
            except _StateUnavailable:
                pass

    def _refresh_spend(self) -> None:
        if not self._spend:
            return
        keys = {k.id: k for k in self._by_hash.values()}
        now, idle = self.clock(), time.monotonic() - 3600
        by_start: dict[float, list[str]] = {}
        for key_id, entry in list(self._spend.items()):
            key = keys.get(key_id)
            if key is None or key.budget_usd is None or not key.budget_period or entry[2] < idle:
                self._spend.pop(key_id, None)
                continue
            start, end = period_bounds(key.budget_period, now)
            by_start.setdefault((start, end, key.budget_period), []).append(key_id)
        for (start, end, period), ids in by_start.items():
            try:
                spent = self.store.spend(ids, start)
            except Exception as exc:
                log.debug("spend refresh failed: %s", mask_text(str(exc)[:200]))
                return
            for key_id in ids:
                entry = self._spend.get(key_id)
                if entry is not None:
                    entry[0], entry[1], entry[3], entry[4] = spent.get(key_id, 0.0), start, period, end

    def _run(self) -> None:
        import gevent

        while not self._stop:
            gevent.sleep(self.refresh_interval)
            try:
                self.refresh_once()
            except Exception:  # pragma: no cover - the loop must outlive bugs
                log.exception("client key refresh failed")

    def start(self) -> None:
        import gevent

        self.reload()
        if self._loop is None:
            self._stop = False
            self._loop = gevent.spawn(self._run)

    def stop(self) -> None:
        self._stop = True
        if self._loop is not None:
            self._loop.kill(block=False)
            self._loop = None

    # --- GET / -----------------------------------------------------------------------------------

    def status(self) -> dict:
        return {
            "keys": self._count,
            "loaded": self._loaded,
            "storeError": self._load_error,
            "rateLimiter": {
                "backend": self.state.backend,
                "failMode": "open" if self.fail_open else "closed",
                "healthy": self._outage is None,
                "outage": dict(self._outage) if self._outage else None,
            },
        }

    def usage(self, key: ClientKey) -> dict:
        """For `keys show`: the key's windows now and its spend in its budget period."""
        now = self.clock()
        req, tok, live = self.state.usage(key.id, time.time())
        out = {"requestsLastMinute": req, "tokensLastMinute": tok, "inFlight": live}
        for period in ("day", "week", "month"):
            start, end = period_bounds(period, now)
            out[f"spent{period.title()}Usd"] = round(self.store.spend([key.id], start).get(key.id, 0.0), 6)
        if key.budget_period:
            _s, end = period_bounds(key.budget_period, now)
            out["budgetRenews"] = iso_minute(end)
        return out
