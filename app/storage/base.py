"""The storage interface the services use; SQLite (one host) and PostgreSQL (a fleet) implement it."""
from __future__ import annotations

import abc
import contextlib
import time
from typing import Any, ContextManager, Sequence

from ..records import RequestRecord
from .dashboard import DashboardQueries
from .where import time_range

SCHEMA_VERSION = 5


def apply_migrations(execute, migrations: Sequence[Sequence[str]], placeholder: str) -> None:
    """Bring the schema to SCHEMA_VERSION, recording it in nexus_meta; the caller holds the migration lock.

    `execute(sql, params)` is the backend's cursor call; `placeholder` its parameter marker.
    """
    execute("CREATE TABLE IF NOT EXISTS nexus_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", ())
    row = execute("SELECT value FROM nexus_meta WHERE key = 'schema_version'", ()).fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StorageError(f"database schema version {version} is newer than this proxy ({SCHEMA_VERSION})")
    for target in range(version, SCHEMA_VERSION):
        for stmt in migrations[target]:
            execute(stmt, ())
    if version != SCHEMA_VERSION:
        execute(f"INSERT INTO nexus_meta (key, value) VALUES ('schema_version', {placeholder})"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))

# camelCase keys of /token-stats, in the order they are shown.
DOMAIN_KEYS = (
    "inputTokens", "outputTokens", "cacheCreationInputTokens", "cacheReadInputTokens",
    "requestCount", "queryEvaluationCount", "inferenceCount", "toolCallCount", "errorCount",
)
MODEL_KEYS = (
    "requestCount", "inputTokens", "outputTokens", "cacheCreationInputTokens", "cacheReadInputTokens",
    "toolCallCount", "errorCount",
)


class StorageError(RuntimeError):
    """The store could not be reached or refused the operation (message holds no secret)."""


class StorageDataError(StorageError):
    """The store is reachable but refused the data itself (so retrying the same batch cannot help)."""


