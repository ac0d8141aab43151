"""The dashboard's reads over the per-request rows, in SQL both SQLite and PostgreSQL run.

A backend mixes `DashboardQueries` in and provides `_query`, `_query_dicts`, `placeholder` and
`bucket_sql`. Every filter is either a known column of `nexus_requests` (checked against the table's
own column list, so columns other engineers add are filterable without code here) or one of the
named filters below. Values are always bound parameters.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

# Status classes the request log filters on.
STATUS_CLASSES = {
    "2xx": "status >= 200 AND status < 300",
    "3xx": "status >= 300 AND status < 400",
    "4xx": "status >= 400 AND status < 500",
    "5xx": "status >= 500",
    "error": "(error_type IS NOT NULL OR status >= 400)",
    "ok": "(error_type IS NULL AND status < 400)",
}

# One grouped pass gives the totals, the chart, the top domains and the top models at once.
_SUMMARY_COLUMNS = (
    "COUNT(*), SUM(CASE WHEN error_type IS NOT NULL OR status >= 400 THEN 1 ELSE 0 END),"
    " SUM(input_tokens), SUM(output_tokens), SUM(cache_creation_input_tokens), SUM(cache_read_input_tokens),"
    " SUM(cost_usd), SUM(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END)"
)
_TEXT_COLUMNS = frozenset({"request_id", "domain", "mode", "method", "path", "model_requested", "model_used",
                           "request_type", "error_type"})
SUMMARY_FIELDS = ("requests", "errors", "inputTokens", "outputTokens", "cacheCreationInputTokens",
                  "cacheReadInputTokens", "costUsd", "unpricedRequests")


class FilterError(ValueError):
    """A filter naming an unknown column or a bad value (the message says which)."""


class DashboardQueries:
    placeholder = "?"
    _columns_cache: tuple[str, ...] | None = None

    # --- provided by the backend ---------------------------------------------------------
    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:  # pragma: no cover - backend
        raise NotImplementedError

    def _query_dicts(self, sql: str, params: Sequence = ()) -> tuple[list[str], list[dict]]:  # pragma: no cover
        """(column names, rows as dicts)."""
        raise NotImplementedError

    def bucket_sql(self) -> str:  # pragma: no cover - backend
        """SQL for the 0-based bucket number of `ts`, given two placeholders: origin and width."""
        raise NotImplementedError

    def duration_percentiles(self, since: float, until: float,
                             quantiles: Sequence[float] = (0.5, 0.95)) -> list[float | None]:
        """Nearest-rank percentiles of duration_ms over [since, until)."""
        raise NotImplementedError  # pragma: no cover - backend

    # --- shared ----------------------------------------------------------------------------
    def request_columns(self) -> tuple[str, ...]:
        """The columns of the per-request table, in table order (read from the store itself)."""
        if self._columns_cache is None:
            columns, _ = self._query_dicts("SELECT * FROM nexus_requests WHERE 1 = 0")
            self._columns_cache = tuple(columns)
        return self._columns_cache

    def _where(self, since: float | None, until: float | None, filters: Mapping[str, Any] | None) -> tuple[str, list]:
        ph = self.placeholder
        where: list[str] = []
        params: list = []
        if since is not None:
            where.append(f"ts >= {ph}")
            params.append(float(since))
        if until is not None:
            where.append(f"ts < {ph}")
            params.append(float(until))
        columns = None
        for name, value in (filters or {}).items():
            if value is None or value == "":
                continue
            if name == "status_class":
                clause = STATUS_CLASSES.get(str(value))
                if clause is None:
                    raise FilterError(f"status: must be one of {', '.join(STATUS_CLASSES)}")
                where.append(clause)
            elif name == "model":
                where.append(f"(model_used = {ph} OR model_requested = {ph})")
                params.extend([str(value), str(value)])
            else:
                columns = columns or self.request_columns()
                if name not in columns or name == "id":
                    raise FilterError(f"unknown filter {name!r}")
                if name == "stream":
                    where.append(f"stream = {ph}")
                    params.append(str(value).lower() in ("1", "true", "yes"))
                elif name == "status":
                    try:
                        params.append(int(value))
                    except (TypeError, ValueError):
                        raise FilterError("status: must be a number") from None
                    where.append(f"status = {ph}")
                elif name in _TEXT_COLUMNS:
                    where.append(f"{name} = {ph}")  # as it is, so its index serves
                    params.append(str(value))
                else:
                    where.append(f"CAST({name} AS TEXT) = {ph}")
                    params.append(str(value))
        return (" WHERE " + " AND ".join(where)) if where else "", params

    def usage_summary(self, since: float, until: float, bucket_seconds: float,
                      filters: Mapping[str, Any] | None = None) -> list[tuple]:
        """Rows of (bucket, domain, model_requested, model_used, *SUMMARY_FIELDS, duration sum) over [since, until)."""
        ph = self.placeholder
        where, params = self._where(since, until, filters)
        sql = (f"SELECT {self.bucket_sql()} AS bucket, domain, model_requested, model_used, {_SUMMARY_COLUMNS}"
               f" FROM nexus_requests{where} GROUP BY 1, 2, 3, 4")
        assert ph  # the bucket expression uses two placeholders first
        return self._query(sql, [float(since), float(bucket_seconds), *params])

    def request_page(self, filters: Mapping[str, Any] | None = None, *, since: float | None = None,
                     until: float | None = None, before: tuple[float, int] | None = None,
                     limit: int = 50) -> list[dict]:
        """Newest first, keyset-paged: `before` is the (ts, id) of the last row of the previous page."""
        ph = self.placeholder
        where, params = self._where(since, until, filters)
        if before is not None:
            where += (" AND " if where else " WHERE ") + f"(ts < {ph} OR (ts = {ph} AND id < {ph}))"
            params.extend([float(before[0]), float(before[0]), int(before[1])])
        sql = f"SELECT * FROM nexus_requests{where} ORDER BY ts DESC, id DESC LIMIT {int(limit)}"
        return self._query_dicts(sql, params)[1]

    def request_by_id(self, row_id: int) -> dict | None:
        rows = self._query_dicts(f"SELECT * FROM nexus_requests WHERE id = {self.placeholder}", [int(row_id)])[1]
        return rows[0] if rows else None

    def known_values(self) -> dict[str, list[str]]:
        """Domains and models seen (from the small counter tables), for the filters' suggestions."""
        domains = [r[0] for r in self._query("SELECT domain FROM nexus_domain_usage ORDER BY domain LIMIT 500")]
        models = [r[0] for r in self._query("SELECT DISTINCT model FROM nexus_model_usage ORDER BY model LIMIT 500")]
        return {"domain": domains, "model": models}
