"""/metrics from the real server (gunicorn, gevent workers), read with prometheus_client's own parser:
exact with two workers, unchanged by killed workers, bounded labels, and a real Prometheus scraping it."""
from __future__ import annotations

import glob
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest_db import in_ci
from tests.e2e.metrics_helpers import (BODY, Scrape, get, hang_up_after_first_delta, kill_workers, post, scrape,
                                       wait_for, workers)
from tests.fakes.server import ProxyServer, free_port

pytestmark = pytest.mark.timeout(180)

UPSTREAM_KEY = "ghp_metricsupstreamkey000000000001"
STREAM = dict(BODY, stream=True)


def chunk(text: str) -> dict:
    return {"id": "chatcmpl-m", "object": "chat.completion.chunk", "created": 1700000000, "model": "slow",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def slow_stream() -> dict:
    return {"sse": [chunk("w%d " % i) for i in range(40)], "gap_ms": 150}


def translation_env(fake, tmp: Path, **extra: str) -> dict:
    env = {"PROXY_MODE": "translation", "ANTHROPIC_PROXY_BASE_URL": fake.url,
           "CLAUDE_CODE_PROXY_API_KEY": UPSTREAM_KEY, "UPSTREAM_RETRY_MAX_WAIT": "1",
           "USAGE_DB_PATH": str(tmp / "usage.sqlite3")}
    env.update(extra)
    return env


def served_per_worker(directory: Path) -> list[float]:
    """nexus_requests_total summed per worker file (which workers answered)."""
    out = []
    for path in glob.glob(str(directory / "counter_*.db")):
        total = 0.0
        for metric in MultiProcessCollector.merge([path]):
            if metric.name == "nexus_requests":
                total += sum(s.value for s in metric.samples)
        out.append(total)
    return out


def in_parallel(n: int, fn) -> list:
    results: list = [None] * n

    def run(i: int) -> None:
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_two_workers_count_every_request_exactly(fake_upstream, tmp_path):
    metrics_dir = tmp_path / "metrics"
    env = translation_env(fake_upstream, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    with ProxyServer(env, workers=2, cwd=tmp_path) as proxy:
        # Upstream errors: three 500s, then a 503 that a retry gets past.
        fake_upstream.script("/chat/completions", [{"status": 500}] * 3 + [{"status": 503}])
        errors = [post(proxy)[0] for _ in range(3)]
        assert errors == [500, 500, 500]
        assert post(proxy)[0] == 200  # the retried one
        # Two clients that hang up mid-stream.
        fake_upstream.script("/chat/completions", [slow_stream(), slow_stream()])
        hang_up_after_first_delta(proxy, STREAM)
        hang_up_after_first_delta(proxy, STREAM)
        # JSON and streams, concurrently, until both workers have answered some.
        json_ok = stream_ok = 0
        for _wave in range(20):
            fake_upstream.script("/chat/completions", [{"delay_ms": 150}] * 8)
            statuses = in_parallel(8, lambda i: post(proxy, STREAM if i % 2 else BODY)[0])
            assert statuses == [200] * 8
            json_ok += 4
            stream_ok += 4
            if len([n for n in served_per_worker(metrics_dir) if n > 0]) >= 2:
                break
        assert len([n for n in served_per_worker(metrics_dir) if n > 0]) == 2, "one worker answered everything"
        n = 3 + 1 + 2 + json_ok + stream_ok

        def settled():
            s = scrape(proxy)
            return s if s.total("nexus_requests_total") == n else None

        s = wait_for(settled)
        assert s, scrape(proxy).text[:3000]
        # Every scrape, whichever worker serves it, says the same.
        for _ in range(6):
            again = scrape(proxy)
            assert again.total("nexus_requests_total") == n
            assert again.total("nexus_request_duration_seconds_count") == n
        assert s.total("nexus_requests_total", status="200") == json_ok + stream_ok + 1
        assert s.total("nexus_requests_total", status="500") == 3
        assert s.total("nexus_requests_total", status="client_closed") == 2
        assert s.total("nexus_requests_total", mode="translation", domain="127.0.0.1") == n
        assert s.label_values("nexus_requests_total", "model") == {"openai/gpt-4.1"}  # the model that served it
        # Histogram counts: every request once; time to first token for every stream that got one.
        assert s.total("nexus_request_duration_seconds_count", domain="127.0.0.1") == n
        assert s.total("nexus_request_duration_seconds_bucket", le="+Inf") == n
        assert s.total("nexus_time_to_first_token_seconds_count") == stream_ok + 2
        assert s.total("nexus_upstream_errors_total", kind="status_5xx") == 3
        assert s.total("nexus_upstream_errors_total", kind="client_disconnect") == 2
        assert s.total("nexus_upstream_errors_total", kind="connect") == 0
        assert s.total("nexus_upstream_errors_total", kind="status_4xx") == 0
        assert s.total("nexus_upstream_retries_total", reason="status_503") == 1
        assert s.total("nexus_open_streams") == 0
        assert s.total("nexus_build_info", mode="translation") == 1
        # Tokens agree with the usage store.
        def stored():
            stats = json.loads(get(proxy, "/token-stats")[1])["stats"].get("127.0.0.1", {})
            return stats if stats.get("requestCount") == n else None  # the other worker flushes within 1 s

        stats = wait_for(stored)
        assert stats
        assert s.total("nexus_tokens_total", type="input") == stats["inputTokens"] > 0
        assert s.total("nexus_tokens_total", type="output") == stats["outputTokens"] > 0
        assert UPSTREAM_KEY not in s.text


def test_open_streams_counts_live_streams_across_workers(fake_upstream, tmp_path):
    env = translation_env(fake_upstream, tmp_path)
    with ProxyServer(env, workers=2, cwd=tmp_path) as proxy:
        fake_upstream.script("/chat/completions", [slow_stream() for _ in range(4)])
        done = []
        threads = [threading.Thread(target=lambda: done.append(post(proxy, STREAM)[0])) for _ in range(4)]
        for t in threads:
            t.start()
        assert wait_for(lambda: scrape(proxy).total("nexus_open_streams") == 4)
        for t in threads:
            t.join(60)
        assert done == [200] * 4
        assert wait_for(lambda: scrape(proxy).total("nexus_open_streams") == 0)


def cut_short(proxy: ProxyServer) -> None:
    try:
        post(proxy, STREAM, timeout=60)
    except Exception:
        pass  # its worker is killed under it


def test_killed_workers_lose_and_double_nothing(fake_upstream, tmp_path):
    env = translation_env(fake_upstream, tmp_path)
    with ProxyServer(env, workers=2, cwd=tmp_path) as proxy:
        statuses = in_parallel(10, lambda i: post(proxy, STREAM if i % 3 == 0 else BODY)[0])
        assert statuses == [200] * 10
        assert wait_for(lambda: scrape(proxy).total("nexus_requests_total") == 10)
        # A stream is open on one of the workers when they are killed.
        fake_upstream.script("/chat/completions", [slow_stream()])
        cut = threading.Thread(target=cut_short, args=(proxy,), daemon=True)
        cut.start()
        assert wait_for(lambda: scrape(proxy).total("nexus_open_streams") == 1)
        kill_workers(proxy, 2)
        s = scrape(proxy)
        assert s.total("nexus_requests_total") == 10  # nothing lost, nothing doubled
        assert s.total("nexus_request_duration_seconds_count") == 10
        assert s.total("nexus_open_streams") == 0  # the dead worker's stream is no longer open
        statuses = in_parallel(5, lambda i: post(proxy)[0])
        assert statuses == [200] * 5
        assert wait_for(lambda: scrape(proxy).total("nexus_requests_total") == 15)
        kill_workers(proxy, 2)  # and once more: the restarted workers' counts stay too
        s = scrape(proxy)
        assert s.total("nexus_requests_total") == 15
        assert s.total("nexus_tokens_total", type="input") > 0
        assert s.total("nexus_build_info") == 1


def test_domain_labels_stay_bounded_under_random_hosts(fake_upstream, tmp_path):
    # count_tokens is answered locally in translation mode: 1,000 requests that cost no upstream call.
    # The store's own bound on unmapped hosts is lifted here, so only the metrics' bound is in play.
    env = translation_env(fake_upstream, tmp_path, METRICS_MAX_DOMAINS="200", USAGE_MAX_UNMAPPED_HOSTS="5000")
    rnd = random.Random(7)
    hosts = ["%08x.attacker.example" % rnd.getrandbits(32) for _ in range(1000)]
    with ProxyServer(env, workers=2, cwd=tmp_path) as proxy:
        def send(i: int) -> list[int]:
            return [post(proxy, BODY, host=h, path="/v1/messages/count_tokens")[0] for h in hosts[i::10]]

        assert all(st == 200 for batch in in_parallel(10, send) for st in batch)
        s = wait_for(lambda: (lambda x: x if x.total("nexus_requests_total") == 1000 else None)(scrape(proxy)))
        assert s
        domains = s.label_values("nexus_requests_total", "domain")
        assert len(domains) == 201 and "other" in domains  # 200 hosts, then everything else as "other"
        assert s.total("nexus_requests_total", domain="other") == 800
        assert len(s.label_values("nexus_request_duration_seconds_count", "domain")) == 201
        assert len(s.text.splitlines()) < 20000


def test_the_metrics_directory_is_made_and_removed_by_the_proxy(fake_upstream, tmp_path):
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "nexus-metrics-*")))
    proxy = ProxyServer(translation_env(fake_upstream, tmp_path), workers=2, cwd=tmp_path).start()
    try:
        assert post(proxy)[0] == 200
        assert wait_for(lambda: scrape(proxy).total("nexus_requests_total") == 1)
        made = set(glob.glob(os.path.join(tempfile.gettempdir(), "nexus-metrics-*"))) - before
        ours = [d for d in made if any(Path(d).glob("counter_%d.db" % pid) for pid in workers(proxy))]
        assert len(ours) == 1
    finally:
        assert proxy.terminate() == 0
        proxy.stop()
    assert not os.path.exists(ours[0])


