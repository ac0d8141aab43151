"""GET /token-stats: per-domain usage in the product's shape, plus ranges and a per-model breakdown."""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify, request

from ..errors import ProxyError, invalid_request
from ..storage import StorageError

bp = Blueprint("stats", __name__)

_GROUPS = ("domain", "key", "credential")
_LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()


@bp.get("/token-stats")
def token_stats():
    services = current_app.extensions["nexus"]
    if not services.dashboard_auth.has_session(request):  # an operator logged in to the dashboard may read it
        services.access.require_admin(request.headers)
    since = _time_arg("since")
    until = _time_arg("until")
    group_by = request.args.get("group_by") or "domain"
    if group_by not in _GROUPS:
        raise invalid_request("group_by: must be 'domain', 'key' or 'credential'")
    accounting = services.accounting
    try:
        if group_by == "credential":
            stats = accounting.credential_stats(since, until)
        else:
            stats = accounting.stats(since, until)
        models = accounting.model_stats(since, until)
    except StorageError as exc:
        raise ProxyError(503, f"The usage store is unavailable ({exc}); usage is buffered and will be written "
                              "when it is back", "api_error") from None
    body = {"status": "ok", "stats": stats, "timestamp": _iso(datetime.now(timezone.utc))}
    if group_by != "domain":
        body["groupBy"] = group_by
    if since is not None or until is not None:
        body["range"] = {"since": _iso_or_none(since), "until": _iso_or_none(until)}
    body["models"] = models
    body["totals"] = _totals(stats)
    if group_by == "key":
        try:
            body["keys"] = services.client_keys.store.usage_by_key(since, until)
        except StorageError as exc:
            raise ProxyError(503, f"The usage store is unavailable ({exc})", "api_error") from None
    return jsonify(body)


def _totals(stats: dict) -> dict:
    """Sums over the domains: requests, errors, tokens, `costUsd` and `unpricedRequests`."""
    keys = ("requestCount", "errorCount", "inputTokens", "outputTokens", "cacheCreationInputTokens",
            "cacheReadInputTokens", "unpricedRequests")
    totals = {k: sum(int(s.get(k) or 0) for s in stats.values()) for k in keys}
    totals["costUsd"] = round(sum(float(s.get("costUsd") or 0.0) for s in stats.values()), 6)
    return totals


def _time_arg(name: str) -> float | None:
    """Epoch seconds, epoch milliseconds, or an ISO-8601 time / date (UTC when no zone is given)."""
    value = request.args.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        seconds = number / 1000 if number > 1e11 else number
        # nan, inf, 1e400 (inf once parsed) and times before 1970 or after 9999 name no moment we hold
        if not (0 <= seconds <= _LATEST):
            raise invalid_request(f"{name}: must be a time between 1970 and 9999 (epoch seconds or milliseconds, "
                                  "or ISO-8601)")
        return seconds
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid_request(f"{name}: must be an ISO-8601 time (e.g. 2026-11-24 or 2026-11-24T00:00:00Z) "
                              "or epoch seconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_or_none(ts: float | None) -> str | None:
    return None if ts is None else _iso(datetime.fromtimestamp(ts, timezone.utc))
