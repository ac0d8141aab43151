"""The storage suite, run against SQLite and a real PostgreSQL (fresh schema per test)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.records import RequestRecord
from app.storage import open_storage
from app.storage.base import SCHEMA_VERSION, StorageError
from app.storage.postgres import PostgresStorage
from app.storage.sqlite import SqliteStorage
from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NOW = time.time()


def make_storage(spec: tuple[str, str], **kw):
    kind, target = spec
    if kind == "sqlite":
        return SqliteStorage(target, **kw)
    return PostgresStorage(target, **kw)


@pytest.fixture(params=["sqlite", "postgres"])
def spec(request, tmp_path) -> tuple[str, str]:
    if request.param == "sqlite":
        return ("sqlite", str(tmp_path / "data" / "usage.sqlite3"))
    return ("postgres", request.getfixturevalue("pg_url"))


@pytest.fixture
def open_store(spec):
    """Open (another) storage on the same database: a restart, or a second worker."""
    opened = []

    def _open(**kw):
        st = make_storage(spec, **kw)
        opened.append(st)
        return st

    yield _open
    for st in opened:
        st.close()


@pytest.fixture
def store(open_store):
    return open_store()


def rec(domain: str = "a.example.com", **kw) -> RequestRecord:
    kw.setdefault("request_id", f"req_{os.urandom(4).hex()}")
    kw.setdefault("timestamp", NOW)
    kw.setdefault("mode", "translation")
    kw.setdefault("status", 200)
    return RequestRecord(domain=domain, **kw)


def run_children(code: str, args: list[list[str]], timeout: float = 60) -> list[str]:
    """Run `code` in one fresh Python process per argument list, concurrently; return their stdout."""
    script = "import sys, json, os, time\nsys.path.insert(0, %r)\n" % str(ROOT) + textwrap.dedent(code)
    procs = [subprocess.Popen([sys.executable, "-c", script, *a], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in args]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


CHILD_OPEN = """
from app.storage.sqlite import SqliteStorage
from app.storage.postgres import PostgresStorage
def open_store(kind, target):
    return SqliteStorage(target) if kind == "sqlite" else PostgresStorage(target)
