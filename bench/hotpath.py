"""Per-request CPU of the parts a finished request goes through, and the cost of one /metrics scrape.

    python -m bench.hotpath            # prints a markdown table (bench.run includes it in its results)
    python -m bench.hotpath --json     # one JSON object

Measured in one fresh process with the real classes: the usage journal (`Accounting.begin` + `record`
with the journal on, minus the same calls with it off), the metrics a request feeds
(`Metrics.request_finished`, plus `stream_opened` and `first_token` for a stream), and a scrape of
100 domains x 10 models written by two worker processes (`Metrics.render`, cold and warm).
CPU is `time.process_time()`, so other load on the machine does not inflate it much.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

JOURNAL_TARGET_US = 20.0
SCRAPE_TARGET_MS = 50.0


def _record(i: int, domain: str = "team-a.example.com", model: str = "openai/gpt-4.1"):
    from app.records import RequestRecord

    return RequestRecord(request_id="req_%024x" % i, timestamp=time.time(), domain=domain, mode="translation",
                         model_requested="claude-sonnet-4-5", model_used=model, stream=bool(i % 2),
                         input_tokens=1234, output_tokens=56, cache_read_input_tokens=7, tool_calls=1, status=200,
                         duration_ms=12.5, api_key_masked="sk-...abcd", user_text="hello " * 20,
                         assistant_text="answer " * 40)


class _NullStorage:
    backend = "bench"

    def write_batch(self, records, skip_existing=False) -> None:
        pass

    def healthy(self) -> bool:
        return True


def journal_cost(n: int, tmp: str) -> dict:
    from app.services.accounting import Accounting
    from app.settings import Settings

    results = {}
    for journal in (False, True):
        settings = Settings.from_env({"USAGE_DB_PATH": os.path.join(tmp, "usage.sqlite3"),
                                      "TOKEN_REPORT_INTERVAL": "0"})
        acc = Accounting(settings, _NullStorage(), journal=journal, max_pending=n + 10, batch_size=n + 10)
        acc.start()
        records = [_record(i) for i in range(n)]
        t0 = time.process_time()
        for i, rec in enumerate(records):
            acc.begin(rec)
            acc.record(rec)
            if i % 100 == 99:
                acc.flush()  # seals and deletes a segment per batch, as the flusher does
        results[journal] = (time.process_time() - t0) / n
        acc.stop(final_report=False)
    return {"journal_us": (results[True] - results[False]) * 1e6, "accounting_no_journal_us": results[False] * 1e6}


def metrics_cost(n: int) -> dict:
    from app.services.metrics import Metrics
    from app.settings import Settings

    settings = Settings.from_env({"TOKEN_REPORT_INTERVAL": "0"})
    metrics = Metrics(settings)
    records = [_record(i, domain="d%d.example.com" % (i % 20), model="model-%d" % (i % 5)) for i in range(n)]
    for rec in records[:200]:
        metrics.request_finished(rec)  # labels admitted, children cached: the steady state
    t0 = time.process_time()
    for rec in records:
        metrics.request_finished(rec)
    json_us = (time.process_time() - t0) / n * 1e6
    t0 = time.process_time()
    for rec in records:
        metrics.stream_opened(rec)
        metrics.first_token(rec, 0.2)
        metrics.request_finished(rec)
    stream_us = (time.process_time() - t0) / n * 1e6
    return {"metrics_json_us": json_us, "metrics_stream_us": stream_us}


WRITER = """
import sys
from app.services.metrics import Metrics
from app.records import RequestRecord
from app.settings import Settings
settings = Settings.from_env({"TOKEN_REPORT_INTERVAL": "0", "METRICS_MAX_DOMAINS": "1000", "METRICS_MAX_MODELS": "1000"})
m = Metrics(settings)
for d in range(100):
    for k in range(10):
        for status in (200, 500):
            rec = RequestRecord(request_id="r", timestamp=0.0, domain="d%03d.example.com" % d, mode="translation",
                                model_used="model-%d" % k, status=status, input_tokens=10, output_tokens=5,
                                cache_read_input_tokens=3, cache_creation_input_tokens=2, duration_ms=1500.0,
                                stream=True)
            m.stream_opened(rec)
            m.first_token(rec, 0.3)
            m.request_finished(rec)
