"""What the dashboard shows, read from the store: the overview of a time range, a page of the request log,
one request's details, the credentials. No Flask here: the blueprint parses and renders."""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from ..masking import mask_text
from ..storage.dashboard import STATUS_CLASSES, SUMMARY_FIELDS, FilterError

# Named ranges: (label, span in seconds, bucket width in seconds). One chart point per bucket.
RANGES: dict[str, tuple[str, int, int]] = {
    "1h": ("Last hour", 3600, 60),
    "24h": ("Last 24 hours", 86400, 3600),
    "7d": ("Last 7 days", 7 * 86400, 6 * 3600),
    "30d": ("Last 30 days", 30 * 86400, 86400),
}
DEFAULT_RANGE = "24h"
# For a from-to range: the narrowest of these that keeps the chart at MAX_BUCKETS points or fewer.
_WIDTHS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 60

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
TOP_N = 10

# Columns the request log shows in its fixed cells; any other column of the table is shown after them.
_SHOWN = {"id", "ts", "request_id", "domain", "mode", "model_requested", "model_used", "stream", "input_tokens",
          "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "cost_usd", "duration_ms",
          "status", "error_type", "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens",
          "method", "path", "request_type", "tool_calls"}
# Never shown, whatever a future column holds.
_HIDDEN = re.compile(r"(secret|password|passwd|hash|salt|api_key$|^key$|token_value|credential_value)", re.I)
# Named filters of the request log (besides any column of the table).
NAMED_FILTERS = ("domain", "model", "status_class", "error_type")


class DashboardInputError(ValueError):
    """A bad range, cursor or filter in the query string (the message says which)."""


@dataclass(frozen=True)
class TimeRange:
    key: str  # "1h" | "24h" | "7d" | "30d" | "custom"
    label: str
    since: float
    until: float
    bucket: int

    @property
    def buckets(self) -> int:
        return max(1, math.ceil((self.until - self.since) / self.bucket))


