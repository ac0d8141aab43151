"""Benchmark case: every dashboard page and JSON endpoint with 100,000 request rows in the store.

    python -m bench.dashboard                      # SQLite (a temporary file)
    python -m bench.dashboard --database-url postgresql://postgres@127.0.0.1:5432/test   # a fresh database
    python -m bench.dashboard --out bench/dashboard-results.md

Rows are spread over 30 days, 8 domains and 6 models, 5 % errors, with costs (and some unpriced). The app is
the real one (`create_app`, the Jinja templates, the storage) called in-process through werkzeug's test
client, so the figures are server time: query + render, without the network. Each URL is asked `--runs`
times after one warm-up; the target is a median of at most 150 ms, and the slowest run is shown beside it.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

TARGET_MS = 150.0

DOMAINS = [f"team-{c}.example.com" for c in "abcdefg"] + ["localhost"]
MODELS = [("claude-sonnet-4-5", "claude-sonnet-4-5"), ("claude-opus-4-5", "claude-opus-4-5"),
          ("claude-haiku-4-5", "claude-haiku-4-5"), ("claude-sonnet-4-5", "openai/gpt-4.1"),
          ("claude-haiku-4-5", "openai/gpt-4.1-mini"), ("claude-opus-4-1", "some/unpriced-model")]
ERRORS = ["rate_limit_error", "overloaded_error", "api_error", "client_disconnected", "invalid_request_error"]


def fill(storage, rows: int, now: float, seed: int = 7) -> None:
    from app.records import RequestRecord

    rnd = random.Random(seed)
    span = 30 * 86400
    batch: list = []
    for i in range(rows):
        asked, used = MODELS[rnd.randrange(len(MODELS))]
        failed = rnd.random() < 0.05
        inp, out = rnd.randint(100, 50_000), rnd.randint(10, 4000)
        batch.append(RequestRecord(
            request_id=f"req_{i:07d}", timestamp=now - span + span * i / rows, domain=rnd.choice(DOMAINS),
            mode="translation" if "/" in used else "passthrough", model_requested=asked, model_used=used,
            stream=rnd.random() < 0.7, input_tokens=inp, output_tokens=0 if failed else out,
            cache_creation_input_tokens=rnd.choice((0, 0, 2000)), cache_read_input_tokens=rnd.choice((0, 8000)),
            status=rnd.choice((429, 529, 500, 200, 400)) if failed else 200,
            error_type=rnd.choice(ERRORS) if failed else None, duration_ms=rnd.uniform(200, 30_000),
            cost_usd=None if "unpriced" in used else (inp * 3 + out * 15) / 1e6))
        if len(batch) == 1000:
            storage.write_batch(batch)
            batch = []
    if batch:
        storage.write_batch(batch)


def measure(client, url: str, runs: int) -> tuple[int, float, float]:
    client.get(url)  # warm-up (templates compiled, statements prepared)
    times = []
    status = 0
    for _ in range(runs):
        start = time.perf_counter()
        resp = client.get(url)
        resp.get_data()
        times.append((time.perf_counter() - start) * 1000)
        status = resp.status_code
    return status, statistics.median(times), max(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Dashboard pages and JSON endpoints with many request rows.")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--database-url", default=None, help="PostgreSQL server: a fresh database is made there")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)

    from gevent import monkey  # psycopg must pick its cooperative wait function, as in the server

    monkey.patch_all()
    from app import create_app
    from bench.run import FreshDatabase
    from config.settings import Settings

    key = "bench-dashboard-key-0123456789"
    tmp = tempfile.mkdtemp(prefix="nexus-dash-bench-")
    database = FreshDatabase(args.database_url) if args.database_url else None
    env = {"DASHBOARD_API_KEY": key, "TOKEN_REPORT_INTERVAL": "0", "USAGE_RETENTION_ROWS": str(args.rows),
           "USAGE_DB_PATH": os.path.join(tmp, "usage.sqlite3")}
    if database:
        env["DATABASE_URL"] = database.url
    try:
        app = create_app(Settings.from_env(env), start_background=False)
        services = app.extensions["nexus"]
        now = time.time()
        started = time.perf_counter()
        fill(services.storage, args.rows, now)
        fill_s = time.perf_counter() - started
        rows = services.storage.row_count()
        client = app.test_client()
        assert client.get(f"/dashboard?token={key}").status_code == 303
        old = services.storage.request_page(limit=1, until=now - 25 * 86400)[0]
        cursor = f"{old['ts']!r}_{old['id']}"
        urls = [
            "/dashboard?range=1h", "/dashboard?range=24h", "/dashboard?range=7d", "/dashboard?range=30d",
            "/dashboard?from=" + time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 45 * 86400)),  # a custom range
            "/dashboard/requests", "/dashboard/requests?domain=team-c.example.com",
            "/dashboard/requests?model=openai/gpt-4.1", "/dashboard/requests?status_class=error",
            "/dashboard/requests?error_type=invalid_request_error&domain=localhost",
            f"/dashboard/requests?before={cursor}",
            f"/dashboard/requests/{old['id']}", "/dashboard/credentials",
            "/dashboard/api/overview?range=24h", "/dashboard/api/overview?range=30d",
            "/dashboard/api/requests", "/dashboard/api/requests?status_class=5xx&limit=200",
            f"/dashboard/api/requests/{old['id']}", "/dashboard/api/credentials",
            "/token-stats",
        ]
        results = [(url, *measure(client, url, args.runs)) for url in urls]
        services.stop()
    finally:
        if database:
            database.drop()
    backend = "PostgreSQL" if database else "SQLite"
    worst = max(r[2] for r in results)
    lines = [
        f"### Dashboard with {rows:,} request rows ({backend})",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; rows written in {fill_s:.1f} s; "
        f"median of {args.runs} runs after a warm-up, in-process (query + render, no network)",
        "",
        "| URL | status | median ms | max ms |",
        "|---|---|---|---|",
        *[f"| `{url}` | {status} | {median:.1f} | {mx:.1f} |" for url, status, median, mx in results],
        "",
        f"Target: every page and JSON endpoint <= {TARGET_MS:.0f} ms: worst median {worst:.1f} ms "
        f"{'PASS' if worst <= TARGET_MS and all(r[1] == 200 for r in results) else 'FAIL'}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(text + "\n\n")
    return 0 if worst <= TARGET_MS and all(r[1] == 200 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
