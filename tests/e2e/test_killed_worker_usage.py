"""A worker killed with SIGKILL under load loses no usage: afterwards /token-stats counts exactly the
requests the upstream received, on SQLite and on PostgreSQL (the journal, replayed by the new worker or
by the master)."""
from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import pytest

from tests.e2e.metrics_helpers import BODY, get, post, wait_for, workers
from tests.fakes.server import ProxyServer

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(params=["sqlite", "postgres"])
def storage_env(request) -> dict:
    if request.param == "postgres":
        return {"DATABASE_URL": request.getfixturevalue("pg_url")}
    return {}


def counted(proxy: ProxyServer) -> tuple[int, int]:
    """(requests, errors) over every domain in /token-stats."""
    status, body = get(proxy, "/token-stats")
    if status != 200:
        return -1, -1
    stats = json.loads(body)["stats"].values()
    return sum(d["requestCount"] for d in stats), sum(d["errorCount"] for d in stats)


def test_sigkill_under_load_loses_no_usage(fake_upstream, storage_env, tmp_path):
    # Streams of 10 chunks 20 ms apart and instant JSON answers, from the fake's counted bench path.
    env = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": fake_upstream.url + "/bench/10/0/20",
           "CLAUDE_API_KEY": "sk-ant-api03-killtest-upstream-key-000000001", **storage_env}
    with ProxyServer(env, workers=2, cwd=tmp_path) as proxy:
        stop = threading.Event()
        answered = [0]

        def load(seed: int) -> None:
            rnd = random.Random(seed)
            while not stop.is_set():
                body = dict(BODY, stream=rnd.random() < 0.5)
                try:
                    if post(proxy, body, timeout=30)[0] == 200:
                        answered[0] += 1
                except Exception:
                    pass  # cut by the kill

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(12)]
        for t in threads:
            t.start()
        try:
            for _kill in range(2):
                time.sleep(1.5)
                victim = random.choice(sorted(workers(proxy)))
                os.kill(victim, signal.SIGKILL)
                assert wait_for(lambda: len(workers(proxy) - {victim}) == 2, timeout=30)
            time.sleep(1.0)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert answered[0] > 50
        upstream = fake_upstream.stats()["bench_requests"]

        def equal():
            return counted(proxy)[0] == upstream

        assert wait_for(equal, timeout=30), (counted(proxy), upstream)
        time.sleep(1.5)  # a late replay must not add anything
        requests, errors = counted(proxy)
        assert requests == upstream
        # Streams were in flight on each killed worker: counted, as errors, though they never finished.
        assert errors >= 1


def test_usage_buffered_in_a_database_outage_survives_a_stop(fake_upstream, pg_url, tmp_path):
    """PostgreSQL is down when the proxy stops: the records stay in the journal, and the next start writes
    them (they used to be logged as lost)."""
    from tests.e2e.fleet_helpers import PgForwarder

    with PgForwarder() as forwarder:
        env = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": fake_upstream.url,
               "CLAUDE_API_KEY": "sk-ant-api03-outage-journal-key-000000000000",
               "DATABASE_URL": forwarder.url_for(pg_url), "USAGE_DB_PATH": str(tmp_path / "data" / "usage.sqlite3"),
               "GRACEFUL_TIMEOUT": "10"}
        with ProxyServer(env, workers=2, cwd=tmp_path) as proxy:
            assert [post(proxy, host="team.example.com")[0] for _ in range(3)] == [200] * 3
            assert wait_for(lambda: counted(proxy)[0] == 3)
            forwarder.down()
            assert [post(proxy, host="team.example.com")[0] for _ in range(9)] == [200] * 9
            assert proxy.terminate() == 0
            output = proxy.output()
        assert "kept in the journal" in output
        assert list((tmp_path / "data" / "usage-journal").glob("seg-*"))
        forwarder.up()
        with ProxyServer(env, workers=2, cwd=tmp_path) as proxy:
            assert wait_for(lambda: counted(proxy)[0] == 12, timeout=30), counted(proxy)
            assert len(fake_upstream.requests("/v1/messages")) == 12
