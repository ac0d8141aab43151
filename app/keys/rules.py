"""A client key's record and the rules read from it: flag values, budget periods, model globs. Pure."""
from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

PERIODS = ("day", "week", "month")


class RuleError(ValueError):
    """A bad flag value: `str(err)` is the one line shown to the operator."""


@dataclass(frozen=True)
class ClientKey:
    id: str
    name: str
    key_hash: str
    last4: str
    team: str | None = None
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    budget_usd: float | None = None
    budget_period: str | None = None
    expires_at: float | None = None
    domain: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    revoked_at: float | None = None
    _model_re: re.Pattern | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.models:
            # One compiled alternation: a request checks every pattern in one match.
            pattern = "|".join(fnmatch.translate(p.lower()) for p in self.models)
            object.__setattr__(self, "_model_re", re.compile(pattern))

    @property
    def limited(self) -> bool:
        return bool(self.rpm or self.tpm or self.concurrency)

    def allows_model(self, model: str | None) -> bool:
        if self._model_re is None:
            return True
        return isinstance(model, str) and self._model_re.match(model.lower()) is not None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def with_changes(self, **changes) -> "ClientKey":
        return replace(self, **changes)

    def limits_dict(self) -> dict:
        """What `keys list/show --json` print: never the key, never its hash."""
        return {
            "id": self.id, "name": self.name, "team": self.team, "last4": self.last4,
            "models": list(self.models), "rpm": self.rpm, "tpm": self.tpm, "concurrency": self.concurrency,
            "budget": budget_text(self.budget_usd, self.budget_period),
            "expires": iso_minute(self.expires_at) if self.expires_at is not None else None,
            "domain": self.domain, "revoked": self.revoked_at is not None,
            "created": iso_minute(self.created_at),
        }


# --- flag values -----------------------------------------------------------------------------

def parse_positive_int(flag: str, value: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise RuleError(f"{flag}: must be a whole number, got {value!r}") from None
    if n < 1 or n > 10**12:
        raise RuleError(f"{flag}: must be at least 1, got {value!r}")
    return n


def parse_budget(value: str) -> tuple[float, str]:
    """'50/month' -> (50.0, 'month'); dollars per calendar day, week or month (UTC)."""
    text = str(value).strip().lstrip("$")
    amount, sep, period = text.partition("/")
    period = period.strip().lower()
    try:
        dollars = float(amount)
    except ValueError:
        dollars = math.nan
    if not sep or period not in PERIODS or not math.isfinite(dollars) or dollars <= 0 or dollars > 1e9:
        raise RuleError(f"--budget: must be DOLLARS/day, DOLLARS/week or DOLLARS/month (e.g. 50/month), got {value!r}")
    return dollars, period


def parse_models(value: str) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in str(value).split(",") if p.strip())
    if not patterns:
        raise RuleError(f"--models: must be comma-separated model patterns (e.g. 'claude-*sonnet*'), got {value!r}")
    return patterns


def parse_expires(value: str) -> float:
    """A date (the key stops working at 00:00 UTC that day) or an ISO-8601 time; epoch seconds."""
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise RuleError(f"--expires: must be a date or time like 2027-01-31 or 2027-01-31T12:00Z, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def parse_name(flag: str, value: str) -> str:
    text = str(value).strip()
    if not text or len(text) > 200 or any(ord(c) < 32 for c in text):
        raise RuleError(f"{flag}: must be 1-200 printable characters, got {value!r}")
    return text


def parse_domain(value: str) -> str:
    text = str(value).strip().lower()
    if not re.fullmatch(r"[a-z0-9.-]+(:\d+)?", text):
        raise RuleError(f"--domain: must be a host name like team-a.example.com, got {value!r}")
    return text.rsplit(":", 1)[0] if ":" in text else text


# --- periods and times -----------------------------------------------------------------------

def period_bounds(period: str, now: float) -> tuple[float, float]:
    """The calendar period (UTC) holding `now`: [start, end) in epoch seconds."""
    t = datetime.fromtimestamp(now, timezone.utc)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())  # ISO weeks start on Monday
        end = start + timedelta(days=7)
    elif period == "month":
        start = day.replace(day=1)
        end = (start.replace(year=start.year + 1, month=1) if start.month == 12
               else start.replace(month=start.month + 1))
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return start.timestamp(), end.timestamp()


def iso_minute(ts: float) -> str:
    """2027-01-01T00:00Z, the form the budget message uses."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def budget_text(amount: float | None, period: str | None) -> str | None:
    if amount is None or period is None:
        return None
    return f"${amount:g}/{period}"
