"""What client keys with limits cost: the key check and the limiter, with Redis on loopback and without.

    python -m bench.limits            # ~1-2 minutes; writes bench/limits-results.md
    python -m bench.limits --smoke    # a few seconds

Two measurements:

1. **The check itself**, in one gevent-patched process (as a worker runs it): `identify` + `admit` + `finish`
   for a key with rpm, tpm, concurrency and a budget, against Redis on 127.0.0.1:6379 and against the host's
   SQLite state file, with the key's windows full (a bucket in each second of the last minute, as for a key
   in steady use). CPU is `time.process_time()` per request, all three steps (this process only; Redis's own
   CPU is reported beside it from `INFO cpu`). Latency is the wall time of `identify` + `admit`, what a request
   waits for before it goes upstream (`finish` runs after the answer's last byte).
2. **End to end**, side by side: the same proxy (gunicorn, one gevent worker, translation mode, the fake
   upstream) four times: with a static `PROXY_API_KEYS` key (access control on, no limits: the baseline),
   a second copy of that baseline (the A/A control: what the same code "adds" is this machine's noise), with
   a limited client key and `REDIS_URL`, and with a limited client key on the local state file. Each is
   warmed up alike, then all are measured in many short rounds of the same number of requests, the order
   rotated every round, so a burst of other work on the machine falls on every variant alike. The proxy's
   CPU (its process tree, from the scheduler's nanosecond counts) and the p50 latency of each round are
   compared with the baseline's in the same round; "added" is the median of those paired differences.

Targets: at most 0.2 ms of CPU and at most 0.5 ms of latency added per request, with Redis on loopback.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from bench import procstat
from bench.run import FAST, SMOKE, Bench, Case, Driver, Side, machine_info, pct, proxy_env
from tests.fakes.server import REPO_ROOT, FakeUpstream, ProxyServer

REDIS_URL = os.environ.get("NEXUS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
STATIC_KEY = "nexus-bench-static-key-0123456789abcdef"
LIMITS = {"rpm": 10**9, "tpm": 10**12, "concurrency": 10**6}  # on, and never reached
CPU_TARGET_MS = 0.2
LATENCY_TARGET_MS = 0.5


def _redis_cpu() -> float | None:
    try:
        import redis

        info = redis.Redis.from_url(REDIS_URL).info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except Exception:
        return None


def redis_round_trip(n: int) -> dict:
    """One bare PING from this process: the floor of any Redis step, and how loaded the machine is now."""
    import gevent
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for _ in range(100):
        client.ping()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        client.ping()
        gevent.sleep(0)
    return {"backend": "Redis PING alone (reference)", "n": n, "cpu_ms": (time.process_time() - cpu0) / n * 1000,
            "wall_ms": (time.perf_counter() - wall0) / n * 1000}


def micro(backend: str, n: int, tmp: Path) -> dict:
    """CPU and wall time per request of the check and the limiter, in this process."""
    from app.keys.service import ClientKeys
    from app.records import RequestRecord
    from app.storage.sqlite import SqliteStorage
    from app.settings import Settings

    env = {"USAGE_DB_PATH": str(tmp / f"micro-{backend}.sqlite3"),
           "RATE_LIMIT_STATE_PATH": str(tmp / f"micro-{backend}-limits.sqlite3")}
    if backend == "redis":
        env.update(REDIS_URL=REDIS_URL, REDIS_KEY_PREFIX=f"nexus-bench-{secrets.token_hex(4)}:")
    settings = Settings.from_env(env)
    keys = ClientKeys(settings, SqliteStorage(settings.usage_db_path))
    key, record = keys.store.create("bench", budget_usd=10**9, budget_period="month", **LIMITS)
    keys.reload()
    _fill_windows(keys.state, record.id)

    waited = [0.0]

    def one() -> None:
        rec = RequestRecord("req", time.time(), "localhost", "translation", input_tokens=20, output_tokens=10)
        t0 = time.perf_counter()
        client = keys.identify(key, "localhost")
        keys.admit(client, rec, "claude-sonnet-4-5")
        waited[0] += time.perf_counter() - t0  # what the client waits for; finish runs after its last byte
        keys.finish(rec)
        gevent.sleep(0)  # a worker serves other greenlets between requests

    import gevent

    for _ in range(200):
        one()
    redis0 = _redis_cpu() if backend == "redis" else None
    waited[0] = 0.0
    cpu0 = time.process_time()
    for _ in range(n):
        one()
    gevent.sleep(0.05)  # the last finished steps go out
    cpu = time.process_time() - cpu0
    out = {"backend": backend, "n": n, "cpu_ms": cpu / n * 1000, "wall_ms": waited[0] / n * 1000}
    if redis0 is not None:
        redis1 = _redis_cpu()
        out["redis_cpu_ms"] = (redis1 - redis0) / n * 1000 if redis1 is not None else None
    keys.state.close()
    return out


def _fill_windows(state, key_id: str) -> None:
    """A request and its tokens in each second of the last minute: a key in steady use has full windows, and each
    step reads every bucket (a short run alone would see one or two)."""
    from app.keys.limits import Limits

    now = time.time()
    if state.backend == "redis":
        r_key, t_key, _ = state._keys(key_id)
        sec = int(state.client.time()[0])
        state.client.hset(r_key, mapping={s: 1 for s in range(sec - 59, sec + 1)})
        state.client.hset(t_key, mapping={s: 30 for s in range(sec - 59, sec + 1)})
        for k in (r_key, t_key):
            state.client.expire(k, 65)
        return
    lim = Limits(**LIMITS)
    for i in range(60):
        state.admit(key_id, lim, now - 59 + i, None)
        state.finish(key_id, None, 30, now - 59 + i, True)


@dataclasses.dataclass
class Variant:
    name: str
    env: dict
    key: str | None = None
    proxy: ProxyServer | None = None
    side: Side = dataclasses.field(default_factory=Side)
    rounds: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (CPU s / request, p50 s)
    redis_cpu: float = 0.0  # Redis server CPU seconds during this variant's rounds

    @property
    def redis(self) -> bool:
        return "REDIS_URL" in self.env


BASELINE, CONTROL = "static key (baseline)", "static key again (A/A control)"


def _measure(driver: Driver, job: dict, v: Variant) -> None:
    pids = procstat.tree(v.proxy.pid)
    redis0 = _redis_cpu() if v.redis else None
    cpu0 = procstat.tree_run_seconds(pids)
    result = driver.run(job)
    cpu = procstat.tree_run_seconds(pids) - cpu0
    if redis0 is not None:
        redis1 = _redis_cpu()
        v.redis_cpu += (redis1 - redis0) if redis1 is not None else 0.0
    v.side.add(result, job["requests"])
    v.side.cpu += cpu
    v.rounds.append((cpu / max(1, result["n"]), pct(result["lat"], 50) or 0.0))


def end_to_end(cases: list[Case], rounds: int, tmp: Path, log) -> list[tuple[Case, list[Variant]]]:
    args = argparse.Namespace(smoke=False, rounds=rounds)
    bench = Bench(args, log)
    fake = FakeUpstream().start()
    driver = Driver()
    results = []
    try:
        for case in cases:
            base = proxy_env("translation", fake.url + case.group.prefix, None)
            base.update(PROXY_API_KEYS=STATIC_KEY, LOG_LEVEL="WARNING")
            variants = [
                Variant(BASELINE, dict(base)),
                Variant(CONTROL, dict(base)),
                Variant("client key + limits, Redis", dict(base, REDIS_URL=REDIS_URL,
                                                           REDIS_KEY_PREFIX=f"nexus-bench-{secrets.token_hex(4)}:")),
                Variant("client key + limits, local file", dict(base)),
            ]
            for v in variants:
                v.proxy = ProxyServer(v.env, workers=1)
                if v.name.startswith("client"):
                    v.key = _create_key(v.proxy)
                v.proxy.start()
            try:
                warm = max(20, case.requests // 5)
                for v in variants:  # the same warm-up for each: connections, caches, the key's windows
                    driver.run(_job(bench, v, case, warm))
                per_round = max(1, case.requests // rounds)
                for r in range(rounds):
                    # rotated, and reversed every other round: each variant runs in each place, after each other
                    k = r % len(variants)
                    order = variants[k:] + variants[:k]
                    for v in (order if r % 2 == 0 else order[::-1]):
                        _measure(driver, _job(bench, v, case, per_round), v)
            finally:
                for v in variants:
                    v.proxy.stop()
            results.append((case, variants))
            log("  %s: %s" % (case.name, ", ".join("%s p50 %.3f ms" % (v.name, (pct(v.side.lat, 50) or 0) * 1000)
                                                   for v in variants)))
    finally:
        driver.close()
        fake.stop()
    return results


def added(v: Variant, base: Variant) -> tuple[float, float]:
    """Median over rounds of (this variant - the baseline in the same round): CPU per request and p50, ms."""
    import statistics

    cpu = statistics.median(a[0] - b[0] for a, b in zip(v.rounds, base.rounds)) * 1000
    p50 = statistics.median(a[1] - b[1] for a, b in zip(v.rounds, base.rounds)) * 1000
    return cpu, p50


def _create_key(proxy: ProxyServer) -> str:
    from app.keys.store import KeyStore
    from app.storage.sqlite import SqliteStorage

    storage = SqliteStorage(proxy.env["USAGE_DB_PATH"])
    storage.migrate()
    key, _ = KeyStore(storage).create("bench", budget_usd=10**9, budget_period="month", **LIMITS)
    storage.close()
    return key


def _job(bench: Bench, v: Variant, case: Case, n: int) -> dict:
    headers = {"accept": "application/json", "anthropic-version": "2023-06-01", "content-type": "application/json",
               "x-api-key": v.key or STATIC_KEY}
    return bench._job(v.proxy.port, "/v1/messages", headers, "anthropic", case, n)


def render(micros: list[dict], e2e, loads: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> tuple[str, bool]:
    ok = True
    start, end = loads or (os.getloadavg(), os.getloadavg())
    lines = ["# Client keys with limits: what they cost", "", machine_info(),
             "", "Load average (1, 5, 15 min) at the start: %.2f, %.2f, %.2f; at the end: %.2f, %.2f, %.2f (on 2 "
                 "cores other work shares the CPU, and latency follows it)." % (*start[:3], *end[:3]),
             "",
             "## The check itself (identify + admit + finish; rpm, tpm, concurrency and a budget on; windows full)", "",
             "| backend | requests | proxy CPU / request | latency added / request (identify + admit) | Redis server CPU / request |",
             "|---|---|---|---|---|"]
    verdicts = []
    for m in micros:
        redis_cpu = m.get("redis_cpu_ms")
        lines.append("| %s | %d | %.3f ms | %.3f ms | %s |" % (
            m["backend"], m["n"], m["cpu_ms"], m["wall_ms"], "%.3f ms" % redis_cpu if redis_cpu is not None else "-"))
        if m["backend"] == "redis":
            cpu_ok, lat_ok = m["cpu_ms"] <= CPU_TARGET_MS, m["wall_ms"] <= LATENCY_TARGET_MS
            ok = ok and cpu_ok and lat_ok
            verdicts.append("Targets with Redis on loopback: CPU %.3f ms <= %.1f ms: **%s**; latency %.3f ms <= %.1f ms:"
                            " **%s**" % (m["cpu_ms"], CPU_TARGET_MS, "pass" if cpu_ok else "FAIL", m["wall_ms"],
                                         LATENCY_TARGET_MS, "pass" if lat_ok else "FAIL"))
    lines += ["", *verdicts, ""]
    if e2e:
        rounds = len(e2e[0][1][0].rounds)
        lines += ["## End to end (one gevent worker, translation, side by side with a static key)", "",
                  "%d rounds per case, each variant the same number of requests per round, the order rotated every "
                  "round. \"Added\" is the median over the rounds of the variant's figure minus the baseline's in "
                  "the same round; the A/A control is a second copy of the baseline, so its \"added\" is what this "
                  "machine's noise alone makes of no difference." % rounds, "",
                  "| case | variant | ok | err | proxy CPU / request | added CPU | p50 latency | added p50 "
                  "| Redis server CPU / request |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for case, variants in e2e:
            base = variants[0]
            for v in variants:
                s = v.side
                cpu = s.cpu / max(1, s.n) * 1000
                p50 = (pct(s.lat, 50) or 0) * 1000
                add_cpu, add_p50 = added(v, base)
                lines.append("| %s | %s | %d | %d | %.3f ms | %s | %.3f ms | %s | %s |" % (
                    case.name, v.name, s.n, s.errors, cpu, "-" if v is base else "%+.3f ms" % add_cpu,
                    p50, "-" if v is base else "%+.3f ms" % add_p50,
                    "%.3f ms" % (v.redis_cpu / max(1, s.n) * 1000) if v.redis else "-"))
                ok = ok and s.errors == 0
        lines += ["", "End to end the same steps cost more than in the tight in-process loop above: the worker sleeps "
                      "on the Redis round trip and wakes on a core that Redis, the driver and the fake upstream have "
                      "just used, so the steps and the rest of that request run with colder caches; and Redis's own "
                      "CPU shares the machine's 2 cores. The differences also carry what the A/A control shows of "
                      "this machine's noise."]
    return "\n".join(lines) + "\n", ok


def main(argv: list[str] | None = None) -> int:
    from gevent import monkey

    monkey.patch_all()  # measure as a gunicorn gevent worker runs: sockets cooperative
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None, help="markdown file (default bench/limits-results.md; none in --smoke)")
    parser.add_argument("--no-e2e", action="store_true", help="only the in-process measurement")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="nexus-bench-limits-"))
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    n = 300 if args.smoke else 5000
    load_start = os.getloadavg()
    micros = [micro("redis", n, tmp), micro("local", n, tmp), redis_round_trip(n)]
    for m in micros:
        log("  check, %s: CPU %.3f ms, latency %.3f ms per request" % (m["backend"], m["cpu_ms"], m["wall_ms"]))
    e2e = []
    if not args.no_e2e:
        cases = [Case("json 2KB c=1", "small", False, 1, 60 if args.smoke else 1500, SMOKE if args.smoke else FAST),
                 Case("stream 2KB c=1", "small", True, 1, 20 if args.smoke else 600, SMOKE if args.smoke else FAST)]
        e2e = end_to_end(cases, 2 if args.smoke else 20, tmp, log)
    text, ok = render(micros, e2e, (load_start, os.getloadavg()))
    print(text)
    out = args.out or (None if args.smoke else str(REPO_ROOT / "bench" / "limits-results.md"))
    if out:
        Path(out).write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
