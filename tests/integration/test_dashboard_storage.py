"""The dashboard's reads, on SQLite and on PostgreSQL alike: ranges, buckets, percentiles, keyset pages,
filters on any column, and the schema step that adds the cost columns."""
from __future__ import annotations

import sqlite3

import pytest

from app.pricing import PriceTable
from app.records import RequestRecord
from app.services.dashboard import DashboardInputError, DashboardService, parse_range
from app.services.recording import Recorder
from app.storage.postgres import PostgresStorage
from app.storage.sqlite import MIGRATIONS, SqliteStorage

NOW = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        st = SqliteStorage(str(tmp_path / "usage.sqlite3"))
    else:
        st = PostgresStorage(request.getfixturevalue("pg_url"))
    yield st
    st.close()


def rec(i: int, **kw) -> RequestRecord:
    kw.setdefault("timestamp", NOW - 3600 + i * 60)
    kw.setdefault("domain", "a.example" if i % 2 else "b.example")
    kw.setdefault("model_requested", "claude-sonnet-4-5")
    kw.setdefault("model_used", kw["model_requested"])
    kw.setdefault("status", 200)
    kw.setdefault("duration_ms", float(i))
    return RequestRecord(request_id=f"req_{i}", mode="passthrough", **kw)


class _Accounting:
    def flush(self) -> bool:
        return True


def service(store) -> DashboardService:
    return DashboardService(store, _Accounting(), credentials=None, settings=None)


def test_overview_sums_buckets_domains_models_and_percentiles(store):
    store.write_batch([rec(i, input_tokens=100, output_tokens=10, cost_usd=0.001) for i in range(1, 21)]
                      + [rec(30, status=529, error_type="overloaded_error", cost_usd=0.0),
                         rec(31, model_requested="x-unpriced", input_tokens=5, cost_usd=None)])
    data = service(store).overview(parse_range({"range": "1h"}, now=NOW))
    t = data["totals"]
    assert (t["requests"], t["errors"], t["inputTokens"], t["outputTokens"]) == (22, 1, 2005, 200)
    assert t["costUsd"] == pytest.approx(0.02) and t["unpricedRequests"] == 1
    assert (t["p50Ms"], t["p95Ms"]) == (11.0, 30.0)  # nearest rank over 22 durations: 1..20, 30, 31
    assert len(data["series"]) == 60 and sum(s["requests"] for s in data["series"]) == 22
    assert data["series"][0]["requests"] == 1 and data["series"][20]["requests"] == 0
    assert [d["domain"] for d in data["topDomains"]] == ["a.example", "b.example"]
    assert {(m["requested"], m["used"]) for m in data["topModels"]} == {
        ("claude-sonnet-4-5", "claude-sonnet-4-5"), ("x-unpriced", "x-unpriced")}
    earlier = service(store).overview(parse_range({"from": "2027-01-15T00:00", "to": "2027-01-15T01:00"}, now=NOW))
    assert earlier["totals"]["requests"] == 0 and earlier["totals"]["p50Ms"] is None