"""


# --- counting ---------------------------------------------------------------------------------

def test_write_batch_sums_per_domain(store):
    store.write_batch([
        rec("a.com", input_tokens=100, output_tokens=10, cache_creation_input_tokens=5, cache_read_input_tokens=7,
            tool_calls=2, request_type="query", duration_ms=250),
        rec("a.com", input_tokens=200, output_tokens=20, request_type="inference", timestamp=NOW + 1),
        rec("b.com", input_tokens=1, output_tokens=2, request_type="query"),
    ])
    store.write_batch([rec("a.com", input_tokens=3, output_tokens=4, tool_calls=1, request_type="inference")])
    stats = store.domain_stats()
    assert stats["a.com"] == {
        "inputTokens": 303, "outputTokens": 34, "cacheCreationInputTokens": 5, "cacheReadInputTokens": 7,
        "requestCount": 3, "queryEvaluationCount": 1, "inferenceCount": 2, "toolCallCount": 3, "errorCount": 0,
        "lastUpdated": int((NOW + 1) * 1000),
    }
    assert stats["b.com"]["requestCount"] == 1 and stats["b.com"]["outputTokens"] == 2
    assert set(stats) == {"a.com", "b.com"}


def test_errors_are_counted_with_their_tokens(store):
    store.write_batch([
        rec(status=529, error_type="overloaded_error", input_tokens=10),
        rec(status=200, error_type="client_disconnected", input_tokens=5, output_tokens=3),  # cut-off stream
        rec(status=400),
        rec(status=200, output_tokens=1),
    ])
    s = store.domain_stats()["a.example.com"]
    assert (s["requestCount"], s["errorCount"], s["inputTokens"], s["outputTokens"]) == (4, 3, 15, 4)


def test_since_until_select_a_time_range_from_the_request_rows(store):
    day = 86400
    store.write_batch([
        rec("team-x.com", timestamp=NOW - 2 * day, input_tokens=1),
        rec("team-x.com", timestamp=NOW - day, input_tokens=10, request_type="inference"),
        rec("team-x.com", timestamp=NOW - day + 60, input_tokens=20, tool_calls=1),
        rec("team-y.com", timestamp=NOW - day + 120, input_tokens=300, status=500),
        rec("team-x.com", timestamp=NOW, input_tokens=1000),
    ])
    yesterday = store.domain_stats(since=NOW - day, until=NOW)  # until is exclusive
    assert yesterday["team-x.com"]["inputTokens"] == 30
    assert (yesterday["team-x.com"]["queryEvaluationCount"], yesterday["team-x.com"]["inferenceCount"]) == (1, 1)
    assert yesterday["team-x.com"]["toolCallCount"] == 1
    assert yesterday["team-y.com"]["errorCount"] == 1
    assert store.domain_stats(since=NOW)["team-x.com"]["inputTokens"] == 1000
    assert set(store.domain_stats(since=NOW)) == {"team-x.com"}
    assert store.domain_stats(until=NOW - day)["team-x.com"]["inputTokens"] == 1
    assert store.domain_stats(since=NOW + 10) == {}
    assert store.domain_stats()["team-x.com"]["inputTokens"] == 1031  # no range: the counters


def test_per_model_breakdown(store):
    store.write_batch([
        rec("a.com", model_requested="claude-haiku-4", model_used="openai/gpt-4.1-mini", input_tokens=5,
            output_tokens=1),
        rec("a.com", model_requested="claude-sonnet-4", model_used="openai/gpt-4.1", input_tokens=50, tool_calls=2),
        rec("b.com", model_requested="claude-sonnet-4", model_used="openai/gpt-4.1", input_tokens=500,
            error_type="api_error", status=502, timestamp=NOW - 3600),
        rec("b.com", model_requested="claude-opus-4"),  # failed before a model was used
    ])
    models = store.model_stats()
    assert models["openai/gpt-4.1"] == {
        "requestCount": 2, "inputTokens": 550, "outputTokens": 0, "cacheCreationInputTokens": 0,
        "cacheReadInputTokens": 0, "toolCallCount": 2, "errorCount": 1, "lastUpdated": int(NOW * 1000),
    }
    assert models["openai/gpt-4.1-mini"]["inputTokens"] == 5
    assert models["claude-opus-4"]["requestCount"] == 1
    assert store.model_stats(domain="b.com").keys() == {"openai/gpt-4.1", "claude-opus-4"}
    assert store.model_stats(domain="b.com")["openai/gpt-4.1"]["inputTokens"] == 500
    ranged = store.model_stats(since=NOW - 60)
    assert ranged["openai/gpt-4.1"]["inputTokens"] == 50
    assert store.model_stats(since=NOW - 7200, until=NOW - 60, domain="b.com") == {
        "openai/gpt-4.1": ranged["openai/gpt-4.1"] | {"inputTokens": 500, "toolCallCount": 0, "errorCount": 1,
                                                      "lastUpdated": int((NOW - 3600) * 1000)}}


def test_retention_keeps_the_newest_rows_but_not_the_counters(open_store):
    store = open_store(retention_rows=10)
    for batch in range(3):
        store.write_batch([rec(request_id=f"r{batch * 7 + i}", timestamp=NOW + batch * 7 + i, input_tokens=1)
                           for i in range(7)])
    assert store.row_count() == 10
    assert store.domain_stats()["a.example.com"]["requestCount"] == 21  # counters are totals
    # The rows kept are the newest 10 (r11..r20).
    assert store.domain_stats(since=NOW + 11)["a.example.com"]["requestCount"] == 10
    assert store.domain_stats(until=NOW + 11) == {}


def test_totals_version_changes_only_when_counts_change(store):
    v0 = store.totals_version()
    assert store.totals_version() == v0
    store.write_batch([rec()])
    v1 = store.totals_version()
    assert v1 != v0
    store.domain_stats()
    assert store.totals_version() == v1


def test_odd_values_do_not_poison_a_batch(store):
    # A NUL in a header-derived string or an absurd count must not make the whole batch fail forever.
    store.write_batch([rec("nul\x00.com", model_used="m\x00", input_tokens=10**30, status=99999),
                       rec("ok.com", input_tokens=1)])
    stats = store.domain_stats()
    assert stats["ok.com"]["inputTokens"] == 1
    assert stats["nul.com"]["requestCount"] == 1


# --- schema and restarts ---------------------------------------------------------------------

def test_migrate_is_idempotent_and_keeps_data(open_store):
    store = open_store()
    store.migrate()
    store.write_batch([rec(input_tokens=7)])
    store.migrate()
    again = open_store()
    again.migrate()
    assert again.schema_version() == SCHEMA_VERSION
    assert again.domain_stats()["a.example.com"]["inputTokens"] == 7


def test_counts_survive_a_restart(open_store):
    first = open_store()
    first.write_batch([rec(input_tokens=11, output_tokens=22), rec("b.com", tool_calls=3)])
    first.close()
    second = open_store()
    stats = second.domain_stats()
    assert stats["a.example.com"]["inputTokens"] == 11 and stats["a.example.com"]["outputTokens"] == 22
    assert stats["b.com"]["toolCallCount"] == 3
    second.write_batch([rec(input_tokens=1)])
    assert second.domain_stats()["a.example.com"]["requestCount"] == 2


def test_concurrent_migrate_from_several_processes(spec):
    go = Path(os.environ.get("TMPDIR", "/tmp")) / f"nexus-go-{os.urandom(4).hex()}"
    code = CHILD_OPEN + """
