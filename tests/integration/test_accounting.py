"""The accounting service: buffered, batched, never in the way of a request, and honest about outages."""
from __future__ import annotations

import json
import socket
import threading
import time

import gevent
import pytest

from app.records import RequestRecord
from app.services.accounting import Accounting
from app.storage import open_storage
from app.storage.base import StorageDataError, StorageError
from app.storage.postgres import PostgresStorage
from app.storage.sqlite import SqliteStorage
from config.settings import Settings

SETTINGS = Settings.from_env({"TOKEN_REPORT_INTERVAL": "0", "USAGE_DB_PATH": ":memory:"})
SECRET_URL = "postgresql://nexus:hunter2-db-password@db.internal:5432/usage"


def rec(i: int = 0, domain: str = "a.com", **kw) -> RequestRecord:
    kw.setdefault("input_tokens", 10)
    kw.setdefault("output_tokens", 1)
    return RequestRecord(request_id=f"r{i}", timestamp=time.time(), domain=domain, mode="translation", status=200, **kw)


def wait_until(predicate, timeout: float = 10.0, step: float = 0.02) -> bool:
    """Yield to greenlets until `predicate()` holds (generous timeout: this is not a timing assert)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(step)
    return True


class FlakyStorage(SqliteStorage):
    """A real in-memory store whose writes fail while `down` (like a database outage)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.down = False
        self.calls = 0
        self.during_write = None  # called inside write_batch, before failing: records arriving meanwhile

    def write_batch(self, records):
        self.calls += 1
        if self.during_write:
            self.during_write()
        if self.down:
            raise StorageError(f"connection to server failed ({SECRET_URL})")
        super().write_batch(records)

    def healthy(self) -> bool:
        return not self.down

    def ids(self) -> list[str]:
        return [r[0] for r in self._query("SELECT request_id FROM nexus_requests ORDER BY id")]


@pytest.fixture
def flaky():
    st = FlakyStorage()
    yield st
    st.close()


# --- buffering ---------------------------------------------------------------------------------

def test_records_are_buffered_until_flushed_and_stats_see_own_writes():
    storage = SqliteStorage(":memory:")
    acc = Accounting(SETTINGS, storage)
    for i in range(3):
        acc.record(rec(i, tool_calls=1))
    assert storage.domain_stats() == {}  # nothing written on the request path
    assert acc.status()["pending"] == 3
    assert acc.flush() is True
    assert storage.domain_stats()["a.com"]["requestCount"] == 3
    acc.record(rec(3, domain="b.com"))
    stats = acc.stats()  # what /token-stats calls: includes the request just recorded
    assert stats["b.com"]["requestCount"] == 1 and stats["a.com"]["toolCallCount"] == 3
    by_model = acc.model_stats(domain="b.com")
    assert list(by_model) == ["unknown"]  # no model recorded for these requests
    assert (by_model["unknown"]["requestCount"], by_model["unknown"]["inputTokens"]) == (1, 10)
    assert acc.model_stats()["unknown"]["requestCount"] == 4
    acc.stop()
    storage.close()


def test_record_never_touches_the_storage(flaky):
    flaky.down = True
    acc = Accounting(SETTINGS, flaky)
    start = time.perf_counter()
    for i in range(10_000):
        acc.record(rec(i))
    elapsed = time.perf_counter() - start
    assert flaky.calls == 0  # no I/O and no waiting on the request path, even during an outage
    assert acc.pending == 10_000
    assert elapsed < 2.0  # ~10 ms in practice; the bound only catches something pathological


def test_flusher_writes_every_interval(flaky):
    acc = Accounting(SETTINGS, flaky, flush_interval=0.05)
    acc.start()
    try:
        acc.record(rec(1))
        assert wait_until(lambda: acc.pending == 0)
        assert flaky.domain_stats()["a.com"]["requestCount"] == 1
    finally:
        acc.stop()


def test_flusher_writes_as_soon_as_a_batch_is_full(flaky):
    acc = Accounting(SETTINGS, flaky, flush_interval=3600, batch_size=100)
    acc.start()
    try:
        for i in range(99):
            acc.record(rec(i))
        gevent.sleep(0.2)
        assert acc.pending == 99 and flaky.calls == 0  # the interval (an hour) has not passed
        acc.record(rec(99))
        assert wait_until(lambda: acc.pending == 0)
        assert flaky.calls == 1  # one batch, one transaction
        assert flaky.domain_stats()["a.com"]["requestCount"] == 100
    finally:
        acc.stop()


