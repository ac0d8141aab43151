"""SQLite storage: the embedded default for one host, shared by every gunicorn worker through one WAL file."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import sqlite3
import threading
import time
from typing import Iterator, Sequence

from ..records import RequestRecord
from .dashboard import rollup_backfill, rollup_ddl, rollup_upserts, rollups
from .base import (
    ALL_COUNTER_COLUMNS, COUNTER_COLUMNS, REQUEST_COLUMNS, SCHEMA_VERSION, Storage, StorageDataError, StorageError, aggregate, domain_dict,
    apply_migrations, credential_stats_query, model_dict, new_rows, request_row, stats_query,
)

log = logging.getLogger("nexus.storage")

# A worker blocks (sqlite waits in C) at most this long for another worker's write; writes are sub-ms.
BUSY_TIMEOUT_MS = 5000

_INHERITED: list = []

_COUNTERS_DDL = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in COUNTER_COLUMNS)

# Index i holds the statements that take the schema from version i to i + 1.
MIGRATIONS: list[list[str]] = [
    [
        f"CREATE TABLE nexus_domain_usage (domain TEXT PRIMARY KEY, {_COUNTERS_DDL})",
        f"CREATE TABLE nexus_model_usage (domain TEXT NOT NULL, model TEXT NOT NULL, {_COUNTERS_DDL},"
        " PRIMARY KEY (domain, model))",
        "CREATE TABLE nexus_requests (id INTEGER PRIMARY KEY, ts REAL NOT NULL, request_id TEXT, domain TEXT,"
        " mode TEXT, method TEXT, path TEXT, model_requested TEXT, model_used TEXT, request_type TEXT,"
        " stream INTEGER NOT NULL DEFAULT 0, input_tokens INTEGER NOT NULL DEFAULT 0,"
        " output_tokens INTEGER NOT NULL DEFAULT 0, cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,"
        " cache_read_input_tokens INTEGER NOT NULL DEFAULT 0, tool_calls INTEGER NOT NULL DEFAULT 0,"
        " status INTEGER NOT NULL DEFAULT 0, duration_ms REAL NOT NULL DEFAULT 0, error_type TEXT)",
        "CREATE INDEX nexus_requests_ts ON nexus_requests (ts)",
    ],
    [  # cost per request and in the counters; indexes for the dashboard's filters (ts index holds the rowid)
        "ALTER TABLE nexus_requests ADD COLUMN cache_creation_5m_input_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE nexus_requests ADD COLUMN cache_creation_1h_input_tokens INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE nexus_requests ADD COLUMN cost_usd REAL",
        "ALTER TABLE nexus_domain_usage ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0",
        "ALTER TABLE nexus_domain_usage ADD COLUMN unpriced_count INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE nexus_model_usage ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0",
        "ALTER TABLE nexus_model_usage ADD COLUMN unpriced_count INTEGER NOT NULL DEFAULT 0",
        # Requests counted before prices existed were never priced: say so rather than show $0.
        "UPDATE nexus_domain_usage SET unpriced_count = request_count",
        "UPDATE nexus_model_usage SET unpriced_count = request_count",
        "CREATE INDEX nexus_requests_domain_ts ON nexus_requests (domain, ts)",
        "CREATE INDEX nexus_requests_model_ts ON nexus_requests (model_used, ts)",
        "CREATE INDEX nexus_requests_error_ts ON nexus_requests (error_type, ts)",
        "CREATE INDEX nexus_requests_status_ts ON nexus_requests (status, ts)",
        "CREATE INDEX nexus_requests_ts_duration ON nexus_requests (ts, duration_ms)",  # percentiles, index only
        *rollup_ddl("INTEGER", "REAL"),
        *rollup_backfill("CAST(ts / {p} AS INTEGER)"),
    ],
    # client keys (hashes only) and the key id on each request row
    [
        "CREATE TABLE nexus_keys (id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, last4 TEXT NOT NULL,"
        " name TEXT NOT NULL, team TEXT, models TEXT, rpm INTEGER, tpm INTEGER, concurrency INTEGER,"
        " budget_usd REAL, budget_period TEXT, expires_at REAL, domain TEXT, created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL, revoked_at REAL)",
        "ALTER TABLE nexus_requests ADD COLUMN key_id TEXT",
        "CREATE INDEX nexus_requests_key_ts ON nexus_requests (key_id, ts)",
    ],
    [
        # Journal replays look request ids up before counting a record again.
        "CREATE INDEX nexus_requests_request_id ON nexus_requests (request_id)",
    ],
    [  # credential pools: which credential served a request; pooled credentials' state; sticky conversations
        "ALTER TABLE nexus_requests ADD COLUMN credential TEXT",
        "CREATE TABLE nexus_credential_state (key TEXT PRIMARY KEY, phase TEXT NOT NULL, data TEXT NOT NULL,"
        " updated_at REAL NOT NULL)",
        "CREATE TABLE nexus_sticky (conversation TEXT PRIMARY KEY, credential TEXT NOT NULL, updated_at REAL NOT NULL)",
        "CREATE INDEX nexus_sticky_updated ON nexus_sticky (updated_at)",
    ],
]
assert len(MIGRATIONS) == SCHEMA_VERSION


def _upsert_sql(table: str, key_cols: str) -> str:
    cols = ", ".join(ALL_COUNTER_COLUMNS)
    marks = ", ".join("?" for _ in ALL_COUNTER_COLUMNS)
    sets = ", ".join(f"{c} = {c} + excluded.{c}" for c in ALL_COUNTER_COLUMNS if c != "last_updated")
    nkeys = key_cols.count(",") + 1
    return (f"INSERT INTO {table} ({key_cols}, {cols}) VALUES ({', '.join('?' * nkeys)}, {marks})"
            f" ON CONFLICT ({key_cols}) DO UPDATE SET {sets},"
            f" last_updated = MAX(last_updated, excluded.last_updated)")


_UPSERT_DOMAIN = _upsert_sql("nexus_domain_usage", "domain")
_UPSERT_MODEL = _upsert_sql("nexus_model_usage", "domain, model")
_INSERT_REQUEST = (f"INSERT INTO nexus_requests ({', '.join(REQUEST_COLUMNS)})"
                   f" VALUES ({', '.join('?' for _ in REQUEST_COLUMNS)})")
_PRUNE = "DELETE FROM nexus_requests WHERE id <= (SELECT MAX(id) FROM nexus_requests) - ?"
_UPSERT_ROLLUP, _UPSERT_DURATIONS = rollup_upserts("?", "excluded", False)


class SqliteStorage(Storage):
    backend = "sqlite"
    supports_credentials = False

    def __init__(self, path: str, retention_rows: int = 100_000) -> None:
        self.path = path
        self.retention_rows = max(1, int(retention_rows))
        self._memory = path == ":memory:" or path.startswith("file::memory:")
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._migrated = False
        self._leader_fd: int | None = None
        self._leader_pid = 0

    # --- connection ------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        # A connection inherited through fork() must not be used by the child: open a new one.
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:
            _INHERITED.append(self._conn)  # the parent's, through fork(): never used, never closed here
        if not self._memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not self._memory:
            self._set_wal(conn)
            # Durable across a crashed process; only an OS crash could lose the last flush.
            conn.execute("PRAGMA synchronous = NORMAL")
        self._conn, self._pid, self._migrated = conn, os.getpid(), False
        return conn

    @staticmethod
    def _set_wal(conn: sqlite3.Connection) -> None:
        # Switching to WAL needs a moment of exclusive access; workers starting together may collide.
        for attempt in range(50):
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(0.02 * (attempt + 1))
        conn.execute("PRAGMA journal_mode = WAL")

    def _ready(self) -> sqlite3.Connection:
        conn = self._connection()
        if not self._migrated:
            self._migrate(conn)
        return conn

    # --- schema ----------------------------------------------------------------------------

    def migrate(self) -> None:
        with self._lock:
            try:
                self._migrate(self._connection())
            except (sqlite3.Error, OSError) as exc:
                raise StorageError(f"SQLite migration failed: {exc}") from exc

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock first: workers starting together migrate one at a time.
        conn.execute("BEGIN IMMEDIATE")
        try:
            apply_migrations(conn.execute, MIGRATIONS, "?")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._migrated = True

    def schema_version(self) -> int:
        with self._lock:
            row = self._ready().execute("SELECT value FROM nexus_meta WHERE key = 'schema_version'").fetchone()
            return int(row[0]) if row else 0

    # --- writes ----------------------------------------------------------------------------

    def write_batch(self, records: Sequence[RequestRecord], skip_existing: bool = False) -> None:
        if not records:
            return
        rows = [request_row(r) for r in records]
        by_domain, by_model = aggregate(rows)
        with self._write() as conn:
            if skip_existing:
                # Under the write lock, so two replays of one record cannot both miss the other.
                rows = new_rows(rows, self._existing_ids(conn, [r[1] for r in rows]))
                by_domain, by_model = aggregate(rows)
            conn.executemany(_UPSERT_DOMAIN, [(d, *v) for d, v in by_domain.items()])
            conn.executemany(_UPSERT_MODEL, [(d, m, *v) for (d, m), v in by_model.items()])
            conn.executemany(_INSERT_REQUEST, rows)
            usage, durations = rollups(rows)
            conn.executemany(_UPSERT_ROLLUP, usage)
            conn.executemany(_UPSERT_DURATIONS, durations)
            # Row ids grow by one per insert, so this keeps exactly the newest N rows
            # with an index range delete (no count, no scan).
            conn.execute(_PRUNE, (self.retention_rows,))

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE (the write lock first, so a read and the write that follows
        are one step for every worker), COMMIT, or ROLLBACK on any failure; SQLite's errors as StorageErrors."""
        with self._lock:
            try:
                conn = self._ready()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except (sqlite3.DataError, sqlite3.IntegrityError, sqlite3.InterfaceError) as exc:
                raise StorageDataError(f"SQLite refused the data: {exc}") from exc
            except (sqlite3.Error, OSError) as exc:
                raise StorageError(f"SQLite write failed: {exc}") from exc

    @staticmethod
    def _existing_ids(conn: sqlite3.Connection, ids: list) -> set:
        found: set = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ", ".join("?" for _ in chunk)
            found.update(r[0] for r in conn.execute(
                f"SELECT request_id FROM nexus_requests WHERE request_id IN ({marks})", chunk))
        return found

    # --- reads -----------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._ready().execute(sql, params).fetchall()
            except (sqlite3.Error, OSError) as exc:
                raise StorageError(f"SQLite read failed: {exc}") from exc

    def _query_dicts(self, sql: str, params: Sequence = ()) -> tuple[list[str], list[dict]]:
        with self._lock:
            try:
                cur = self._ready().execute(sql, params)
                columns = [d[0] for d in cur.description]
                return columns, [dict(zip(columns, row)) for row in cur.fetchall()]
            except (sqlite3.Error, OSError) as exc:
                raise StorageError(f"SQLite read failed: {exc}") from exc

    def bucket_sql(self) -> str:
        # ts >= origin in every query that buckets, so truncation is floor
        return "CAST((ts - ?) / ? AS INTEGER)"

    def duration_percentiles(self, since: float, until: float,
                             quantiles: Sequence[float] = (0.5, 0.95)) -> list[float | None]:
        # SQLite has no percentile function: read the sorted durations through the ts index once.
        rows = self._query("SELECT duration_ms FROM nexus_requests WHERE ts >= ? AND ts < ?", (since, until))
        if not rows:
            return [None for _ in quantiles]
        values = sorted(r[0] for r in rows)
        n = len(values)
        return [float(values[min(n - 1, max(0, math.ceil(q * n - 1e-9) - 1))]) for q in quantiles]
    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self._query(sql, params)

    def execute(self, sql: str, params: Sequence = ()) -> int:
        with self._lock:
            try:
                return self._ready().execute(sql, params).rowcount
            except (sqlite3.DataError, sqlite3.IntegrityError) as exc:
                raise StorageDataError(f"SQLite refused the data: {exc}") from exc
            except (sqlite3.Error, OSError) as exc:
                raise StorageError(f"SQLite write failed: {exc}") from exc

    def domain_stats(self, since: float | None = None, until: float | None = None) -> dict[str, dict]:
        sql, params = stats_query("domain", "?", since, until)
        return {row[0]: domain_dict(row[1:]) for row in self._query(sql, params)}

    def model_stats(self, since: float | None = None, until: float | None = None,
                    domain: str | None = None) -> dict[str, dict]:
        sql, params = stats_query("model", "?", since, until, domain)
        return {row[0]: model_dict(row[1:]) for row in self._query(sql, params)}

    def credential_stats(self, since: float | None = None, until: float | None = None,
                         domain: str | None = None) -> dict[str, dict]:
        sql, params = credential_stats_query("?", since, until, domain)
        return {row[0]: model_dict(row[1:]) for row in self._query(sql, params)}

    # --- pooled credentials' state ---------------------------------------------------------

    def load_credential_states(self) -> list[tuple[str, str, dict, float]]:
        out = []
        for key, phase, data, updated_at in self._query("SELECT key, phase, data, updated_at FROM nexus_credential_state"):
            try:
                out.append((key, phase, json.loads(data), float(updated_at)))
            except ValueError:
                continue
        return out

    def save_credential_state(self, key: str, data: dict, updated_at: float, phase: str | None = None,
                              merge=None) -> tuple[bool, str | None]:
        with self._write() as conn:
            row = conn.execute("SELECT phase, updated_at, data FROM nexus_credential_state WHERE key = ?",
                               (key,)).fetchone()
            before = row[0] if row else None
            newer = row is None or updated_at >= row[1]
            if row is not None and merge is not None:
                try:
                    stored = json.loads(row[2])
                except ValueError:
                    stored = {}
                # the newer copy's windows, both copies' cooling and breakage: always worth writing
                data, newer = (merge(stored, data) if newer else merge(data, stored)), True
            text = json.dumps(data, separators=(",", ":"))
            if row is None:
                conn.execute("INSERT INTO nexus_credential_state (key, phase, data, updated_at)"
                             " VALUES (?, ?, ?, ?)", (key, phase or "ok", text, updated_at))
            elif phase is not None or newer:
                conn.execute("UPDATE nexus_credential_state SET phase = ?, data = CASE WHEN ? THEN ? ELSE data"
                             " END, updated_at = MAX(updated_at, ?) WHERE key = ?",
                             (phase or before, newer, text, updated_at, key))
        return (phase is not None and before != phase), before

    def sticky_credential(self, conversation: str) -> str | None:
        rows = self._query("SELECT credential FROM nexus_sticky WHERE conversation = ?", (conversation,))
        return rows[0][0] if rows else None

    def save_sticky_credentials(self, pairs: dict[str, str], now: float) -> None:
        if not pairs:
            return
        with self._write() as conn:
            conn.executemany("INSERT INTO nexus_sticky (conversation, credential, updated_at) VALUES (?, ?, ?)"
                             " ON CONFLICT (conversation) DO UPDATE SET credential = excluded.credential,"
                             " updated_at = excluded.updated_at", [(c, n, now) for c, n in pairs.items()])
            # conversations idle for a day have lost their prompt cache anyway
            conn.execute("DELETE FROM nexus_sticky WHERE updated_at < ?", (now - 86400,))

    def totals_version(self) -> int:
        row = self._query("SELECT COALESCE(SUM(request_count), 0) FROM nexus_domain_usage")
        return int(row[0][0])

    def row_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM nexus_requests")[0][0])

    # --- report leadership -----------------------------------------------------------------

    def try_report_leadership(self) -> bool:
        if self._memory:
            return True  # an in-memory database lives in this process only
        pid = os.getpid()
        if self._leader_fd is not None and self._leader_pid == pid:
            return True
        if self._leader_fd is not None:
            # Inherited through fork(): the parent's lock. Closing our copy of the descriptor leaves
            # the parent's lock alone and lets it end when the parent goes; we compete on our own.
            try:
                os.close(self._leader_fd)
            except OSError:
                pass
            self._leader_fd = None
        path = os.path.abspath(self.path) + ".report.lock"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            log.debug("report lock file unavailable: %s", exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        # Held (the fd stays open) for the life of the process; the kernel frees it when we exit.
        self._leader_fd, self._leader_pid = fd, pid
        return True

    # --- lifecycle -------------------------------------------------------------------------

    def healthy(self) -> bool:
        with self._lock:
            try:
                self._ready().execute("SELECT 1").fetchone()
                return True
            except (sqlite3.Error, StorageError, OSError):
                return False

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                try:
                    self._conn.close()
                except sqlite3.Error:
                    pass
            self._conn = None
            if self._leader_fd is not None and self._leader_pid == os.getpid():
                try:
                    os.close(self._leader_fd)
                except OSError:
                    pass
            self._leader_fd = None