kind, target, go = sys.argv[1:4]
st = open_store(kind, target)
while not os.path.exists(go):
    time.sleep(0.005)
st.migrate()
print(st.schema_version())
"""
    import threading

    threading.Timer(1.0, go.touch).start()  # all children are waiting by then, so they start together
    try:
        outs = run_children(code, [[spec[0], spec[1], str(go)] for _ in range(4)])
    finally:
        go.unlink(missing_ok=True)
    assert [o.strip() for o in outs] == [str(SCHEMA_VERSION)] * 4


def test_two_processes_writing_concurrently_add_up(spec, open_store):
    code = CHILD_OPEN + """
from app.records import RequestRecord
kind, target, name = sys.argv[1:4]
st = open_store(kind, target)
for b in range(50):
    st.write_batch([RequestRecord(request_id=f"{name}-{b}-{i}", timestamp=time.time(), domain="shared.com",
                                  mode="translation", input_tokens=3, output_tokens=1, tool_calls=1,
                                  request_type="inference" if i % 2 else "query") for i in range(20)])
st.close()
print("done")
"""
    open_store().migrate()  # the children then race on writes only (the migrate race is tested above)
    run_children(code, [[spec[0], spec[1], "w1"], [spec[0], spec[1], "w2"]])
    s = open_store().domain_stats()["shared.com"]
    assert s["requestCount"] == 2000
    assert (s["inputTokens"], s["outputTokens"], s["toolCallCount"]) == (6000, 2000, 2000)
    assert (s["queryEvaluationCount"], s["inferenceCount"]) == (1000, 1000)


# --- report leadership -----------------------------------------------------------------------

def test_report_leadership_is_held_by_exactly_one_process_and_passes_on(spec, open_store):
    code = CHILD_OPEN + """
kind, target = sys.argv[1:3]
st = open_store(kind, target)
print("leader" if st.try_report_leadership() else "follower", flush=True)
print("still" if st.try_report_leadership() else "lost", flush=True)
sys.stdin.readline()  # hold until the test lets go
"""
    script = "import sys, os, time\nsys.path.insert(0, %r)\n" % str(ROOT) + textwrap.dedent(code)
    open_store().migrate()
    child = subprocess.Popen([sys.executable, "-c", script, *spec], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "leader"
        assert child.stdout.readline().strip() == "still"
        me = open_store()
        assert me.try_report_leadership() is False
        assert me.try_report_leadership() is False
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    # The leader is gone (its lock died with it): the next process to ask takes over.
    deadline = time.monotonic() + 10
    while not me.try_report_leadership():
        assert time.monotonic() < deadline, "leadership was not taken over after the leader exited"
        time.sleep(0.1)
    assert me.try_report_leadership() is True


def test_a_forked_worker_starts_fresh_and_leaves_the_parent_intact(open_store):
    # gunicorn forks workers: a child must not reuse the parent's connections or inherit its lock.
    store = open_store()
    store.write_batch([rec(input_tokens=1)])
    assert store.try_report_leadership() is True
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 1
        try:
            ok = store.try_report_leadership() is False
            store.write_batch([rec(input_tokens=10)])
            code = 0 if ok and store.domain_stats()["a.example.com"]["inputTokens"] == 11 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's lock survived the child's exit: nobody else can take it.
    assert open_store().try_report_leadership() is False
    assert store.domain_stats()["a.example.com"]["inputTokens"] == 11
    assert store.try_report_leadership() is True


# --- credentials (PostgreSQL; files on one host) ----------------------------------------------

def test_sqlite_does_not_store_credentials(tmp_path):
    st = SqliteStorage(str(tmp_path / "u.db"))
    assert st.supports_credentials is False
    st.save_credential("team.json", {"accessToken": "x"})
    assert st.load_credential("team.json") is None
    with st.credential_lock("team.json"):
        pass
    st.close()


def test_postgres_credentials_round_trip(pg_url):
    st = PostgresStorage(pg_url)
    try:
        assert st.supports_credentials is True
        assert st.load_credential("credentials/team.json") is None
        data = {"type": "oauth", "oauth": {"accessToken": "at-1", "refreshToken": "rt-1", "expiresAt": 1_800_000_000}}
        before = time.time()
        st.save_credential("credentials/team.json", data)
        loaded, updated_at = st.load_credential("credentials/team.json")
        assert loaded == data and before - 1 <= updated_at <= time.time() + 1
        st.save_credential("credentials/team.json", data | {"oauth": {"accessToken": "at-2"}})
        assert st.load_credential("credentials/team.json")[0]["oauth"] == {"accessToken": "at-2"}
        assert st.load_credential("credentials/other.json") is None
    finally:
        st.close()


def test_credential_lock_serialises_processes_read_modify_write(pg_url):
    # Each process does what a token refresh does: under the lock, read the stored copy, take a
    # while, write the next one. Without mutual exclusion, updates are lost.
    seed = PostgresStorage(pg_url)
    seed.save_credential("cred", {"n": 0})
    seed.close()
    code = """