"""


def scrape_cost(tmp: str, repeats: int) -> dict:
    from app.services.metrics import Metrics, warm_directory
    from app.settings import Settings

    directory = os.path.join(tmp, "metrics")
    os.makedirs(directory)
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=directory)
    for _worker in range(2):
        subprocess.run([sys.executable, "-c", WRITER], env=env, check=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    metrics = Metrics(Settings.from_env({"TOKEN_REPORT_INTERVAL": "0"}))
    c0, t0 = time.process_time(), time.perf_counter()
    text = metrics.render()
    cold_cpu, cold = time.process_time() - c0, time.perf_counter() - t0
    c0 = time.process_time()
    warm_directory(directory)  # what each worker's sampler does every few seconds
    learn_cpu = time.process_time() - c0
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        metrics.render()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    walls.sort()
    cpus.sort()
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    return {"scrape_cold_ms": cold * 1000, "scrape_cold_cpu_ms": cold_cpu * 1000,
            "scrape_wall_ms": walls[len(walls) // 2] * 1000, "scrape_cpu_ms": cpus[len(cpus) // 2] * 1000,
            "warm_check_cpu_ms": learn_cpu * 1000, "scrape_series": series, "scrape_bytes": len(text)}


def measure(n: int = 20000, repeats: int = 20) -> dict:
    tmp = tempfile.mkdtemp(prefix="nexus-hotpath-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(tmp, "own")
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        out = {"requests": n}
        out.update(journal_cost(n, tmp))
        out.update(metrics_cost(n))
        out.update(scrape_cost(tmp, repeats))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_in_subprocess(smoke: bool = False) -> dict:
    """What bench.run calls: a fresh process, so the metrics directory and instruments are its own."""
    args = [sys.executable, "-m", "bench.hotpath", "--json"] + (["--smoke"] if smoke else [])
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def render_table(r: dict) -> tuple[str, list[str]]:
    rows = [
        ("usage journal (begun line + record line, segment sealed per 100)", "%.1f us CPU/request" % r["journal_us"]),
        ("accounting without the journal (for reference)", "%.1f us CPU/request" % r["accounting_no_journal_us"]),
        ("metrics fed by a JSON request", "%.1f us CPU/request" % r["metrics_json_us"]),
        ("metrics fed by a stream (open, first token, finish)", "%.1f us CPU/request" % r["metrics_stream_us"]),
        ("/metrics scrape, 100 domains x 10 models, 2 workers' files (%d series, %d KB)"
         % (r["scrape_series"], r["scrape_bytes"] // 1024),
         "%.1f ms (%.1f ms CPU)" % (r["scrape_wall_ms"], r["scrape_cpu_ms"])),
        ("the same, a worker's first scrape if its sampler has not learnt the series yet",
         "%.1f ms (%.1f ms CPU)" % (r["scrape_cold_ms"], r["scrape_cold_cpu_ms"])),
        ("the sampler's look for new series when there are none (every %d s, off the request path)" % 5,
         "%.1f ms CPU" % r["warm_check_cpu_ms"]),
    ]
    table = "| part | cost |\n|---|---|\n" + "\n".join("| %s | %s |" % row for row in rows)
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    targets = [
        "usage journal: %.1f us CPU per request (target <= %.0f us) %s"
        % (r["journal_us"], JOURNAL_TARGET_US, verdict(r["journal_us"] <= JOURNAL_TARGET_US)),
        "/metrics scrape of 100 domains x 10 models: %.1f ms, %.1f ms of it CPU (target < %.0f ms) %s"
        % (r["scrape_wall_ms"], r["scrape_cpu_ms"], SCRAPE_TARGET_MS,
           verdict(r["scrape_wall_ms"] < SCRAPE_TARGET_MS)),
    ]
    return table, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    result = measure(n=2000 if args.smoke else 20000, repeats=3 if args.smoke else 20)
    if args.json:
        print(json.dumps(result))
    else:
        table, targets = render_table(result)
        print(table + "\n\n" + "\n".join("- " + t for t in targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