class Storage(DashboardQueries, abc.ABC):
    """Usage counters, the per-request log, report leadership and (PostgreSQL only) shared credentials.

    The dashboard's reads (ranges, keyset pages, filters) come from `DashboardQueries`.

    Implementations connect lazily (nothing happens in the constructor), migrate the schema on first
    use, and are safe to use from several greenlets of one process.
    """

    backend: str = "?"
    supports_credentials: bool = False

    @abc.abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema, idempotently, recording the schema version."""

    @abc.abstractmethod
    def write_batch(self, records: Sequence[RequestRecord], skip_existing: bool = False) -> None:
        """In one transaction: bump the counters, insert one row per request, enforce retention.

        `skip_existing` (records replayed from a journal): leave out request ids already stored, so a
        record written just before its process was killed is not counted twice.
        """

    @abc.abstractmethod
    def domain_stats(self, since: float | None = None, until: float | None = None) -> dict[str, dict]:
        """Per-domain totals; with since/until (epoch seconds, until exclusive) from the request rows."""

    @abc.abstractmethod
    def model_stats(self, since: float | None = None, until: float | None = None,
                    domain: str | None = None) -> dict[str, dict]:
        """Per model used; optionally for one domain and/or a time range."""

    @abc.abstractmethod
    def totals_version(self) -> int:
        """A cheap number that changes whenever the counters change."""

    @abc.abstractmethod
    def try_report_leadership(self) -> bool:
        """True in exactly one process at a time (per host for SQLite, per fleet for PostgreSQL)."""

    def load_credential(self, key: str) -> tuple[dict, float] | None:
        """The stored credential and its updated_at (epoch seconds), or None."""
        return None

    def save_credential(self, key: str, data: dict) -> None:
        """Store a refreshed credential (no-op where credentials live in files)."""

    def credential_lock(self, key: str, timeout: float = 30.0) -> ContextManager[None]:
        """Serialise refreshes of one credential (no-op where the file lock does it)."""
        return contextlib.nullcontext()

    # Pooled credentials' learned state and sticky conversations. This default keeps them in the process
    # (one worker); SQLite shares them between a host's workers, PostgreSQL across a fleet.
    def load_credential_states(self) -> list[tuple[str, str, dict, float]]:
        """(key, phase, data, updated_at) of every credential state."""
        return [(k, p, d, u) for k, (p, d, u) in self._local_states().items()]

    def save_credential_state(self, key: str, data: dict, updated_at: float, phase: str | None = None,
                              merge=None) -> tuple[bool, str | None]:
        """Store a state (kept when the stored one is newer; `merge(old, new)` joins the two copies). With `phase`,
        set the phase too and return (whether this write changed it, the phase before) atomically, so one
        writer announces each change."""
        states = self._local_states()
        old = states.get(key)
        before = old[0] if old else None
        new_phase = phase or before or "ok"
        newer = old is None or updated_at >= old[2]
        if old is not None and merge is not None:
            data, newer = (merge(old[1], data) if newer else merge(data, old[1])), True
        if newer or phase is not None:
            states[key] = (new_phase, data if newer else old[1], max(updated_at, old[2] if old else 0.0))
        return (phase is not None and before != phase), before

    def sticky_credential(self, conversation: str) -> str | None:
        """The credential a conversation was served by, or None."""
        return self._local_sticky().get(conversation)

    def save_sticky_credentials(self, pairs: dict[str, str], now: float) -> None:
        """Remember conversation -> credential choices."""
        sticky = self._local_sticky()
        if len(sticky) > 100_000:
            sticky.clear()
        sticky.update(pairs)

    def credential_stats(self, since: float | None = None, until: float | None = None,
                         domain: str | None = None) -> dict[str, dict]:
        """Requests and tokens per credential (the request rows that name one)."""
        return {}

    def _local_states(self) -> dict:
        if not hasattr(self, "_states_mem"):
            self._states_mem = {}
        return self._states_mem

    def _local_sticky(self) -> dict:
        if not hasattr(self, "_sticky_mem"):
            self._sticky_mem = {}
        return self._sticky_mem

    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether the store answered recently; never blocks for long."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and locks."""

    # --- plain statements, for the client-key store (app/keys/store.py) ----------------------

    placeholder: str = "?"

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Rows of one read; raises StorageError."""
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence = ()) -> int:
        """One write statement in its own transaction; the number of rows it changed. Raises StorageError."""
        raise NotImplementedError

    def row_count(self) -> int:  # pragma: no cover - overridden
        """Rows currently in the per-request log (tests and GET / diagnostics)."""
        raise NotImplementedError


# --- helpers shared by both implementations -------------------------------------------------

REQUEST_COLUMNS = (
    "ts", "request_id", "domain", "mode", "method", "path", "model_requested", "model_used",
    "request_type", "stream", "input_tokens", "output_tokens", "cache_creation_input_tokens",
    "cache_read_input_tokens", "tool_calls", "status", "duration_ms", "error_type",
    # schema 2: cost
    "cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens", "cost_usd",
    "key_id",
    # schema 5: which pooled credential (by file name) or fallback upstream served it
    "credential",
)

# Counter columns in the order of the tuple `aggregate` produces.
COUNTER_COLUMNS = (
    "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
    "request_count", "query_count", "inference_count", "tool_call_count", "error_count", "last_updated",
)
# Added by schema 2, after the columns above (so schema 1's DDL stays what it was): dollars, and the
# requests that used tokens on a model without a price.
COST_COUNTER_COLUMNS = ("cost_usd", "unpriced_count")
ALL_COUNTER_COLUMNS = COUNTER_COLUMNS + COST_COUNTER_COLUMNS


_MAX_COUNT = 10**12  # sums stay far inside BIGINT whatever an upstream claims
_MAX_TEXT = 512


def _count(value) -> int:
    if type(value) is int and 0 <= value <= _MAX_COUNT:  # the usual case, cheaply
        return value
    try:
        n = int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0
    return 0 if n < 0 else min(n, _MAX_COUNT)


def _text(value) -> str | None:
    # PostgreSQL text cannot hold NUL; nothing here needs to be long.
    if value is None:
        return None
    text = value if type(value) is str else str(value)
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT]
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text


def _number(value) -> float:
    try:
        f = float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return f if f == f and abs(f) < 1e15 else 0.0  # no NaN / inf


def request_row(rec: RequestRecord) -> tuple:
    ts = _number(rec.timestamp) or time.time()
    return (
        ts, _text(rec.request_id), _text(rec.domain) or "unknown", _text(rec.mode), _text(rec.method),
        _text(rec.path), _text(rec.model_requested) or None, _text(rec.model_used) or None, _text(rec.request_type),
        bool(rec.stream), _count(rec.input_tokens), _count(rec.output_tokens),
        _count(rec.cache_creation_input_tokens), _count(rec.cache_read_input_tokens), _count(rec.tool_calls),
        _status(rec.status), _number(rec.duration_ms), _text(rec.error_type),
        _count(rec.cache_creation_5m_input_tokens), _count(rec.cache_creation_1h_input_tokens),
        _cost(rec.cost_usd), _text(rec.key_id), _text(rec.credential) or None,
    )


def new_rows(rows: list[tuple], existing: set) -> list[tuple]:
    """`rows` without those whose request id is in `existing`, nor repeats within the batch."""
    out = []
    seen = set(existing)
    for row in rows:
        rid = row[1]
        if rid in seen:
            continue
        seen.add(rid)
        out.append(row)
    return out


def _cost(value) -> float | None:
    # None stays None: "unpriced" must never become $0.
    if value is None:
        return None
    f = _number(value)
    return f if f >= 0 else 0.0


def _status(value) -> int:
    n = _count(value)
    return n if n < 1000 else 0


def aggregate(rows: Sequence[tuple]) -> tuple[dict[str, list], dict[tuple[str, str], list]]:
    """Sum a batch of `request_row` tuples per domain and per (domain, model): one upsert per key, not per record."""
    by_domain: dict[str, list] = {}
    by_model: dict[tuple[str, str], list] = {}
    for (ts, _rid, domain, _mode, _method, _path, asked, used, rtype, _stream, inp, out, cc, cr, tools,
         status, duration, error, _cc5m, _cc1h, cost, *_rest) in rows:
        inference = rtype == "inference"
        delta = (inp, out, cc, cr, 1, 0 if inference else 1, 1 if inference else 0, tools,
                 1 if error is not None or status >= 400 else 0)
        last = int(ts * 1000 + duration)
        priced = cost if cost is not None else 0.0
        unpriced = 1 if cost is None else 0
        for table, key in ((by_domain, domain), (by_model, (domain, used or asked or "unknown"))):
            acc = table.get(key)
            if acc is None:
                table[key] = [*delta, last, priced, unpriced]
            else:
                for i, v in enumerate(delta):
                    acc[i] += v
                if last > acc[9]:
                    acc[9] = last
                acc[10] += priced
                acc[11] += unpriced
    return by_domain, by_model


def domain_dict(row: Sequence[Any]) -> dict:
    """(input, output, cache_creation, cache_read, requests, queries, inferences, tools, errors, last_ms)
    -> the camelCase dict of /token-stats."""
    out = {k: int(row[i] or 0) for i, k in enumerate(DOMAIN_KEYS)}
    out["lastUpdated"] = int(row[9] or 0)
    out["costUsd"] = round(float(row[10] or 0.0), 6)
    out["unpricedRequests"] = int(row[11] or 0)
    return out


def model_dict(row: Sequence[Any]) -> dict:
    """Same tuple layout as `domain_dict`, the per-model keys."""
    d = domain_dict(row)
    return {k: d[k] for k in MODEL_KEYS} | {"lastUpdated": d["lastUpdated"], "costUsd": d["costUsd"],
                                            "unpricedRequests": d["unpricedRequests"]}


# Aggregates over the request rows, in the tuple layout of `domain_dict` (portable SQL: SQLite and PostgreSQL).
_ROW_AGGREGATES = (
    "SUM(input_tokens), SUM(output_tokens), SUM(cache_creation_input_tokens), SUM(cache_read_input_tokens),"
    " COUNT(*), SUM(CASE WHEN request_type = 'inference' THEN 0 ELSE 1 END),"
    " SUM(CASE WHEN request_type = 'inference' THEN 1 ELSE 0 END), SUM(tool_calls),"
    " SUM(CASE WHEN error_type IS NOT NULL OR status >= 400 THEN 1 ELSE 0 END),"
    " MAX(ts * 1000 + duration_ms),"  # float: truncated in Python, the same on both backends
    " SUM(cost_usd), SUM(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END)"
)
_COUNTER_AGGREGATES = (
    "SUM(input_tokens), SUM(output_tokens), SUM(cache_creation_input_tokens), SUM(cache_read_input_tokens),"
    " SUM(request_count), SUM(query_count), SUM(inference_count), SUM(tool_call_count), SUM(error_count),"
    " MAX(last_updated), SUM(cost_usd), SUM(unpriced_count)"
)


def credential_stats_query(ph: str, since: float | None, until: float | None,
                           domain: str | None = None) -> tuple[str, list]:
    """SQL + params for usage per credential (request rows only: the counters do not know credentials)."""
    where, params = time_range(ph, since, until)
    where.insert(0, "credential IS NOT NULL")
    if domain is not None:
        where.append(f"domain = {ph}")
        params.append(domain)
    return (f"SELECT credential, {_ROW_AGGREGATES} FROM nexus_requests WHERE {' AND '.join(where)}"
            " GROUP BY credential ORDER BY credential", params)


def stats_query(kind: str, ph: str, since: float | None, until: float | None,
                domain: str | None = None, prefix: str = "nexus_") -> tuple[str, list]:
    """SQL + params for domain (kind="domain") or model (kind="model") stats; `ph` is the placeholder."""
    key = "domain" if kind == "domain" else "model"
    where: list[str] = []
    params: list = []
    if since is None and until is None:
        table = f"{prefix}domain_usage" if kind == "domain" else f"{prefix}model_usage"
        select = f"SELECT {key}, {_COUNTER_AGGREGATES} FROM {table}"
    else:
        select = f"SELECT COALESCE(model_used, model_requested, 'unknown') AS model, {_ROW_AGGREGATES}" \
            f" FROM {prefix}requests" if kind == "model" else \
            f"SELECT domain, {_ROW_AGGREGATES} FROM {prefix}requests"
        where, params = time_range(ph, since, until)
    if domain is not None:
        where.append(f"domain = {ph}")
        params.append(domain)
    sql = select + (" WHERE " + " AND ".join(where) if where else "") + f" GROUP BY {key} ORDER BY {key}"
    return sql, params
