"""What each pooled credential's answers say about it (rate-limit windows, cooling, broken), shared by every
worker through the storage (SQLite on one host, PostgreSQL for a fleet).

Every answer updates the worker's copy at once. A background loop pushes the copies that changed and pulls
the others' every second. A change of phase (ok, cooling, broken) is written at once, and the store says
whether this write made the change: only that worker announces it, so Slack hears of it once.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import gevent

log = logging.getLogger("app.services.credentials")

UNIFIED = "anthropic-ratelimit-unified-"
API_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")
DEFAULT_COOLING = 60.0  # a 429 that names no reset
MAX_COOLING = 8 * 86400.0
SYNC_INTERVAL = 1.0


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) < 1e15 else None


def reset_time(value: str | None, now: float) -> float | None:
    """A reset header as epoch seconds: epoch seconds or ms (unified windows) or RFC 3339 (API-key limits)."""
    if not value:
        return None
    number = _float(value)
    if number is not None:
        if number > 1e11:
            return number / 1000
        return number if number > 1e9 else now + number
    try:
        moment = _dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.timestamp()


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    try:
        return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


@dataclass
class CredentialState:
    """One credential's state as its answers tell it. No secret: keyed by the credential's file name."""

    name: str
    status: str | None = None  # unified-status: allowed | allowed_warning | rejected
    util_5h: float | None = None
    reset_5h: float | None = None
    util_7d: float | None = None
    reset_7d: float | None = None
    claim: str | None = None  # the window that decides (five_hour, seven_day, ...)
    fallback_pct: float | None = None
    reset: float | None = None  # unified-reset: when the deciding window resets
    limits: dict = field(default_factory=dict)  # API keys: kind -> {"limit", "remaining", "reset"}
    retry_after_until: float | None = None
    cooling_until: float = 0.0
    cooling_reason: str | None = None
    broken: str | None = None  # why; holds while the file holds the same secret (broken_fp)
    broken_fp: str | None = None
    updated_at: float = 0.0

    def phase(self, fingerprint: str | None, now: float) -> str:
        if self.broken and self.broken_fp == fingerprint:
            return "broken"
        if self.cooling_until > now:
            return "cooling"
        return "ok"

    def utilisation(self) -> float:
        """The highest share used of any window or limit the answers told of (0 when none yet)."""
        used = [u for u in (self.util_5h, self.util_7d) if u is not None]
        for lim in self.limits.values():
            limit, remaining = lim.get("limit"), lim.get("remaining")
            if limit and remaining is not None and limit > 0:
                used.append(1.0 - remaining / limit)
        return max(used) if used else 0.0

    def learn(self, headers: Mapping[str, str], now: float) -> None:
        """Read the rate-limit headers of one answer."""
        get = headers.get
        status = get(UNIFIED + "status")
        if status is not None:
            self.status = status.strip().lower()[:32]
            self.util_5h = _float(get(UNIFIED + "5h-utilization"))
            self.reset_5h = reset_time(get(UNIFIED + "5h-reset"), now)
            self.util_7d = _float(get(UNIFIED + "7d-utilization"))
            self.reset_7d = reset_time(get(UNIFIED + "7d-reset"), now)
            claim = get(UNIFIED + "representative-claim")
            self.claim = claim[:32] if claim else None
            self.fallback_pct = _float(get(UNIFIED + "fallback-percentage"))
            self.reset = reset_time(get(UNIFIED + "reset"), now)
        if get("anthropic-ratelimit-requests-limit") is not None or get("anthropic-ratelimit-tokens-limit") is not None:
            limits = {}
            for kind in API_LIMITS:
                prefix = "anthropic-ratelimit-" + kind + "-"
                limit = _float(get(prefix + "limit"))
                if limit is None:
                    continue
                limits[kind] = {"limit": limit, "remaining": _float(get(prefix + "remaining")),
                                "reset": reset_time(get(prefix + "reset"), now)}
            self.limits = limits
        retry_after = _float(get("retry-after"))
        self.retry_after_until = now + max(0.0, retry_after) if retry_after is not None else None
        self.updated_at = now

    def cool(self, now: float, reason: str) -> float:
        """Cool down until the credential's reset (or its retry-after); returns until when."""
        until = None
        if self.reset and self.reset > now:
            until = self.reset
        elif self.retry_after_until and self.retry_after_until > now:
            until = self.retry_after_until
        else:
            exhausted = [lim["reset"] for lim in self.limits.values()
                         if lim.get("remaining") == 0 and lim.get("reset") and lim["reset"] > now]
            if exhausted:
                until = min(exhausted)
            elif self.status == "rejected":
                resets = [r for r, u in ((self.reset_5h, self.util_5h), (self.reset_7d, self.util_7d))
                          if r and r > now and (u is None or u >= 1)]
                until = min(resets) if resets else None
        until = min(until if until else now + DEFAULT_COOLING, now + MAX_COOLING)
        self.cooling_until = max(self.cooling_until, until)
        self.cooling_reason = reason
        self.updated_at = now
        return self.cooling_until

    def mark_broken(self, reason: str, fingerprint: str | None, now: float) -> None:
        self.broken, self.broken_fp, self.updated_at = reason, fingerprint, now

    def view(self, fingerprint: str | None, now: float) -> dict:
        """For GET /."""
        phase = self.phase(fingerprint, now)
        out = {
            "status": phase,
            "unifiedStatus": self.status,
            "fiveHour": {"utilization": self.util_5h, "resetsAt": _iso(self.reset_5h)},
            "sevenDay": {"utilization": self.util_7d, "resetsAt": _iso(self.reset_7d)},
            "representativeClaim": self.claim,
            "coolingUntil": _iso(self.cooling_until) if phase == "cooling" else None,
            "coolingReason": self.cooling_reason if phase == "cooling" else None,
            "broken": self.broken if phase == "broken" else None,
            "utilization": round(self.utilisation(), 4),
            "updatedAt": _iso(self.updated_at),
        }
        if self.limits:
            out["limits"] = {k: {"limit": v.get("limit"), "remaining": v.get("remaining"),
                                 "resetsAt": _iso(v.get("reset"))} for k, v in self.limits.items()}
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, name: str, data: dict) -> "CredentialState":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "name"}
        try:
            return cls(name=name, **known)
        except TypeError:
            return cls(name=name)


