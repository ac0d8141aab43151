"""Admission arithmetic for one key's shared state. Pure: the backends (local.py, redis_state.py) hold the
state and run these steps atomically; the Redis Lua script mirrors them line for line.

State: requests admitted and tokens used per one-second bucket over the last 60 s (a sliding window, exact
to the request), and the concurrency leases in flight, each with an expiry that its worker renews while the
request runs, so a slot held by a worker that died frees itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

WINDOW = 60  # seconds: rpm and tpm windows
LEASE_TTL = 30.0  # a lease not renewed for this long is free (its worker died)
CONCURRENCY_RETRY = 1.0  # a slot may free at any moment; ask the client to look again soon


@dataclass(frozen=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    @classmethod
    def of(cls, key) -> "Limits":
        return cls(key.rpm, key.tpm, key.concurrency)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str | None  # "requests" | "tokens" | "concurrency" when refused
    now: float
    requests_used: int = 0  # in the window, this request included when admitted
    tokens_used: int = 0
    in_flight: int = 0
    requests_free_at: float | None = None  # when the requests window admits one more
    tokens_free_at: float | None = None

    @property
    def retry_after(self) -> float:
        """Seconds until this request would be admitted."""
        waits = []
        if self.reason is None:
            return 0.0
        if self.requests_free_at is not None and self.reason in ("requests",):
            waits.append(self.requests_free_at - self.now)
        if self.tokens_free_at is not None and self.reason in ("requests", "tokens"):
            waits.append(self.tokens_free_at - self.now)
        if self.reason == "concurrency":
            waits.append(CONCURRENCY_RETRY)
        return max([0.0, *waits])


def admitted(now: float) -> Verdict:
    """The verdict when nothing is limited (or the limiter is failing open)."""
    return Verdict(True, None, now)


def _sec(now: float) -> int:
    return int(math.floor(now))


def prune(buckets: dict[int, int], now: float) -> int:
    """Drop buckets that left the window; the total of those left."""
    oldest = _sec(now) - WINDOW + 1
    total = 0
    for s in [s for s in buckets if s < oldest]:
        del buckets[s]
    for n in buckets.values():
        total += n
    return total


def free_at(buckets: dict[int, int], need: int, now: float) -> float:
    """When at least `need` units will have left the window (buckets already pruned)."""
    freed = 0
    for s in sorted(buckets):
        freed += buckets[s]
        if freed >= need:
            return float(s + WINDOW)
    return now


def admit(state: dict, limits: Limits, now: float, lease_id: str | None, ttl: float = LEASE_TTL) -> Verdict:
    """Admit one request or say why not; on admission the state holds it (its request, its lease)."""
    requests = state.setdefault("r", {})
    tokens = state.setdefault("t", {})
    leases = state.setdefault("l", {})
    req_used = prune(requests, now)
    tok_used = prune(tokens, now)
    for lid in [lid for lid, exp in leases.items() if exp <= now]:
        del leases[lid]
    live = len(leases)
    req_free = free_at(requests, req_used - limits.rpm + 1, now) if limits.rpm and req_used >= limits.rpm else None
    tok_free = free_at(tokens, tok_used - limits.tpm + 1, now) if limits.tpm and tok_used >= limits.tpm else None
    reason = None
    if req_free is not None:
        reason = "requests"
    elif tok_free is not None:
        reason = "tokens"
    elif limits.concurrency and live >= limits.concurrency:
        reason = "concurrency"
    if reason is not None:
        return Verdict(False, reason, now, req_used, tok_used, live, req_free, tok_free)
    if limits.rpm:
        sec = _sec(now)
        requests[sec] = requests.get(sec, 0) + 1
        req_used += 1
    if limits.concurrency and lease_id:
        leases[lease_id] = now + ttl
        live += 1
    return Verdict(True, None, now, req_used, tok_used, live)


def finish(state: dict, lease_id: str | None, tokens_used: int, now: float, count_tokens: bool) -> None:
    """A request ended: free its lease, count its tokens in the window."""
    if lease_id:
        state.setdefault("l", {}).pop(lease_id, None)
    if count_tokens and tokens_used > 0:
        tokens = state.setdefault("t", {})
        prune(tokens, now)
        sec = _sec(now)
        tokens[sec] = tokens.get(sec, 0) + int(tokens_used)


def renew(state: dict, lease_ids, now: float, ttl: float = LEASE_TTL) -> None:
    leases = state.setdefault("l", {})
    for lid in lease_ids:
        if lid in leases:
            leases[lid] = now + ttl


def usage(state: dict, now: float) -> tuple[int, int, int]:
    """(requests, tokens, leases in flight) in the window now, for `keys show`."""
    req = prune(dict(state.get("r", {})), now)
    tok = prune(dict(state.get("t", {})), now)
    live = sum(1 for exp in state.get("l", {}).values() if exp > now)
    return req, tok, live


# --- what the client sees --------------------------------------------------------------------

def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(math.ceil(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def refusal_headers(limits: Limits, verdict: Verdict) -> dict[str, str]:
    """`retry-after` and Anthropic's `anthropic-ratelimit-*` headers, which Claude Code and the SDKs read
    to back off by themselves."""
    retry = max(1, math.ceil(verdict.retry_after))
    now = verdict.now
    headers = {"retry-after": str(retry), "retry-after-ms": str(max(1, math.ceil(verdict.retry_after * 1000)))}
    if limits.rpm:
        remaining = max(0, limits.rpm - verdict.requests_used)
        reset = verdict.requests_free_at if verdict.requests_free_at is not None else now
        headers["anthropic-ratelimit-requests-limit"] = str(limits.rpm)
        headers["anthropic-ratelimit-requests-remaining"] = str(remaining)
        headers["anthropic-ratelimit-requests-reset"] = _rfc3339(reset)
    elif limits.concurrency:
        # No request-rate limit: the requests headers tell the concurrency slots instead.
        headers["anthropic-ratelimit-requests-limit"] = str(limits.concurrency)
        headers["anthropic-ratelimit-requests-remaining"] = str(max(0, limits.concurrency - verdict.in_flight))
        headers["anthropic-ratelimit-requests-reset"] = _rfc3339(now + retry)
    if limits.tpm:
        reset = verdict.tokens_free_at if verdict.tokens_free_at is not None else now
        headers["anthropic-ratelimit-tokens-limit"] = str(limits.tpm)
        headers["anthropic-ratelimit-tokens-remaining"] = str(max(0, limits.tpm - verdict.tokens_used))
        headers["anthropic-ratelimit-tokens-reset"] = _rfc3339(reset)
        headers["anthropic-ratelimit-input-tokens-limit"] = str(limits.tpm)
        headers["anthropic-ratelimit-input-tokens-remaining"] = str(max(0, limits.tpm - verdict.tokens_used))
        headers["anthropic-ratelimit-input-tokens-reset"] = _rfc3339(reset)
    return headers


def refusal_message(key_name: str, limits: Limits, verdict: Verdict) -> str:
    retry = max(1, math.ceil(verdict.retry_after))
    if verdict.reason == "requests":
        what = f"its limit of {limits.rpm} requests per minute"
    elif verdict.reason == "tokens":
        what = f"its limit of {limits.tpm} tokens per minute ({verdict.tokens_used} used in the last minute)"
    else:
        what = f"its limit of {limits.concurrency} concurrent requests"
    return f"Key '{key_name}' is over {what}; retry in {retry} s"
