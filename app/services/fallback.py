"""Translation's upstreams in order of preference, each behind a circuit breaker.

A breaker opens after FAILURES_TO_OPEN consecutive failures (connection failure, 429, 5xx), stays open
OPEN_SECONDS, then lets one probe through (half-open): its success closes the breaker, its failure opens
it again. Breakers live in each worker; `GET /` shows the answering worker's view.
"""
from __future__ import annotations

import collections
import datetime as _dt
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ..errors import upstream_host
from ..masking import mask_text
from ..translation.profiles import Profile, select_profile

FAILURES_TO_OPEN = 5
OPEN_SECONDS = 30.0
RECENT_ERRORS = 5

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class CircuitBreaker:
    def __init__(self, clock: Callable[[], float] = time.time, failures_to_open: int = FAILURES_TO_OPEN,
                 open_seconds: float = OPEN_SECONDS) -> None:
        self._clock = clock
        self.failures_to_open = failures_to_open
        self.open_seconds = open_seconds
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.errors: collections.deque = collections.deque(maxlen=RECENT_ERRORS)

    def allow(self) -> bool:
        """Whether a request may go to this upstream now (a half-open breaker lets one probe through)."""
        if self.state == CLOSED:
            return True
        now = self._clock()
        if self.state == OPEN and now - self.opened_at >= self.open_seconds:
            self.state = HALF_OPEN
            self.probing = False
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def retry_in(self) -> float:
        return max(0.0, self.opened_at + self.open_seconds - self._clock()) if self.state == OPEN else 0.0

    def success(self) -> None:
        self.state, self.failures, self.probing = CLOSED, 0, False

    def failure(self, reason: str) -> None:
        now = self._clock()
        self.errors.append({"at": _iso(now), "error": reason[:200]})
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.failures_to_open:
            self.state, self.opened_at, self.probing = OPEN, now, False

    def view(self) -> dict:
        return {"state": self.state, "consecutiveFailures": self.failures,
                "openUntil": _iso(self.opened_at + self.open_seconds) if self.state == OPEN else None,
                "recentErrors": list(self.errors)}


@dataclass
class Upstream:
    name: str
    base: str  # the base URL, without a trailing slash
    profile: Profile  # what the upstream takes and sends back
    api_key: str | None = field(default=None, repr=False)
    model_map: dict | None = None  # its own model names (else MODEL_MAP)
    model_apis: dict | None = None  # the API its model_map entries name
    api: str | None = None  # "chat" | "responses" for this upstream (else UPSTREAM_API)
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)

    def __post_init__(self) -> None:
        self.host = upstream_host(self.base)
        self.chat_url = self.base + "/chat/completions"
        self.responses_url = self.base + "/responses"

    def url_for(self, api: str) -> str:
        return self.responses_url if api == "responses" else self.chat_url


class Upstreams:
    """UPSTREAMS in order, or the one upstream of ANTHROPIC_PROXY_BASE_URL (with UPSTREAM_PROFILE)."""

    def __init__(self, settings, clock: Callable[[], float] = time.time) -> None:
        entries = settings.upstreams
        if entries:
            self.items = [Upstream(e["name"], e["base_url"].rstrip("/"), select_profile(e.get("profile"), e["base_url"]),
                                   e.get("api_key"), e.get("model_map") or None, e.get("model_apis") or None,
                                   e.get("api"), CircuitBreaker(clock)) for e in entries]
        else:
            base = settings.anthropic_proxy_base_url.rstrip("/")
            self.items = [Upstream("default", base, select_profile(settings.upstream_profile, base),
                                   breaker=CircuitBreaker(clock))]
        # One upstream has nowhere to fail over to: its breaker is shown but never refuses a request.
        self.enforced = len(self.items) > 1

    def candidates(self) -> Iterator[Upstream]:
        """The upstreams a request may try, in order; each breaker is asked only when its turn comes, so a
        half-open probe is spent only on a request that reaches it."""
        for u in self.items:
            if not self.enforced or u.breaker.allow():
                yield u

    def retry_in(self) -> float:
        return min((u.breaker.retry_in() for u in self.items), default=0.0)

    def view(self) -> list[dict]:
        return [{"name": u.name, "url": mask_text(u.base), **u.breaker.view()} for u in self.items]
