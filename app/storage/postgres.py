"""PostgreSQL storage (`DATABASE_URL`): usage, report leadership and refreshed credentials shared by a fleet.

psycopg is imported on first use, not at import time: psycopg picks its wait function when it is
imported, and only after gevent's monkey-patching does it pick one that yields to other greenlets
(gunicorn's gevent worker patches after fork, so a preloaded import would block the worker).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import zlib
from typing import Any, Iterator, Sequence

from ..records import RequestRecord
from .dashboard import rollup_backfill, rollup_ddl, rollup_upserts, rollups
from .base import (
    ALL_COUNTER_COLUMNS, COUNTER_COLUMNS, REQUEST_COLUMNS, SCHEMA_VERSION, Storage, StorageDataError, StorageError, aggregate, domain_dict,
    apply_migrations, credential_stats_query, model_dict, new_rows, request_row, stats_query,
)

log = logging.getLogger("nexus.storage")

# Second key of the two-int advisory locks; the first key is derived from the schema in use, so two
# deployments sharing one database in different schemas (and parallel test runs) do not collide.
_LOCK_MIGRATE = 1
_LOCK_REPORT = 2
_LOCK_REPLAY = 3

_COUNTERS_DDL = ", ".join(f"{c} BIGINT NOT NULL DEFAULT 0" for c in COUNTER_COLUMNS)

MIGRATIONS: list[list[str]] = [
    [
        f"CREATE TABLE nexus_domain_usage (domain TEXT PRIMARY KEY, {_COUNTERS_DDL})",
        f"CREATE TABLE nexus_model_usage (domain TEXT NOT NULL, model TEXT NOT NULL, {_COUNTERS_DDL},"
        " PRIMARY KEY (domain, model))",
        "CREATE TABLE nexus_requests (id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, request_id TEXT,"
        " domain TEXT, mode TEXT, method TEXT, path TEXT, model_requested TEXT, model_used TEXT,"
        " request_type TEXT, stream BOOLEAN NOT NULL DEFAULT FALSE, input_tokens BIGINT NOT NULL DEFAULT 0,"
        " output_tokens BIGINT NOT NULL DEFAULT 0, cache_creation_input_tokens BIGINT NOT NULL DEFAULT 0,"
        " cache_read_input_tokens BIGINT NOT NULL DEFAULT 0, tool_calls INTEGER NOT NULL DEFAULT 0,"
        " status INTEGER NOT NULL DEFAULT 0, duration_ms DOUBLE PRECISION NOT NULL DEFAULT 0, error_type TEXT)",
        "CREATE INDEX nexus_requests_ts ON nexus_requests (ts)",
        "CREATE TABLE nexus_credentials (key TEXT PRIMARY KEY, data JSONB NOT NULL,"
        " updated_at DOUBLE PRECISION NOT NULL)",
    ],
    [  # cost per request and in the counters; indexes for the dashboard's keyset paging and filters
        "ALTER TABLE nexus_requests ADD COLUMN cache_creation_5m_input_tokens BIGINT NOT NULL DEFAULT 0,"
        " ADD COLUMN cache_creation_1h_input_tokens BIGINT NOT NULL DEFAULT 0,"
        " ADD COLUMN cost_usd DOUBLE PRECISION",
        "ALTER TABLE nexus_domain_usage ADD COLUMN cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,"
        " ADD COLUMN unpriced_count BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE nexus_model_usage ADD COLUMN cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,"
        " ADD COLUMN unpriced_count BIGINT NOT NULL DEFAULT 0",
        # Requests counted before prices existed were never priced: say so rather than show $0.
        "UPDATE nexus_domain_usage SET unpriced_count = request_count",
        "UPDATE nexus_model_usage SET unpriced_count = request_count",
        "CREATE INDEX nexus_requests_ts_id ON nexus_requests (ts, id)",
        "CREATE INDEX nexus_requests_domain_ts ON nexus_requests (domain, ts)",
        "CREATE INDEX nexus_requests_model_ts ON nexus_requests (model_used, ts)",
        "CREATE INDEX nexus_requests_error_ts ON nexus_requests (error_type, ts)",
        "CREATE INDEX nexus_requests_status_ts ON nexus_requests (status, ts)",
        "CREATE INDEX nexus_requests_ts_duration ON nexus_requests (ts, duration_ms)",  # percentiles, index only
        *rollup_ddl("BIGINT", "DOUBLE PRECISION"),
        *rollup_backfill("FLOOR(ts / {p})::BIGINT"),
    ],
    # client keys (hashes only) and the key id on each request row
    [
        "CREATE TABLE nexus_keys (id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, last4 TEXT NOT NULL,"
        " name TEXT NOT NULL, team TEXT, models TEXT, rpm INTEGER, tpm BIGINT, concurrency INTEGER,"
        " budget_usd DOUBLE PRECISION, budget_period TEXT, expires_at DOUBLE PRECISION, domain TEXT,"
        " created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION)",
        "ALTER TABLE nexus_requests ADD COLUMN key_id TEXT",
        "CREATE INDEX nexus_requests_key_ts ON nexus_requests (key_id, ts)",
    ],
    [
        # Journal replays look request ids up before counting a record again.
        "CREATE INDEX nexus_requests_request_id ON nexus_requests (request_id)",
    ],
    [  # credential pools: which credential served a request; pooled credentials' state; sticky conversations
        "ALTER TABLE nexus_requests ADD COLUMN credential TEXT",
        "CREATE TABLE nexus_credential_state (key TEXT PRIMARY KEY, phase TEXT NOT NULL, data JSONB NOT NULL,"
        " updated_at DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE nexus_sticky (conversation TEXT PRIMARY KEY, credential TEXT NOT NULL,"
        " updated_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX nexus_sticky_updated ON nexus_sticky (updated_at)",
    ],
]
assert len(MIGRATIONS) == SCHEMA_VERSION


def _upsert_sql(table: str, keys: tuple[str, ...]) -> str:
    cols = ", ".join((*keys, *ALL_COUNTER_COLUMNS))
    marks = ", ".join("%s" for _ in (*keys, *ALL_COUNTER_COLUMNS))
    sets = ", ".join(f"{c} = {table}.{c} + EXCLUDED.{c}" for c in ALL_COUNTER_COLUMNS if c != "last_updated")
    return (f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets},"
            f" last_updated = GREATEST({table}.last_updated, EXCLUDED.last_updated)")


_UPSERT_DOMAIN = _upsert_sql("nexus_domain_usage", ("domain",))
_UPSERT_MODEL = _upsert_sql("nexus_model_usage", ("domain", "model"))
_COPY_REQUESTS = f"COPY nexus_requests ({', '.join(REQUEST_COLUMNS)}) FROM STDIN"
_PRUNE = "DELETE FROM nexus_requests WHERE id <= (SELECT MAX(id) FROM nexus_requests) - %s"
_UPSERT_ROLLUP, _UPSERT_DURATIONS = rollup_upserts("%s", "EXCLUDED", True)


def _int4(text: str) -> int:
    """A stable signed 32-bit hash (advisory lock keys)."""
    v = zlib.crc32(text.encode())
    return v - (1 << 32) if v >= (1 << 31) else v


_MODULES: tuple | None = None


def _modules():
    """(psycopg, psycopg_pool), imported on first use (see the module docstring)."""
    global _MODULES
    if _MODULES is None:
        import psycopg
        import psycopg_pool

        _warn_if_blocking(psycopg)
        _MODULES = (psycopg, psycopg_pool)
    return _MODULES


def _warn_if_blocking(psycopg) -> None:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return
    try:
        patched = monkey.is_module_patched("select")
    except Exception:
        return
    if patched and getattr(psycopg.waiting.wait, "__name__", "") == "wait_c":
        log.warning("psycopg was imported before gevent monkey-patching: database calls will block the worker")


class PostgresStorage(Storage):
    backend = "postgresql"
    supports_credentials = True

    def __init__(self, url: str, retention_rows: int = 100_000, pool_max: int = 4,
                 connect_timeout: float = 3.0, pool_timeout: float = 3.0) -> None:
        self.url = url
        self.retention_rows = max(1, int(retention_rows))
        self.pool_max = max(1, int(pool_max))
        # libpq takes whole seconds and treats anything under 2 as 2.
        self.connect_timeout = max(2, int(round(connect_timeout)))
        self.pool_timeout = pool_timeout
        self._pool = None
        self._pid = 0
        self._migrated = False
        self._ns: int | None = None
        self._guard = threading.Lock()  # only around creating the pool (no I/O inside)
        self._leader_conn = None
        self._leader_pid = 0
        self._cred_locks: dict[str, Any] = {}
        self._health: tuple[bool, float] = (True, 0.0)

    # --- connections -----------------------------------------------------------------------

    def _get_pool(self):
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        psycopg, psycopg_pool = _modules()
        with self._guard:
            if self._pool is not None and self._pid == os.getpid():
                return self._pool
            # A pool inherited through fork() is simply dropped: psycopg does not end a parent's
            # session when a child garbage-collects its connection objects.
            pool = psycopg_pool.ConnectionPool(
                self.url, min_size=1, max_size=self.pool_max, open=False, name="nexus",
                kwargs={"connect_timeout": self.connect_timeout, "application_name": "claude-nexus-proxy"},
                timeout=self.pool_timeout,
                # Give up on a dead server quickly; the next request for a connection tries again,
                # so recovery after an outage is not delayed by a long backoff.
                reconnect_timeout=min(10.0, 3 * self.pool_timeout),
                # A connection the server dropped (restart, failover) is replaced, not handed out.
                check=psycopg_pool.ConnectionPool.check_connection,
            )
            pool.open(wait=False)
            self._pool, self._pid, self._migrated, self._ns = pool, os.getpid(), False, None
            return pool

    @contextlib.contextmanager
    def _conn(self, timeout: float | None = None) -> Iterator[Any]:
        """A pooled connection in a transaction (committed on success); errors become StorageError."""
        psycopg, psycopg_pool = _modules()
        try:
            pool = self._get_pool()
            with pool.connection(timeout=timeout) as conn:
                if not self._migrated:
                    self._migrate_on(conn)
                yield conn
        except psycopg_pool.PoolTimeout as exc:
            self._health = (False, time.monotonic())
            raise StorageError(f"PostgreSQL unreachable: {exc}") from exc
        except psycopg.DataError as exc:
            raise StorageDataError(f"PostgreSQL refused the data: {_short(exc)}") from exc
        except psycopg.Error as exc:
            if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                self._health = (False, time.monotonic())
            raise StorageError(f"PostgreSQL error: {_short(exc)}") from exc
        self._health = (True, time.monotonic())

    def _namespace(self, conn) -> int:
        if self._ns is None:
            schema = conn.execute("SELECT current_database() || '.' || COALESCE(current_schema(), '')").fetchone()[0]
            self._ns = _int4("claude-nexus-proxy:" + schema)
        return self._ns

    def _get_namespace(self) -> int:
        if self._ns is None:
            with self._conn() as conn:
                self._namespace(conn)
        return self._ns

    def _connect_direct(self):
        """A connection outside the pool, for session advisory locks held across calls."""
        psycopg, _ = _modules()
        return psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout,
                               application_name="claude-nexus-proxy")

    # --- schema ----------------------------------------------------------------------------

    def migrate(self) -> None:
        with self._conn():
            pass  # _conn migrates on first use

    def _migrate_on(self, conn) -> None:
        # Several hosts start at once: the transaction-scoped advisory lock makes them take turns,
        # and each re-reads the version under the lock.
        ns = self._namespace(conn)
        conn.commit()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (ns, _LOCK_MIGRATE))
            apply_migrations(conn.execute, MIGRATIONS, "%s")
        self._migrated = True

    def schema_version(self) -> int:
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM nexus_meta WHERE key = 'schema_version'").fetchone()
            return int(row[0]) if row else 0

    # --- writes ----------------------------------------------------------------------------

    def write_batch(self, records: Sequence[RequestRecord], skip_existing: bool = False) -> None:
        if not records:
            return
        rows = [request_row(r) for r in records]
        with self._conn() as conn:
            with conn.cursor() as cur:
                if skip_existing:
                    # Replays take turns (a transaction lock), so two of one record cannot both miss the other.
                    cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (self._namespace(conn), _LOCK_REPLAY))
                    cur.execute("SELECT request_id FROM nexus_requests WHERE request_id = ANY(%s)",
                                ([r[1] for r in rows],))
                    rows = new_rows(rows, {r[0] for r in cur.fetchall()})
                    if not rows:
                        return
                by_domain, by_model = aggregate(rows)
                # Sorted keys: two hosts upserting the same domains lock the rows in the same order (no deadlock).
                domain_rows = [(d, *by_domain[d]) for d in sorted(by_domain)]
                model_rows = [(d, m, *by_model[(d, m)]) for d, m in sorted(by_model)]
                # Usage may lose its last few hundred ms if the database server itself crashes; in
                # exchange the commit does not wait for the WAL flush (credentials keep the default).
                cur.execute("SET LOCAL synchronous_commit = off")
                cur.executemany(_UPSERT_DOMAIN, domain_rows)
                cur.executemany(_UPSERT_MODEL, model_rows)
                usage, durations = rollups(rows)  # sorted keys too
                cur.executemany(_UPSERT_ROLLUP, usage)
                cur.executemany(_UPSERT_DURATIONS, durations)
                with cur.copy(_COPY_REQUESTS) as copy:
                    for row in rows:
                        copy.write_row(row)
                # BIGSERIAL ids can have gaps (a rolled-back batch), so this keeps at most N rows,
                # nearly always exactly N: an index range delete, no count and no scan.
                cur.execute(_PRUNE, (self.retention_rows,))

    # --- reads -----------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._conn() as conn:
            return conn.execute(sql, params).fetchall()

    placeholder = "%s"

    def _query_dicts(self, sql: str, params: Sequence = ()) -> tuple[list[str], list[dict]]:
        with self._conn() as conn:
            cur = conn.execute(sql, params)
            columns = [d.name for d in cur.description]
            return columns, [dict(zip(columns, row)) for row in cur.fetchall()]

    def bucket_sql(self) -> str:
        return "FLOOR((ts - %s) / %s)::BIGINT"

    def duration_percentiles(self, since: float, until: float,
                             quantiles: Sequence[float] = (0.5, 0.95)) -> list[float | None]:
        row = self._query("SELECT percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY duration_ms)"
                          " FROM nexus_requests WHERE ts >= %s AND ts < %s", (list(quantiles), since, until))
        values = row[0][0] if row else None
        if not values:
            return [None for _ in quantiles]
        return [None if v is None else float(v) for v in values]
    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self._query(sql, params)

    def execute(self, sql: str, params: Sequence = ()) -> int:
        with self._conn() as conn:
            return conn.execute(sql, params).rowcount

    def domain_stats(self, since: float | None = None, until: float | None = None) -> dict[str, dict]:
        sql, params = stats_query("domain", "%s", since, until)
        return {row[0]: domain_dict(row[1:]) for row in self._query(sql, params)}

    def model_stats(self, since: float | None = None, until: float | None = None,
                    domain: str | None = None) -> dict[str, dict]:
        sql, params = stats_query("model", "%s", since, until, domain)
        return {row[0]: model_dict(row[1:]) for row in self._query(sql, params)}

    def credential_stats(self, since: float | None = None, until: float | None = None,
                         domain: str | None = None) -> dict[str, dict]:
        sql, params = credential_stats_query("%s", since, until, domain)
        return {row[0]: model_dict(row[1:]) for row in self._query(sql, params)}

    # --- pooled credentials' state ---------------------------------------------------------

    def load_credential_states(self) -> list[tuple[str, str, dict, float]]:
        rows = self._query("SELECT key, phase, data, updated_at FROM nexus_credential_state")
        return [(k, p, dict(d), float(u)) for k, p, d, u in rows]

    def save_credential_state(self, key: str, data: dict, updated_at: float, phase: str | None = None,
                              merge=None) -> tuple[bool, str | None]:
        _modules()
        from psycopg.types.json import Jsonb

        with self._conn() as conn:
            with conn.transaction():
                # one writer at a time per credential: the read of the old phase and the write are one step
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (self._namespace(conn), _int4("state:" + key)))
                row = conn.execute("SELECT phase, updated_at, data FROM nexus_credential_state WHERE key = %s",
                                   (key,)).fetchone()
                before = row[0] if row else None
                newer = row is None or updated_at >= row[1]
                if row is not None and merge is not None:
                    # the newer copy's windows, both copies' cooling and breakage: always worth writing
                    stored = dict(row[2])
                    data, newer = (merge(stored, data) if newer else merge(data, stored)), True
                if row is None:
                    conn.execute("INSERT INTO nexus_credential_state (key, phase, data, updated_at)"
                                 " VALUES (%s, %s, %s, %s)", (key, phase or "ok", Jsonb(data), updated_at))
                elif phase is not None or newer:
                    conn.execute("UPDATE nexus_credential_state SET phase = %s,"
                                 " data = CASE WHEN %s THEN %s ELSE data END,"
                                 " updated_at = GREATEST(updated_at, %s) WHERE key = %s",
                                 (phase or before, newer, Jsonb(data), updated_at, key))
        return (phase is not None and before != phase), before

    def sticky_credential(self, conversation: str) -> str | None:
        rows = self._query("SELECT credential FROM nexus_sticky WHERE conversation = %s", (conversation,))
        return rows[0][0] if rows else None

    def save_sticky_credentials(self, pairs: dict[str, str], now: float) -> None:
        if not pairs:
            return
        with self._conn() as conn:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO nexus_sticky (conversation, credential, updated_at) VALUES (%s, %s, %s)"
                                " ON CONFLICT (conversation) DO UPDATE SET credential = EXCLUDED.credential,"
                                " updated_at = EXCLUDED.updated_at",
                                [(c, n, now) for c, n in sorted(pairs.items())])
                # conversations idle for a day have lost their prompt cache anyway
                cur.execute("DELETE FROM nexus_sticky WHERE updated_at < %s", (now - 86400,))

    def totals_version(self) -> int:
        return int(self._query("SELECT COALESCE(SUM(request_count), 0) FROM nexus_domain_usage")[0][0])

    def row_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM nexus_requests")[0][0])

    # --- report leadership -----------------------------------------------------------------

    def try_report_leadership(self) -> bool:
        """Held as a session advisory lock on a dedicated connection, so the fleet has one reporter.

        If that connection dropped, the lock went with it: reconnect and compete again.
        """
        conn = self._leader_conn
        if conn is not None and self._leader_pid == os.getpid():
            try:
                conn.execute("SELECT 1")
                return True
            except Exception:
                self._drop_leader_conn()
        self._leader_conn = None  # (if inherited through fork, the lock is the parent's)
        try:
            ns = self._get_namespace()
            conn = self._connect_direct()
        except Exception as exc:
            log.debug("report leadership unavailable: %s", _short(exc))
            return False
        try:
            got = bool(conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (ns, _LOCK_REPORT)).fetchone()[0])
        except Exception:
            got = False
        if not got:
            # Followers do not keep a connection open just to wait.
            with contextlib.suppress(Exception):
                conn.close()
            return False
        self._leader_conn, self._leader_pid = conn, os.getpid()
        return True

    def _drop_leader_conn(self) -> None:
        conn, self._leader_conn = self._leader_conn, None
        if conn is not None and self._leader_pid == os.getpid():
            with contextlib.suppress(Exception):
                conn.close()

    # --- credentials ------------------------------------------------------------

    def load_credential(self, key: str) -> tuple[dict, float] | None:
        with self._conn() as conn:
            row = conn.execute("SELECT data, updated_at FROM nexus_credentials WHERE key = %s", (key,)).fetchone()
        if row is None:
            return None
        return dict(row[0]), float(row[1])

    def save_credential(self, key: str, data: dict) -> None:
        _modules()  # psycopg imported the right way first (see the module docstring)
        from psycopg.types.json import Jsonb

        with self._conn() as conn:
            conn.execute(
                "INSERT INTO nexus_credentials (key, data, updated_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data, updated_at = EXCLUDED.updated_at",
                (key, Jsonb(data), time.time()),
            )

    @contextlib.contextmanager
    def credential_lock(self, key: str, timeout: float = 30.0) -> Iterator[None]:
        """Serialise refreshes of one credential across every worker and host.

        One greenlet per process waits on the database (the others wait on an in-process
        semaphore), on its own connection, so waiting never takes connections from the pool that
        `load_credential`/`save_credential` need inside the lock. Raises StorageError if the lock
        cannot be had within `timeout` seconds or the database is unreachable.
        """
        from gevent.lock import Semaphore

        psycopg, _ = _modules()
        local = self._cred_locks.get(key)
        if local is None:
            local = self._cred_locks.setdefault(key, Semaphore())
        deadline = time.monotonic() + timeout
        if not local.acquire(timeout=timeout):
            raise StorageError("timed out waiting for the credential lock")
        try:
            try:
                ns = _int4("claude-nexus-proxy:cred:" + str(self._get_namespace()))
                conn = self._connect_direct()
            except psycopg.Error as exc:
                raise StorageError(f"PostgreSQL unreachable: {_short(exc)}") from exc
            try:
                remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
                conn.execute(f"SET lock_timeout = {remaining_ms}")
                try:
                    conn.execute("SELECT pg_advisory_lock(%s, %s)", (ns, _int4(key)))
                except psycopg.Error as exc:
                    raise StorageError(f"could not take the credential lock: {_short(exc)}") from exc
                yield
                with contextlib.suppress(Exception):
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (ns, _int4(key)))
            finally:
                # Closing the session releases the lock even if the unlock above did not run.
                with contextlib.suppress(Exception):
                    conn.close()
        finally:
            local.release()

    # --- lifecycle -------------------------------------------------------------------------

    def healthy(self) -> bool:
        ok, when = self._health
        if when and time.monotonic() - when < 5.0:
            return ok
        try:
            with self._conn(timeout=1.0) as conn:
                conn.execute("SELECT 1")
            return True
        except StorageError:
            return False

    def close(self) -> None:
        self._drop_leader_conn()
        pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                pool.close(timeout=2.0)


def _short(exc: BaseException) -> str:
    """The first line of a driver error, without the libpq detail lines."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