# --- outages -----------------------------------------------------------------------------------

def test_outage_keeps_records_then_writes_them_when_storage_is_back(flaky):
    flaky.down = True
    acc = Accounting(SETTINGS, flaky, flush_interval=0.02, max_retry_wait=0.1)
    acc.start()
    try:
        for i in range(10):
            acc.record(rec(i))
        assert wait_until(lambda: flaky.calls >= 2)  # retried, not given up
        status = acc.status()
        assert status["degraded"] is True and status["healthy"] is False
        assert status["pending"] == 10 and status["dropped"] == 0
        assert status["lastError"] and "hunter2" not in json.dumps(status)
        with pytest.raises(StorageError):
            acc.stats()
        flaky.down = False
        assert wait_until(lambda: acc.pending == 0)
        assert flaky.ids() == [f"r{i}" for i in range(10)]  # all of them, once, in order
        status = acc.status()
        assert (status["degraded"], status["healthy"], status["lastError"]) == (False, True, None)
        assert acc.stats()["a.com"]["requestCount"] == 10
    finally:
        acc.stop()


def test_buffer_bound_drops_the_oldest_and_counts_them(flaky):
    flaky.down = True
    acc = Accounting(SETTINGS, flaky, max_pending=10)
    for i in range(15):
        acc.record(rec(i))
    assert (acc.pending, acc.dropped) == (10, 5)
    assert acc.flush() is False
    assert acc.status()["dropped"] == 5
    flaky.down = False
    assert acc.flush() is True
    assert flaky.ids() == [f"r{i}" for i in range(5, 15)]


def test_a_failed_batch_goes_back_in_front_of_records_that_arrived_meanwhile(flaky):
    acc = Accounting(SETTINGS, flaky, max_pending=10)
    for i in range(8):
        acc.record(rec(i))
    flaky.down = True
    # While the (failing) write is in progress, five more requests finish.
    flaky.during_write = lambda: [acc.record(rec(i)) for i in range(8, 13)] and None
    assert acc.flush() is False
    flaky.during_write = None
    assert (acc.pending, acc.dropped) == (10, 3)
    flaky.down = False
    assert acc.flush() is True
    assert flaky.ids() == [f"r{i}" for i in range(3, 13)]


def test_a_record_the_store_refuses_is_dropped_alone(flaky):
    class Picky(FlakyStorage):
        def write_batch(self, records):
            if any(r.domain == "bad" for r in records):
                raise StorageDataError("value out of range")
            super().write_batch(records)

    picky = Picky()
    acc = Accounting(SETTINGS, picky)
    for i, domain in enumerate(["a.com", "bad", "a.com"]):
        acc.record(rec(i, domain=domain))
    assert acc.flush() is True
    assert picky.ids() == ["r0", "r2"]
    assert acc.dropped == 1 and acc.status()["degraded"] is False
    picky.close()