def merge_states(old: dict | None, new: dict) -> dict:
    """Two copies of one credential's state as one: the newer windows, the later cooling, any breakage.

    A worker that had not yet heard of a cooling (or a breakage) must not erase it with its own newer answer.
    """
    if not old:
        return new
    merged = dict(new)
    if (old.get("cooling_until") or 0) > (new.get("cooling_until") or 0):
        merged["cooling_until"], merged["cooling_reason"] = old["cooling_until"], old.get("cooling_reason")
    if old.get("broken") and not new.get("broken"):
        merged["broken"], merged["broken_fp"] = old["broken"], old.get("broken_fp")
    return merged


class PoolStates:
    """Every pooled credential's state in this worker, kept in step with the store's."""

    def __init__(self, store=None, clock: Callable[[], float] = time.time,
                 on_change: Callable[[str, str | None, str, CredentialState], None] | None = None) -> None:
        self.store = store
        self._clock = clock
        self.on_change = on_change
        self._states: dict[str, CredentialState] = {}
        self._phases: dict[str, str] = {}  # the phase last written or read from the store
        self._dirty: set[str] = set()
        self._sticky: dict[str, str] = {}  # conversation -> credential name (this worker's cache)
        self._sticky_new: dict[str, str] = {}
        self._store_failing = False
        self._sticky_flush_pending = False

    def get(self, name: str) -> CredentialState:
        st = self._states.get(name)
        if st is None:
            st = self._states[name] = CredentialState(name)
        return st

    def touched(self, name: str) -> None:
        self._dirty.add(name)

    def settle(self, name: str, fingerprint: str | None) -> None:
        """Write a change of phase at once; whoever's write made it announces it."""
        st = self.get(name)
        now = self._clock()
        phase = st.phase(fingerprint, now)
        known = self._phases.get(name)
        if phase == known or (known is None and phase == "ok"):
            self._phases.setdefault(name, phase)
            return
        self._phases[name] = phase
        self._dirty.discard(name)
        previous, changed = known, True
        if self.store is not None:
            try:
                changed, previous = self.store.save_credential_state(name, st.to_dict(), st.updated_at or now, phase,
                                                                     merge=merge_states)
                self._store_ok()
            except Exception as exc:
                self._store_down(exc)
                self._dirty.add(name)
        if changed and self.on_change is not None and not (previous in (None, "ok") and phase == "ok"):
            try:
                self.on_change(name, previous, phase, st)
            except Exception:  # a notification must never fail a request
                log.exception("credential state notification failed")

    # ------------------------------------------------------------ sticky conversations

    def sticky(self, conversation: str) -> str | None:
        name = self._sticky.get(conversation)
        if name is None and self.store is not None:
            try:
                name = self.store.sticky_credential(conversation)
                self._store_ok()
            except Exception as exc:
                self._store_down(exc)
                name = None
            if name:
                self._remember(conversation, name)
        return name

    def stick(self, conversation: str, name: str) -> None:
        if self._sticky.get(conversation) != name:
            self._remember(conversation, name)
            self._sticky_new[conversation] = name
            if self.store is not None and not self._sticky_flush_pending:
                # the next turn may reach another worker at once: write it off the request path, now
                self._sticky_flush_pending = True
                gevent.spawn(self._flush_sticky)

    def _flush_sticky(self) -> None:
        self._sticky_flush_pending = False
        if not self._sticky_new:
            return
        batch, self._sticky_new = self._sticky_new, {}
        try:
            self.store.save_sticky_credentials(batch, self._clock())
            self._store_ok()
        except Exception as exc:
            self._store_down(exc)
            for k, v in batch.items():
                self._sticky_new.setdefault(k, v)

    def _remember(self, conversation: str, name: str) -> None:
        if len(self._sticky) >= 50_000:
            self._sticky.clear()
        self._sticky[conversation] = name

    # ------------------------------------------------------------ the sync loop

    def sync_once(self) -> None:
        """Push the states and sticky choices that changed here; pull the others'."""
        store = self.store
        if store is None:
            return
        now = self._clock()
        try:
            for name in list(self._dirty):
                st = self._states.get(name)
                self._dirty.discard(name)
                if st is not None:
                    store.save_credential_state(name, st.to_dict(), st.updated_at or now, merge=merge_states)
            if self._sticky_new:
                self._flush_sticky()
            for name, phase, data, updated_at in store.load_credential_states():
                mine = self._states.get(name)
                if mine is None:
                    merged = data
                elif updated_at > mine.updated_at:
                    merged = merge_states(mine.to_dict(), data)
                else:  # ours is newer, but theirs may know of a cooling or a breakage we have not seen
                    merged = merge_states(data, mine.to_dict())
                st = CredentialState.from_dict(name, merged)
                st.updated_at = max(updated_at, mine.updated_at if mine is not None else 0.0)
                self._states[name] = st
                self._phases[name] = phase
            self._store_ok()
        except Exception as exc:
            self._store_down(exc)

    def run(self, stop_event) -> None:
        while not stop_event.wait(timeout=SYNC_INTERVAL):
            self.sync_once()

    def _store_ok(self) -> None:
        if self._store_failing:
            self._store_failing = False
            log.info("credential state store is back")

    def _store_down(self, exc: BaseException) -> None:
        if not self._store_failing:
            self._store_failing = True
            log.warning("credential state store unavailable (%s); each worker keeps its own view meanwhile",
                        type(exc).__name__)
