"""The dashboard's reads over the per-request rows, in SQL both SQLite and PostgreSQL run.

A backend mixes `DashboardQueries` in and provides `_query`, `_query_dicts`, `placeholder` and
`bucket_sql`. Every filter is either a known column of `nexus_requests` (checked against the table's
own column list, so columns other engineers add are filterable without code here) or one of the
named filters below. Values are always bound parameters.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .where import time_range

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


# Totals per period (an hour, a day) and (domain, model asked, model used), and a histogram of durations per
# period, kept by write_batch: a range of whole periods reads these few rows instead of every request row,
# and keeps its totals after old rows are pruned.
ROLLUP_PERIODS = (3600, 86400)
ROLLUP_TABLE = "nexus_usage_rollup"
DURATION_TABLE = "nexus_duration_rollup"
ROLLUP_SUMS = ("request_count", "error_count", "input_tokens", "output_tokens", "cache_creation_input_tokens",
               "cache_read_input_tokens", "cost_usd", "unpriced_count")
ROLLUP_COLUMNS = ("period", "start", "domain", "model_requested", "model_used", *ROLLUP_SUMS)
# Durations fall in buckets 10 % wide; a percentile read from them is the bucket's geometric middle (within 5 %).
DURATION_STEP = 1.1
_LOG_STEP = math.log(DURATION_STEP)


def duration_bucket(ms: float) -> int:
    return 0 if ms < 1 else 1 + int(math.log(ms) / _LOG_STEP)


def duration_of_bucket(idx: int) -> float:
    return 0.5 if idx <= 0 else DURATION_STEP ** (idx - 1) * math.sqrt(DURATION_STEP)


def rollup_ddl(integer: str, real: str) -> list[str]:
    return [
        f"CREATE TABLE {ROLLUP_TABLE} (period INTEGER NOT NULL, start {integer} NOT NULL, domain TEXT NOT NULL,"
        " model_requested TEXT NOT NULL, model_used TEXT NOT NULL, "
        + ", ".join(f"{c} {real if c == 'cost_usd' else integer} NOT NULL DEFAULT 0" for c in ROLLUP_SUMS)
        + ", PRIMARY KEY (period, start, domain, model_requested, model_used))",
        f"CREATE TABLE {DURATION_TABLE} (period INTEGER NOT NULL, start {integer} NOT NULL, bucket INTEGER NOT NULL,"
        f" request_count {integer} NOT NULL DEFAULT 0, PRIMARY KEY (period, start, bucket))",
    ]


def rollup_backfill(floor_div: str) -> list[str]:
    """Rows already stored go into the usage totals (unpriced: they were never priced); `floor_div` formats
    an SQL floor division of ts by {p}."""
    return [
        f"INSERT INTO {ROLLUP_TABLE} SELECT {p}, {floor_div.format(p=p)}, COALESCE(domain, 'unknown'),"
        " COALESCE(model_requested, ''), COALESCE(model_used, ''), COUNT(*),"
        " SUM(CASE WHEN error_type IS NOT NULL OR status >= 400 THEN 1 ELSE 0 END), SUM(input_tokens),"
        " SUM(output_tokens), SUM(cache_creation_input_tokens), SUM(cache_read_input_tokens), 0, COUNT(*)"
        " FROM nexus_requests GROUP BY 1, 2, 3, 4, 5"
        for p in ROLLUP_PERIODS
    ]


def rollup_upserts(ph: str, excluded: str, table_prefix: bool) -> tuple[str, str]:
    def own(table: str, c: str) -> str:
        return f"{table}.{c}" if table_prefix else c
    usage = (f"INSERT INTO {ROLLUP_TABLE} ({', '.join(ROLLUP_COLUMNS)}) VALUES ({', '.join([ph] * len(ROLLUP_COLUMNS))})"
             " ON CONFLICT (period, start, domain, model_requested, model_used) DO UPDATE SET "
             + ", ".join(f"{c} = {own(ROLLUP_TABLE, c)} + {excluded}.{c}" for c in ROLLUP_SUMS))
    durations = (f"INSERT INTO {DURATION_TABLE} (period, start, bucket, request_count) VALUES ({ph}, {ph}, {ph}, {ph})"
                 " ON CONFLICT (period, start, bucket) DO UPDATE SET request_count = "
                 f"{own(DURATION_TABLE, 'request_count')} + {excluded}.request_count")
    return usage, durations


def rollups(rows: Sequence[tuple]) -> tuple[list[tuple], list[tuple]]:
    """Sum a batch of `request_row` tuples per period: (usage rows, duration rows), each sorted by key."""
    usage: dict[tuple, list] = {}
    durations: dict[tuple, int] = {}
    for (ts, _rid, domain, _mode, _method, _path, asked, used, _rtype, _stream, inp, out, cc, cr, _tools,
         status, duration, error, _cc5m, _cc1h, cost, *_rest) in rows:
        failed = 1 if error is not None or status >= 400 else 0
        bucket = duration_bucket(duration)
        for period in ROLLUP_PERIODS:
            start = int(ts // period)
            key = (period, start, domain, asked or "", used or "")
            a = usage.get(key)
            if a is None:
                a = usage[key] = [0, 0, 0, 0, 0, 0, 0.0, 0]
            a[0] += 1
            a[1] += failed
            a[2] += inp
            a[3] += out
            a[4] += cc
            a[5] += cr
            if cost is None:
                a[7] += 1
            else:
                a[6] += cost
            dkey = (period, start, bucket)
            durations[dkey] = durations.get(dkey, 0) + 1
    return ([(*k, *usage[k]) for k in sorted(usage)], [(*k, durations[k]) for k in sorted(durations)])


def _rollup_period(since: float, until: float, bucket_seconds: float) -> int | None:
    """The coarsest stored period that tiles [since, until) and the buckets exactly, if any."""
    for period in reversed(ROLLUP_PERIODS):
        if since % period == 0 and until % period == 0 and bucket_seconds % period == 0:
            return period
    return None


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
        where, params = time_range(ph, since, until)
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
        period = None if filters else _rollup_period(since, until, bucket_seconds)
        if period is not None:
            sums = ", ".join(f"SUM({c})" for c in ROLLUP_SUMS)
            sql = (f"SELECT (start - {ph}) / {ph} AS bucket, domain, model_requested, model_used, {sums}"
                   f" FROM {ROLLUP_TABLE} WHERE period = {ph} AND start >= {ph} AND start < {ph} GROUP BY 1, 2, 3, 4")
            first = int(since // period)
            return self._query(sql, [first, int(bucket_seconds // period), period, first, int(until // period)])
        where, params = self._where(since, until, filters)
        sql = (f"SELECT {self.bucket_sql()} AS bucket, domain, model_requested, model_used, {_SUMMARY_COLUMNS}"
               f" FROM nexus_requests{where} GROUP BY 1, 2, 3, 4")
        return self._query(sql, [float(since), float(bucket_seconds), *params])

    def percentiles(self, since: float, until: float, quantiles: Sequence[float] = (0.5, 0.95)) -> list[float | None]:
        """Duration percentiles: exact from the rows, or, for whole periods, from the stored histogram."""
        period = _rollup_period(since, until, until - since)  # one bucket: the coarsest period that tiles it
        if period is None:
            return self.duration_percentiles(since, until, quantiles)
        ph = self.placeholder
        counts = self._query(f"SELECT bucket, SUM(request_count) FROM {DURATION_TABLE} WHERE period = {ph}"
                             f" AND start >= {ph} AND start < {ph} GROUP BY bucket ORDER BY bucket",
                             [period, int(since // period), int(until // period)])
        total = sum(int(c) for _, c in counts)
        if not total:
            return [None for _ in quantiles]
        out = []
        for q in quantiles:
            rank, seen = max(1, math.ceil(q * total - 1e-9)), 0
            for bucket, count in counts:
                seen += int(count)
                if seen >= rank:
                    out.append(round(duration_of_bucket(int(bucket)), 1))
                    break
        return out

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