def test_an_unusable_sqlite_path_keeps_records_buffered(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data folder should be")
    storage = SqliteStorage(str(blocker / "usage.sqlite3"))
    acc = Accounting(SETTINGS, storage)
    acc.record(rec(1))
    assert acc.flush() is False
    status = acc.status()
    assert (status["degraded"], status["pending"], status["dropped"]) == (True, 1, 0)
    blocker.unlink()  # the operator fixes it
    assert acc.flush() is True
    assert storage.domain_stats()["a.com"]["requestCount"] == 1
    storage.close()


def test_unreachable_postgres_from_the_start():
    storage = PostgresStorage("postgresql://nexus:hunter2-db-password@127.0.0.1:1/usage", pool_timeout=0.5)
    acc = Accounting(SETTINGS, storage)
    try:
        for i in range(5):
            acc.record(rec(i))
        assert acc.flush() is False
        status = acc.status()
        assert status["backend"] == "postgresql"
        assert (status["healthy"], status["degraded"], status["pending"]) == (False, True, 5)
        assert "hunter2" not in json.dumps(status)
        with pytest.raises(StorageError):
            acc.stats()
    finally:
        acc.stop(final_report=False)
        storage.close()


class TcpRelay:
    """A TCP forwarder in front of PostgreSQL that the test can cut and restore (a database outage)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener = None
        self._socks: list[socket.socket] = []

    def start(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(16)
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def _accept(self, lst) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            if self._listener is not lst:  # stopped meanwhile
                client.close()
                return
            upstream = socket.create_connection(self.target)
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            # shutdown() first: on Linux, close() alone leaves a thread blocked in accept() accepting.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self._socks.clear()


def test_real_postgres_outage_and_recovery(pg_url):
    from urllib.parse import urlsplit

    parts = urlsplit(pg_url)
    relay = TcpRelay((parts.hostname, parts.port or 5432))
    relay.start()
    via_relay = pg_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{relay.port}")
    storage = PostgresStorage(via_relay, pool_timeout=1.0)
    acc = Accounting(SETTINGS, storage)
    direct = PostgresStorage(pg_url)
    try:
        acc.record(rec(0))
        assert acc.flush() is True
        relay.stop()  # the database goes away mid-run
        for i in range(1, 6):
            acc.record(rec(i))
        assert acc.flush() is False
        assert acc.status()["degraded"] is True and acc.pending == 5
        relay.start()  # ... and comes back
        assert wait_until(lambda: acc.flush(), timeout=30, step=0.5)
        assert acc.status()["degraded"] is False
        assert direct.domain_stats()["a.com"]["requestCount"] == 6
        assert direct.row_count() == 6
    finally:
        acc.stop(final_report=False)
        storage.close()
        direct.close()
        relay.stop()


# --- the console report ------------------------------------------------------------------------

class Leader(SqliteStorage):
    def __init__(self, leader: bool) -> None:
        super().__init__(":memory:")
        self.leader = leader

    def try_report_leadership(self) -> bool:
        return self.leader


def test_report_is_printed_by_the_leader_only_and_only_when_something_changed():
    printed: list[str] = []
    settings = Settings.from_env({"TOKEN_REPORT_INTERVAL": "10", "USAGE_DB_PATH": ":memory:"})
    storage = Leader(True)
    acc = Accounting(settings, storage, printer=printed.append)
    assert acc.report_once() is False  # nothing recorded yet: no empty table
    acc.record(rec(1, domain="claude-1.example.com", input_tokens=5234, output_tokens=8921))
    acc.flush()
    assert acc.report_once() is True
    assert printed[0] == "Token usage tracking started (reporting every 10s)"
    table = printed[-1].splitlines()
    assert table[0] == "" and table[2].startswith("Token Usage Report - ")
    assert table[6].split() == ["claude-1.example.com", "1", "1", "0", "0", "5,234", "8,921", "14,155"]
    assert acc.report_once() is False  # unchanged: skipped
    acc.record(rec(2, domain="claude-1.example.com"))
    acc.flush()
    assert acc.report_once() is True
    assert len(printed) == 3
    storage.leader = False
    acc.record(rec(3))
    acc.flush()
    assert acc.report_once() is False  # another process is the reporter
    assert len(printed) == 3
    storage.close()


def test_reporter_greenlet_and_final_report_on_stop():
    printed: list[str] = []
    settings = Settings.from_env({"TOKEN_REPORT_INTERVAL": "0.05", "USAGE_DB_PATH": ":memory:"})
    storage = open_storage(settings)
    acc = Accounting(settings, storage, flush_interval=0.02, printer=printed.append)
    acc.start()
    try:
        acc.record(rec(1, domain="localhost"))
        assert wait_until(lambda: any("Token Usage Report" in p for p in printed))
        reports = sum("Token Usage Report" in p for p in printed)
        gevent.sleep(0.3)  # several intervals, nothing new: no new table
        assert sum("Token Usage Report" in p for p in printed) == reports
        acc.record(rec(2, domain="localhost"))
    finally:
        acc.stop()
    last = printed[-1].splitlines()
    assert "Token Usage Report" in printed[-1] and last[-2].split()[:2] == ["TOTAL", "2"]  # flushed first
    n = len(printed)
    acc.stop()  # idempotent: no second final report
    assert len(printed) == n
    storage.close()


def test_no_reporter_when_the_interval_is_zero():
    printed: list[str] = []
    storage = SqliteStorage(":memory:")
    acc = Accounting(SETTINGS, storage, flush_interval=0.02, printer=printed.append)
    acc.start()
    acc.record(rec(1))
    assert wait_until(lambda: acc.pending == 0)
    acc.stop()
    assert printed == []
    assert storage.domain_stats()["a.com"]["requestCount"] == 1
    storage.close()