from app.storage.postgres import PostgresStorage
st = PostgresStorage(sys.argv[1])
for _ in range(5):
    with st.credential_lock("cred", timeout=60):
        data, _ = st.load_credential("cred")
        time.sleep(0.02)
        st.save_credential("cred", {"n": data["n"] + 1})
st.close()
"""
    run_children(code, [[pg_url]] * 3)
    check = PostgresStorage(pg_url)
    try:
        assert check.load_credential("cred")[0] == {"n": 15}
    finally:
        check.close()


def test_credential_lock_blocks_the_same_key_only(pg_url):
    code = """
from app.storage.postgres import PostgresStorage
st = PostgresStorage(sys.argv[1])
with st.credential_lock("team-a"):
    print("locked", flush=True)
    sys.stdin.readline()
"""
    script = "import sys, time\nsys.path.insert(0, %r)\n" % str(ROOT) + textwrap.dedent(code)
    holder = subprocess.Popen([sys.executable, "-c", script, pg_url], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    st = PostgresStorage(pg_url)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StorageError):
            with st.credential_lock("team-a", timeout=0.5):
                pass
        with st.credential_lock("team-b", timeout=5):
            pass  # another credential is not held up
        holder.stdin.close()
        holder.wait(timeout=30)
        with st.credential_lock("team-a", timeout=10):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
        st.close()


# --- PostgreSQL under gevent -----------------------------------------------------------------

def test_postgres_queries_yield_to_other_greenlets_under_gevent(pg_url):
    code = """
from gevent import monkey
monkey.patch_all()
import gevent
from app.storage.postgres import PostgresStorage
st = PostgresStorage(sys.argv[1])
st.migrate()
ticks = []
def slow():
    with st._conn() as conn:
        conn.execute("SELECT pg_sleep(1)")
def ticker():
    while True:
        ticks.append(time.monotonic())
        gevent.sleep(0.05)
t = gevent.spawn(ticker)
gevent.sleep(0)
start = time.monotonic()
gevent.spawn(slow).join()
elapsed = time.monotonic() - start
during = [x for x in ticks if start < x < start + elapsed]
t.kill()
print(json.dumps({"elapsed": elapsed, "ticks": len(during)}))
"""
    out = json.loads(run_children(code, [[pg_url]])[0])
    assert out["elapsed"] >= 0.9
    # Blocked, the ticker would not run at all during the query; cooperative, it runs ~20 times.
    assert out["ticks"] >= 5, out


# --- selection and SQLite specifics ----------------------------------------------------------

def test_open_storage_picks_the_backend_from_settings(tmp_path):
    db = tmp_path / "nested" / "dir" / "usage.sqlite3"
    st = open_storage(Settings.from_env({"USAGE_DB_PATH": str(db), "USAGE_RETENTION_ROWS": "5"}))
    assert isinstance(st, SqliteStorage) and st.backend == "sqlite" and st.retention_rows == 5
    st.write_batch([rec()])
    assert db.exists()  # parent folders created on first use
    st.close()
    for url in ("postgresql://u@127.0.0.1:1/db", "postgres://u@127.0.0.1:1/db"):
        pg = open_storage(Settings.from_env({"DATABASE_URL": url}))
        assert isinstance(pg, PostgresStorage) and pg.backend == "postgresql"
        pg.close()  # never connected: constructing a storage does no I/O


def test_sqlite_uses_wal_and_memory_databases_work(tmp_path):
    st = SqliteStorage(str(tmp_path / "u.db"))
    st.migrate()
    assert st._connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    st.close()
    mem = open_storage(Settings.from_env({"USAGE_DB_PATH": ":memory:"}))
    mem.write_batch([rec(input_tokens=4)])
    assert mem.domain_stats()["a.example.com"]["inputTokens"] == 4
    assert mem.try_report_leadership() is True
    mem.close()


def test_unreachable_postgres_raises_storage_error_quickly():
    st = PostgresStorage("postgresql://postgres:s3cret@127.0.0.1:1/test", pool_timeout=0.5)
    try:
        with pytest.raises(StorageError) as err:
            st.write_batch([rec()])
        assert "s3cret" not in str(err.value)
        assert st.healthy() is False
        assert st.try_report_leadership() is False
        with pytest.raises(StorageError):
            with st.credential_lock("x", timeout=1):
                pass
    finally:
        st.close()
