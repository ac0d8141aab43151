"""The /metrics text: the fast merge of the workers' files says exactly what prometheus_client's own
MultiProcessCollector says, for every metric type and gauge mode, and the label bound holds across
processes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from app.services.metrics import OTHER, BoundedLabels, render_directory, upstream_error_kind
from app.records import RequestRecord

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent("""
    import os, sys, random
    from prometheus_client import Counter, Gauge, Histogram
    seed, domains, models = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rnd = random.Random(seed)
    c = Counter("nexus_requests", "Requests", ["mode", "domain", "model", "status"], registry=None)
    t = Counter("nexus_tokens", "Tokens", ["domain", "model", "type"], registry=None)
    plain = Counter("nexus_storage_dropped_records", "Dropped", registry=None)
    h = Histogram("nexus_request_duration_seconds", "Duration", ["mode", "domain"],
                  buckets=(0.05, 0.5, 5.0, 60.0, 600.0), registry=None)
    live = Gauge("nexus_open_streams", "Open", ["mode"], multiprocess_mode="livesum", registry=None)
    top = Gauge("nexus_build_info", "Build", ["version", "mode"], multiprocess_mode="max", registry=None)
    each = Gauge("nexus_each", "Each", multiprocess_mode="all", registry=None)
    for d in range(domains):
        for m in range(models):
            if rnd.random() < 0.8:
                c.labels("translation", "d%d.example.com" % d, "model-%d" % m, rnd.choice(["200", "500", "client_closed"])).inc(rnd.randint(1, 9))
                t.labels("d%d.example.com" % d, "model-%d" % m, rnd.choice(["input", "output"])).inc(rnd.randint(1, 5000))
        for _ in range(rnd.randint(0, 6)):
            h.labels("translation", "d%d.example.com" % d).observe(rnd.choice([0.01, 0.3, 2.0, 30.0, 1000.0, rnd.random()]))
    plain.inc(seed)
    live.labels("translation").set(seed)
    top.labels("1.0", "translation").set(seed % 2)
    each.set(seed * 10)
""")


def _write(directory: Path, seed: int, domains: int = 30, models: int = 5) -> None:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(directory), PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", WRITER, str(seed), str(domains), str(models)], env=env, check=True,
                   cwd=str(REPO))


def _samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _reference(directory: Path) -> dict:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))
    return _samples(generate_latest(registry).decode())


def test_merge_equals_prometheus_clients_collector(tmp_path: Path) -> None:
    for seed in (1, 2, 3):  # three worker processes, each with its own files
        _write(tmp_path, seed)
    ours = _samples(render_directory(str(tmp_path)).decode())
    assert ours == _reference(tmp_path)
    assert ours[("nexus_storage_dropped_records_total", ())] == 6.0  # summed over processes
    assert ours[("nexus_open_streams", (("mode", "translation"),))] == 6.0  # livesum
    assert ours[("nexus_build_info", (("mode", "translation"), ("version", "1.0")))] == 1.0  # max
    assert {v for k, v in ours.items() if k[0] == "nexus_each"} == {10.0, 20.0, 30.0}  # one per pid


def test_merge_follows_new_series_and_new_values(tmp_path: Path) -> None:
    _write(tmp_path, 1, domains=3, models=2)
    first = render_directory(str(tmp_path)).decode()
    assert _samples(first) == _reference(tmp_path)
    _write(tmp_path, 4, domains=20, models=3)  # new series, new files, since the last scrape
    assert _samples(render_directory(str(tmp_path)).decode()) == _reference(tmp_path)
    for f in tmp_path.glob("gauge_livesum_*.db"):
        f.unlink()  # what mark_process_dead does for a dead worker
    assert _samples(render_directory(str(tmp_path)).decode()) == _reference(tmp_path)


def test_histogram_counts_are_cumulative_and_match_observations(tmp_path: Path) -> None:
    _write(tmp_path, 7, domains=5, models=1)
    families = {f.name: f for f in text_string_to_metric_families(render_directory(str(tmp_path)).decode())}
    hist = families["nexus_request_duration_seconds"]
    by_domain: dict = {}
    for s in hist.samples:
        by_domain.setdefault(s.labels["domain"], []).append(s)
    for samples in by_domain.values():
        buckets = [s.value for s in samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets)  # cumulative
        count = next(s.value for s in samples if s.name.endswith("_count"))
        assert buckets[-1] == count


BOUND = textwrap.dedent("""
    import sys
    from app.services.metrics import BoundedLabels
    path, limit, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    labels = BoundedLabels(path, limit, seed=["team-a.example.com"])
    seen = set(labels.label("h%d.example.net" % i) for i in range(start, start + 500))
    seen.add(labels.label("team-a.example.com"))
    print(len(seen))
""")


def test_label_bound_holds_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "labels_domain.txt")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", BOUND, path, "50", str(start)], env=env, cwd=str(REPO),
                              stdout=subprocess.PIPE, text=True) for start in (0, 300)]
    for p in procs:
        p.wait(60)
    admitted = Path(path).read_text().split()
    assert len(admitted) == 49  # the seeded mapped domain takes one of the 50
    here = BoundedLabels(path, 50, seed=["team-a.example.com"])
    labels = {here.label("h%d.example.net" % i) for i in range(0, 1000)}
    assert len(labels) == 50  # 49 admitted hosts + other, whichever process admitted them
    assert OTHER in labels
    assert here.label("team-a.example.com") == "team-a.example.com"  # a mapped domain always has its own


def test_label_values_are_cleaned() -> None:
    labels = BoundedLabels("/nonexistent-dir/labels.txt", 5)
    assert labels.label(None) == OTHER or labels.label(None) == "unknown"
    long = "x" * 1000
    assert labels.label(long) in (OTHER, "x" * 200)


def test_upstream_error_kinds_from_the_record() -> None:
    def rec(**kw) -> RequestRecord:
        return RequestRecord(request_id="r", timestamp=0.0, domain="d", mode="translation", **kw)

    assert upstream_error_kind(rec(status=200)) is None
    assert upstream_error_kind(rec(status=401, error_type="authentication_error")) is None  # the proxy's own
    assert upstream_error_kind(rec(status=502, error_type="api_error", upstream_error="connect")) == "connect"
    assert upstream_error_kind(rec(status=200, stream=True, error_type="client_disconnected")) == "client_disconnect"
    assert upstream_error_kind(rec(status=200, stream=True, error_type="api_error")) == "mid_stream"
    assert upstream_error_kind(rec(status=200, stream=True, error_type="timeout_error")) == "timeout"
