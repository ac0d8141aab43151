"""The choice of a credential among a domain's pool, and what each answer means for it.

- A conversation stays on the credential that served it (Anthropic's prompt cache is per account).
- A new conversation goes to the usable credential with the lowest utilisation, list order on ties;
  subscriptions whose 5-hour utilisation is above POOL_SWITCH_AT_UTILIZATION are passed over while others remain.
- A 429 (or `unified-status: rejected`) cools a credential down until its reset; a 401 that survives one
  refresh marks it broken until its file holds another secret; a 529 only moves the one request on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from ...errors import ProxyError
from .files import CredentialFile
from .state import PoolStates

# What an answer means for the request that got it.
SERVE = "serve"  # hand it to the client
NEXT = "next"  # re-send on the next usable credential


@dataclass(frozen=True)
class Verdict:
    action: str
    reason: str | None = None


class Pool:
    """A domain's credentials in order of preference."""

    def __init__(self, domain: str, files: list[CredentialFile], states: PoolStates,
                 switch_at: float | None = None) -> None:
        self.domain = domain
        self.files = files
        self.states = states
        self.switch_at = switch_at

    @property
    def size(self) -> int:
        return len(self.files)

    def usable(self, f: CredentialFile, now: float) -> bool:
        f.check_due(now)
        return f.usable and self.states.get(f.name).phase(f.fingerprint, now) == "ok"

    def pick(self, conversation: str | None, exclude: Iterable[CredentialFile], now: float) -> CredentialFile | None:
        """The credential for the next try of a request, or None when none is usable."""
        skip = set(map(id, exclude))
        candidates = [f for f in self.files if id(f) not in skip and self.usable(f, now)]
        if not candidates:
            return None
        if conversation and not skip:
            name = self.states.sticky(conversation)
            if name:
                for f in candidates:
                    if f.name == name:
                        return f
        preferred = candidates
        if self.switch_at is not None:
            below = [f for f in candidates
                     if (self.states.get(f.name).util_5h or 0.0) <= self.switch_at]
            preferred = below or candidates
        order = {id(f): i for i, f in enumerate(self.files)}
        best = min(preferred, key=lambda f: (round(self.states.get(f.name).utilisation(), 4), order[id(f)]))
        if conversation:
            self.states.stick(conversation, best.name)
        return best

    # ------------------------------------------------------------ answers

    def learn(self, f: CredentialFile, headers, now: float) -> None:
        """Every answer updates the credential's windows and limits."""
        st = self.states.get(f.name)
        st.learn(headers, now)
        self.states.touched(f.name)
        if st.status == "rejected" and st.phase(f.fingerprint, now) == "ok":
            st.cool(now, "rejected (unified-status)")
        self.states.settle(f.name, f.fingerprint)

    def judge(self, f: CredentialFile, status: int, now: float) -> Verdict:
        """What this answer's status means for the request (after `learn`)."""
        st = self.states.get(f.name)
        if status == 429 or (status >= 400 and st.status == "rejected"):
            st.cool(now, "rate limited (429)" if status == 429 else "rejected (unified-status)")
            self.states.settle(f.name, f.fingerprint)
            return Verdict(NEXT, "rate_limited")
        if status == 529:
            return Verdict(NEXT, "overloaded")
        return Verdict(SERVE)

    def broken(self, f: CredentialFile, reason: str, now: float) -> None:
        st = self.states.get(f.name)
        st.mark_broken(reason, f.fingerprint, now)
        self.states.settle(f.name, f.fingerprint)

    def unavailable(self, now: float) -> ProxyError:
        """The client's answer when no credential is usable: Anthropic's 429 with the earliest reset, or a 401."""
        cooling = [self.states.get(f.name).cooling_until for f in self.files
                   if f.usable and self.states.get(f.name).phase(f.fingerprint, now) == "cooling"]
        if cooling:
            wait = max(1, math.ceil(min(cooling) - now))
            return ProxyError(429, f"Every credential for '{self.domain}' is rate limited; the first is usable again "
                                   f"in {wait} s", "rate_limit_error", {"retry-after": str(wait)})
        reasons = []
        for f in self.files:
            st = self.states.get(f.name)
            why = st.broken if st.phase(f.fingerprint, now) == "broken" else (f.error if not f.usable else None)
            if why:
                reasons.append(f"{f.name}: {why}")
        return ProxyError(401, f"No credential configured for '{self.domain}' is usable ("
                               + "; ".join(reasons)[:500] + ")", "authentication_error")

    def view(self, now: float, usage: dict | None = None) -> list[dict]:
        """Per credential, for GET /: its file's status and what its answers told."""
        out = []
        for f in self.files:
            f.check_due(now)
            item = {"name": f.name, **f.status(now), **self.states.get(f.name).view(f.fingerprint, now)}
            if not f.usable:
                item["status"] = "invalid"
            if usage is not None:
                u = usage.get(f.name) or {}
                item["requests"] = u.get("requestCount", 0)
                item["tokens"] = {"input": u.get("inputTokens", 0), "output": u.get("outputTokens", 0),
                                  "cacheRead": u.get("cacheReadInputTokens", 0),
                                  "cacheCreation": u.get("cacheCreationInputTokens", 0)}
            out.append(item)
        return out