def test_a_restarted_proxy_starts_from_files_of_its_own(fake_upstream, tmp_path):
    metrics_dir = tmp_path / "metrics"
    env = translation_env(fake_upstream, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    for _round in range(2):
        with ProxyServer(env, workers=2, cwd=tmp_path) as proxy:
            assert [post(proxy)[0] for _ in range(3)] == [200] * 3
            assert wait_for(lambda: scrape(proxy).total("nexus_requests_total") == 3)


# --------------------------------------------------------------------------- a real Prometheus

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_a_real_prometheus_scrapes_the_proxy(fake_upstream, tmp_path):
    if not os.path.exists(PROMETHEUS):
        if in_ci():
            pytest.fail("prometheus is not installed (.ci/run installs the Debian package)")
        pytest.skip("prometheus is not installed")
    token = "metrics-scraper-token-0123456789"
    env = translation_env(fake_upstream, tmp_path, METRICS_TOKEN=token)
    with ProxyServer(env, workers=2, cwd=tmp_path) as proxy:
        sent = 7
        assert [post(proxy)[0] for _ in range(sent)] == [200] * sent
        port = free_port()
        (tmp_path / "token").write_text(token)
        # The shipped scrape config and alert rules, with this test's target, token file and a 1 s interval.
        config = (DEPLOY / "prometheus.yml").read_text()
        config = config.replace("/etc/prometheus/nexus-metrics-token", str(tmp_path / "token"))
        config = config.replace("          - proxy-1.internal:3000\n          - proxy-2.internal:3000\n",
                                f"          - 127.0.0.1:{proxy.port}\n")
        config = config.replace("scrape_interval: 15s", "scrape_interval: 1s").replace(
            "evaluation_interval: 15s", "evaluation_interval: 1s")
        assert f"127.0.0.1:{proxy.port}" in config and str(tmp_path / "token") in config
        shutil.copy(DEPLOY / "prometheus-alerts.yml", tmp_path / "prometheus-alerts.yml")
        (tmp_path / "prometheus.yml").write_text(config)
        log = open(tmp_path / "prometheus.log", "wb")
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))

        def api(path: str, **params: str) -> dict | None:
            url = f"http://127.0.0.1:{port}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return json.loads(resp.read())
            except OSError:
                return None

        def requests_seen() -> float | None:
            data = api("query", query="sum(nexus_requests_total)")
            result = (data or {}).get("data", {}).get("result") or []
            return float(result[0]["value"][1]) if result else None

        try:
            value = wait_for(lambda: requests_seen() == sent, timeout=60, step=0.5)
            assert value, "Prometheus never saw %s requests (last: %s)\n%s" % (
                sent, requests_seen(), (tmp_path / "prometheus.log").read_text()[-3000:])
            targets = api("targets")["data"]["activeTargets"]
            assert [t["health"] for t in targets] == ["up"]  # scraped with the token
            # The shipped alert rules load and evaluate against these metrics.
            groups = api("rules")["data"]["groups"]
            rules = {r["name"]: r for g in groups for r in g["rules"]}
            assert {"NexusHighErrorRate", "NexusOAuthCredentialExpiring", "NexusStorageDroppingRecords"} <= set(rules)
            assert wait_for(lambda: all(r["health"] == "ok" for g in api("rules")["data"]["groups"]
                                        for r in g["rules"]), timeout=20)
            # Every query of the shipped dashboard is valid PromQL here.
            dashboard = json.loads((DEPLOY / "grafana" / "nexus-dashboard.json").read_text())
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    expr = (target["expr"].replace("$__rate_interval", "1m").replace("$__range", "5m")
                            .replace("$domain", ".*"))
                    answer = api("query", query=expr)
                    assert answer and answer["status"] == "success", (panel["title"], expr, answer)
        finally:
            prom.terminate()
            try:
                prom.wait(20)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait(5)
            log.close()
        assert prom.returncode is not None