def test_keyset_pages_reach_the_oldest_row_with_ties_in_time(store):
    store.write_batch([rec(i, timestamp=NOW - (i // 3)) for i in range(25)])  # three rows share each second
    svc, seen, before = service(store), [], None
    for _ in range(20):
        page = svc.requests({"limit": "4", **({"before": before} if before else {})})
        seen.extend(r["requestId"] for r in page["rows"])
        before = page["next"]
        if before is None:
            break
    assert len(seen) == 25 and len(set(seen)) == 25
    assert seen[-1] in ("req_24", "req_23", "req_22") and seen[0] in ("req_0", "req_1", "req_2")


def test_filters_by_domain_model_status_class_error_type_and_time(store):
    store.write_batch([rec(1), rec(2), rec(3, status=429, error_type="rate_limit_error"),
                       rec(4, model_requested="claude-opus-4-1", model_used="claude-opus-4-1"),
                       rec(5, status=200, error_type="client_disconnected"),
                       rec(6, model_requested="claude-sonnet-4-5", model_used="openai/gpt-4.1")])
    svc = service(store)
    ids = lambda **args: sorted(r["requestId"] for r in svc.requests(args)["rows"])  # noqa: E731
    assert ids(domain="a.example") == ["req_1", "req_3", "req_5"]
    assert ids(model="claude-opus-4-1") == ["req_4"]
    assert ids(model="openai/gpt-4.1") == ["req_6"]  # requested or used
    assert ids(status_class="4xx") == ["req_3"]
    assert ids(status_class="error") == ["req_3", "req_5"]
    assert ids(error_type="client_disconnected") == ["req_5"]
    assert ids(**{"from": str(NOW - 3600 + 4 * 60)}) == ["req_4", "req_5", "req_6"]
    assert ids(stream="false", status="429") == ["req_3"]
    with pytest.raises(DashboardInputError):
        svc.requests({"no_such_column": "x"})
    with pytest.raises(DashboardInputError):
        svc.requests({"status_class": "7xx"})


def test_a_column_added_later_is_filterable_and_shown_without_code_changes(store, tmp_path):
    store.write_batch([rec(1)])
    if isinstance(store, SqliteStorage):
        store._ready().execute("ALTER TABLE nexus_requests ADD COLUMN key_name TEXT")
        store._ready().execute("ALTER TABLE nexus_requests ADD COLUMN key_hash TEXT")
        store._ready().execute("UPDATE nexus_requests SET key_name = 'alice', key_hash = 'h4sh-of-the-key'")
    else:
        with store._conn() as conn:
            conn.execute("ALTER TABLE nexus_requests ADD COLUMN key_name TEXT, ADD COLUMN key_hash TEXT")
            conn.execute("UPDATE nexus_requests SET key_name = 'alice', key_hash = 'h4sh-of-the-key'")
    store._columns_cache = None  # (a restart would read the new columns)
    store.write_batch([rec(2)])
    svc = service(store)
    page = svc.requests({"key_name": "alice"})
    assert [r["requestId"] for r in page["rows"]] == ["req_1"]
    # key_id (client keys) and credential (pools) are columns added by later schema steps, shown the same way
    assert page["extraColumns"] == ["key_id", "credential", "key_name"]
    assert page["rows"][0]["extra"] == {"key_id": None, "credential": None, "key_name": "alice"}
    detail = svc.detail(page["rows"][0]["id"])
    names = [name for name, _ in detail["fields"]]
    assert "key_name" in names and "key_hash" not in names  # a hash of a key is never shown
    with pytest.raises(DashboardInputError):
        svc.requests({"key_hash": "h4sh-of-the-key"})


def test_cost_is_fixed_when_recorded_and_a_later_price_change_does_not_rewrite_it(store):
    class Quiet:
        def submit(self, *a) -> None: ...
        def slack_override_for(self, domain): return None

    class Acc:
        def record(self, r) -> None:
            store.write_batch([r])

    old = Recorder(Acc(), Quiet(), Quiet(), Quiet(), PriceTable({}))
    r = rec(1, input_tokens=1_000_000)
    old.finish(r)
    assert r.cost_usd == pytest.approx(3.0)
    from app.pricing import parse_model_prices

    new = Recorder(Acc(), Quiet(), Quiet(), Quiet(),
                   PriceTable(parse_model_prices('{"claude-sonnet-4*": {"input": 1, "output": 1}}')))
    new.finish(rec(2, input_tokens=1_000_000))
    stats = store.domain_stats()
    assert stats["a.example"]["costUsd"] == pytest.approx(3.0) and stats["b.example"]["costUsd"] == pytest.approx(1.0)
    rows = {row["request_id"]: row["cost_usd"] for row in store.request_page(limit=10)}
    assert rows == {"req_1": pytest.approx(3.0), "req_2": pytest.approx(1.0)}


def test_schema_1_store_gets_the_cost_columns_and_its_history_is_unpriced(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    conn = sqlite3.connect(path)
    for stmt in MIGRATIONS[0]:
        conn.execute(stmt)
    conn.execute("CREATE TABLE nexus_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO nexus_meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO nexus_domain_usage (domain, request_count, input_tokens) VALUES ('old.example', 7, 70)")
    conn.execute("INSERT INTO nexus_requests (ts, domain, input_tokens) VALUES (?, 'old.example', 70)", (NOW,))
    conn.commit()
    conn.close()
    st = SqliteStorage(path)
    st.write_batch([rec(1, domain="old.example", input_tokens=10, cost_usd=0.5)])
    s = st.domain_stats()["old.example"]
    assert (s["requestCount"], s["unpricedRequests"], s["costUsd"]) == (8, 7, 0.5)
    st.close()


def test_whole_hour_ranges_read_the_stored_totals_which_outlive_pruned_rows(store, tmp_path):
    store.retention_rows = 5
    hour = int(NOW // 3600) * 3600.0
    store.write_batch([rec(i, timestamp=hour - 7200 + i * 60, duration_ms=100.0 * (i + 1), input_tokens=10,
                           cost_usd=0.01) for i in range(100)])
    assert store.row_count() == 5
    data = service(store).overview(parse_range({"range": "24h"}, now=hour + 10))
    t = data["totals"]
    assert (t["requests"], t["inputTokens"], t["costUsd"]) == (100, 1000, pytest.approx(1.0))
    assert len(data["series"]) == 24 and [s["requests"] for s in data["series"][-3:]] == [60, 40, 0]
    # percentiles from the 10 %-wide duration buckets: within 5 % of the exact nearest-rank values
    assert t["p50Ms"] == pytest.approx(5000, rel=0.05) and t["p95Ms"] == pytest.approx(9500, rel=0.05)
