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
    env = {"PROXY_MODE": "translation", "ANTHROPIC_PROXY_BASE_URL": fake_upstream.url + "/bench/10/0/20",
           "CLAUDE_CODE_PROXY_API_KEY": "ghp_killtestupstreamkey000000001", **storage_env}
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