def parse_time(value: str, name: str) -> float:
    """ISO-8601 (a zone-less time is UTC, as `datetime-local` inputs send it) or epoch seconds."""
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(number) and 0 <= number < 1e11:
            return number
        raise DashboardInputError(f"{name}: not a time")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise DashboardInputError(f"{name}: must be a date and time like 2026-11-24T09:00") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def parse_range(args: Mapping[str, str], now: float | None = None) -> TimeRange:
    now = time.time() if now is None else now
    start, end = (args.get("from") or "").strip(), (args.get("to") or "").strip()
    if start or end:
        since = parse_time(start, "from") if start else now - RANGES[DEFAULT_RANGE][1]
        until = parse_time(end, "to") if end else now
        if until <= since:
            raise DashboardInputError("to: must be after from")
        if until - since > 400 * 86400:
            raise DashboardInputError("from/to: at most 400 days")
        span = until - since
        width = next((w for w in _WIDTHS if span / w <= MAX_BUCKETS), _WIDTHS[-1])
        if width >= 3600:  # whole buckets on UTC boundaries: read from the stored hourly or daily totals
            since, until = float(since // width * width), float(math.ceil(until / width) * width)
        return TimeRange("custom", f"{_iso(since)} to {_iso(until)}", since, until, width)
    key = (args.get("range") or DEFAULT_RANGE).strip()
    if key not in RANGES:
        raise DashboardInputError(f"range: must be one of {', '.join(RANGES)}, or from/to")
    label, span, width = RANGES[key]
    if width % 3600 == 0:
        # Whole buckets on UTC boundaries, the current one included: these ranges read the hourly totals.
        until = float(math.ceil((now + 0.001) / width) * width)
        return TimeRange(key, label, until - span, until, width)
    # A hair past now, so that a request recorded this very second is inside the range.
    return TimeRange(key, label, now + 0.001 - span, now + 0.001, width)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def iso_ms(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _zero() -> dict:
    return {k: 0 for k in SUMMARY_FIELDS} | {"costUsd": 0.0}


def _add(acc: dict, row: tuple) -> None:
    for name, value in zip(SUMMARY_FIELDS, row):
        if name == "costUsd":
            acc[name] += float(value or 0.0)
        else:
            acc[name] += int(value or 0)


def _finish(acc: dict) -> dict:
    acc["costUsd"] = round(acc["costUsd"], 6)
    acc["tokens"] = acc["inputTokens"] + acc["outputTokens"] + acc["cacheCreationInputTokens"] \
        + acc["cacheReadInputTokens"]
    acc["errorRate"] = round(acc["errors"] / acc["requests"], 4) if acc["requests"] else 0.0
    return acc


class DashboardService:
    def __init__(self, storage, accounting, credentials, settings) -> None:
        self.storage = storage
        self.accounting = accounting
        self.credentials = credentials
        self.settings = settings
        # usage per client key (app/keys/store.py), when the app has client keys
        self.key_usage = None

    def _fresh(self) -> None:
        # This worker's latest records first (other workers write theirs within a second).
        self.accounting.flush()

    # --- overview ----------------------------------------------------------------------------
    def overview(self, tr: TimeRange) -> dict:
        self._fresh()
        rows = self.storage.usage_summary(tr.since, tr.until, tr.bucket)
        n = tr.buckets
        series = [_zero() for _ in range(n)]
        totals = _zero()
        domains: dict[str, dict] = {}
        models: dict[tuple[str, str], dict] = {}
        for bucket, domain, asked, used, *sums in rows:
            i = min(max(int(bucket or 0), 0), n - 1)
            _add(series[i], sums)
            _add(totals, sums)
            _add(domains.setdefault(domain or "unknown", _zero()), sums)
            _add(models.setdefault((asked or "", used or asked or ""), _zero()), sums)
        p50, p95 = self.storage.percentiles(tr.since, tr.until, (0.5, 0.95))
        order = lambda item: (-item[1]["costUsd"], -item[1]["requests"], str(item[0]))  # noqa: E731
        return {
            "range": {"key": tr.key, "label": tr.label, "since": iso_ms(tr.since), "until": iso_ms(tr.until),
                      "bucketSeconds": tr.bucket, "buckets": n},
            "totals": _finish(totals) | {"p50Ms": p50, "p95Ms": p95},
            "series": [_finish(s) | {"start": iso_ms(tr.since + i * tr.bucket)} for i, s in enumerate(series)],
            "topDomains": [{"domain": d} | _finish(v) for d, v in sorted(domains.items(), key=order)[:TOP_N]],
            "topModels": [{"requested": a or None, "used": u or None} | _finish(v)
                          for (a, u), v in sorted(models.items(), key=order)[:TOP_N]],
            "topKeys": self._top_keys(tr),
            "generatedAt": iso_ms(time.time()),
        }

    def _top_keys(self, tr: TimeRange) -> list[dict]:
        """Usage and cost per client key (name and team), the costliest first."""
        if self.key_usage is None:
            return []
        rows = [{"keyId": e["keyId"], "name": e["name"], "team": e["team"], "requests": e["requestCount"],
                 "errors": e["errorCount"], "tokens": e["inputTokens"] + e["outputTokens"],
                 "costUsd": e["costUsd"], "unpricedRequests": e["unpricedRequests"]}
                for e in self.key_usage(tr.since, tr.until)]
        rows.sort(key=lambda r: (-r["costUsd"], -r["requests"], str(r["name"])))
        return rows[:TOP_N]

    # --- the request log ---------------------------------------------------------------------
    def request_filters(self, args: Mapping[str, str]) -> dict[str, str]:
        """The filters in a query string: the named ones and any column of the table (`key_name=alice`)."""
        columns = set(self.storage.request_columns())
        out: dict[str, str] = {}
        for name, value in args.items():
            if name in ("range", "from", "to", "before", "limit", "token", "poll") or value in (None, ""):
                continue
            if name == "status_class":
                if value not in STATUS_CLASSES:
                    raise DashboardInputError(f"status: must be one of {', '.join(STATUS_CLASSES)}")
            elif name not in NAMED_FILTERS and (name not in columns or name in ("id", "ts") or _HIDDEN.search(name)):
                raise DashboardInputError(f"unknown filter {name!r}")
            out[name] = str(value)[:200]
        return out

    def requests(self, args: Mapping[str, str]) -> dict:
        self._fresh()
        filters = self.request_filters(args)
        since = parse_time(args["from"], "from") if args.get("from") else None
        until = parse_time(args["to"], "to") if args.get("to") else None
        try:
            limit = int(args.get("limit") or PAGE_SIZE)
        except ValueError:
            raise DashboardInputError("limit: must be a whole number") from None
        limit = min(max(limit, 1), MAX_PAGE_SIZE)
        before = parse_cursor(args.get("before"))
        try:
            rows = self.storage.request_page(filters, since=since, until=until, before=before, limit=limit + 1)
        except FilterError as exc:
            raise DashboardInputError(str(exc)) from None
        more = len(rows) > limit
        rows = rows[:limit]
        extra = [c for c in self.storage.request_columns() if c not in _SHOWN and not _HIDDEN.search(c)]
        return {
            "rows": [self._row(r, extra) for r in rows],
            "next": make_cursor(rows[-1]) if more and rows else None,
            "filters": filters,
            "extraColumns": extra,
            "limit": limit,
        }

    def detail(self, row_id: int) -> dict | None:
        self._fresh()
        row = self.storage.request_by_id(row_id)
        if row is None:
            return None
        fields = [(name, _safe(value)) for name, value in row.items() if not _HIDDEN.search(name)]
        return {"row": self._row(row, []), "fields": fields}

    @staticmethod
    def _row(r: dict, extra: list[str]) -> dict:
        cost = r.get("cost_usd")
        return {
            "id": r.get("id"),
            "time": iso_ms(r.get("ts")),
            "requestId": _safe(r.get("request_id")),
            "domain": _safe(r.get("domain")),
            "mode": r.get("mode"),
            "modelRequested": _safe(r.get("model_requested")),
            "modelUsed": _safe(r.get("model_used")),
            "stream": bool(r.get("stream")),
            "inputTokens": int(r.get("input_tokens") or 0),
            "outputTokens": int(r.get("output_tokens") or 0),
            "cacheCreationInputTokens": int(r.get("cache_creation_input_tokens") or 0),
            "cacheReadInputTokens": int(r.get("cache_read_input_tokens") or 0),
            "costUsd": None if cost is None else round(float(cost), 6),
            "durationMs": round(float(r.get("duration_ms") or 0.0), 1),
            "status": int(r.get("status") or 0),
            "errorType": _safe(r.get("error_type")),
            "extra": {c: _safe(r.get(c)) for c in extra},
        }

    # --- credentials -------------------------------------------------------------------------
    def credentials_status(self) -> list[dict]:
        """One row per mapped credential file (a pool's in its order): the file, and what its answers told."""
        try:
            usage = self.accounting.credential_stats()
        except Exception:  # the page must show the files even when the store does not answer
            usage = None
        out = []
        for domain, st in sorted(self.credentials.status(usage).items()):
            for item in st["pool"] if "pool" in st else (st,):
                out.append(_credential_row(domain, item))
        return out


def _credential_row(domain: str, st: dict) -> dict:
    problems = [p for p in (st.get("error"), st.get("lastRefreshError")) if p]
    if st.get("expired"):
        problems.append("the OAuth access token has expired")
    if st.get("broken"):
        problems.append(f"broken: {st['broken']}")
    tokens = st.get("tokens") or {}
    return {
        "domain": domain,
        "name": st.get("name"),
        "type": st.get("type"),
        "file": st.get("file"),
        "valid": bool(st.get("valid")) and not st.get("expired"),
        "problems": [mask_text(str(p)) for p in problems],
        "expiresAt": st.get("expiresAt"),
        "lastRefresh": st.get("lastRefresh"),
        "source": st.get("source"),
        # what the upstream's rate-limit headers said (subscriptions: the 5-hour and 7-day windows)
        "state": st.get("status"),
        "fiveHour": st.get("fiveHour"),
        "sevenDay": st.get("sevenDay"),
        "coolingUntil": st.get("coolingUntil"),
        "coolingReason": st.get("coolingReason"),
        "limits": st.get("limits"),
        "requests": st.get("requests"),
        "tokens": (int(tokens.get("input") or 0) + int(tokens.get("output") or 0)) if tokens else None,
    }


def _safe(value: Any) -> Any:
    """A stored value as shown: text goes through the masking rules (a key pasted into a model name, say)."""
    if isinstance(value, str):
        return mask_text(value)
    return value


def make_cursor(row: dict) -> str:
    return f"{float(row['ts'])!r}_{int(row['id'])}"  # repr: the exact float back


def parse_cursor(value: str | None) -> tuple[float, int] | None:
    if not value:
        return None
    try:
        ts, row_id = value.split("_", 1)
        parsed = (float(ts), int(row_id))
    except ValueError:
        raise DashboardInputError("before: not a page cursor") from None
    if not math.isfinite(parsed[0]):
        raise DashboardInputError("before: not a page cursor")
    return parsed
