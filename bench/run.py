"""Benchmark: what the proxy adds over calling the upstream directly, side by side in one run.

    python -m bench.run                       # full run (~4 min on 2 cores), writes bench/results.md
    python -m bench.run --smoke               # a few seconds, tiny counts; exit 1 if any request failed
    python -m bench.run --database-url postgresql://postgres@127.0.0.1:5432/test   # accounting in PostgreSQL

For every case it alternates batches sent straight to the fake upstream ("direct") and through the proxy
("proxy"), so machine drift hits both. The proxy runs as users run it: `python -m gunicorn -c
config/gunicorn.conf.py wsgi:app`, gevent workers, DEBUG off, accounting on. See bench/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable

from bench import payloads, procstat
from tests.fakes.server import REPO_ROOT, FakeUpstream, ProxyServer

CLIENT_HEADERS = {  # what Claude Code 2.1 sends (fixtures/claude-code-2.1.197/headers.json), minus compression
    "accept": "application/json",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27",
    "user-agent": "claude-cli/2.1.197 (external, sdk-cli)",
    "x-app": "cli",
    "x-api-key": "sk-ant-api03-bench-client",
    "accept-encoding": "identity",
}
OPENAI_HEADERS = {"accept": "application/json", "authorization": "Bearer test-key"}
# In the responses mode this model goes to Chat Completions through the same proxy (MODEL_MAP), measured in
# the same rounds, so the two paths are compared under the same load.
CHAT_BESIDE_MODEL = "bench-chat-beside"
CHAT_BESIDE = "chat beside responses"
BESIDE_DIRECT, BESIDE_PROXY = "chat-direct", "chat-proxy"  # sides of the responses mode's Chat rows
# The cases the Responses path is compared on (latency and CPU, `_responses_vs_chat`): only these get the
# Chat rows beside them; the paced ones would repeat the translation mode's Chat rows at length.
LATENCY_VS_CHAT = ("json 2KB c=1", "json 200KB c=1", "stream 2KB c=1", "stream 200KB c=1")
CPU_VS_CHAT = ("json 2KB c=32", "stream 2KB c=32", "json 200KB c=1", "stream 200KB c=1")
COMPARED_WITH_CHAT = frozenset(LATENCY_VS_CHAT + CPU_VS_CHAT)
ANTHROPIC_HEADERS = {"accept": "application/json", "anthropic-version": "2023-06-01",
                     "x-api-key": "sk-ant-api03-bench"}


@dataclasses.dataclass(frozen=True)
class Group:
    """One proxy instance: its upstream base URL carries the fake's answer shape."""
    name: str
    chunks: int
    first_byte_ms: int
    gap_ms: int

    @property
    def prefix(self) -> str:
        return "/bench/%d/%d/%d" % (self.chunks, self.first_byte_ms, self.gap_ms)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    size: str  # "small" (~2 KB) or "large" (~200 KB)
    stream: bool
    concurrency: int
    requests: int  # per side, over all rounds
    group: Group
    rss_per_stream: bool = False  # one round on a fresh proxy; report extra RSS per open stream


FAST = Group("fast", 10, 0, 0)
# Paced so that each chunk arrives alone, as tokens do: the difference between the two is the CPU one
# relayed chunk costs, with the per-request costs taken out.
CHUNKS_FEW = Group("10 paced", 10, 0, 10)
CHUNKS_MANY = Group("100 paced", 100, 0, 10)
# 20 gaps per stream: the gap error is a per-gap figure, so shorter streams (1 s) lose nothing but time.
PACED = Group("paced", 20, 0, 50)
TENPS = Group("10/s", 30, 0, 100)  # 1,000 streams at 10 chunks/s each
SMOKE = Group("smoke", 5, 0, 10)

FULL_CASES = [
    Case("json 2KB c=1", "small", False, 1, 600, FAST),
    Case("json 2KB c=32", "small", False, 32, 3200, FAST),
    Case("json 200KB c=1", "large", False, 1, 600, FAST),
    Case("stream 2KB c=1", "small", True, 1, 300, FAST),
    Case("stream 2KB c=32", "small", True, 32, 1600, FAST),
    Case("stream 200KB c=1", "large", True, 1, 450, FAST),
    Case("stream 2KB c=32, 10 chunks 10ms apart", "small", True, 32, 320, CHUNKS_FEW),
    Case("stream 2KB c=32, 100 chunks 10ms apart", "small", True, 32, 128, CHUNKS_MANY),
    Case("stream 2KB c=1000, 100ms gaps", "small", True, 1000, 1000, TENPS, rss_per_stream=True),
    Case("stream 2KB c=1, 50ms gaps", "small", True, 1, 4, PACED),
    Case("stream 2KB c=32, 50ms gaps", "small", True, 32, 96, PACED),
]
SMOKE_CASES = [
    Case("json 2KB c=1", "small", False, 1, 20, SMOKE),
    Case("json 2KB c=8", "small", False, 8, 64, SMOKE),
    Case("json 200KB c=1", "large", False, 1, 6, SMOKE),
    Case("stream 2KB c=1, 10ms gaps", "small", True, 1, 4, SMOKE),
    Case("stream 200KB c=1, 10ms gaps", "large", True, 1, 2, SMOKE),
    Case("stream 2KB c=50, 10ms gaps", "small", True, 50, 50, SMOKE, rss_per_stream=True),
]


# --------------------------------------------------------------------------------------------------
# The driver process


class Driver:
    """A `python -m bench.driver` subprocess that runs jobs sent as JSON lines."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                          os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.driver"], cwd=str(REPO_ROOT), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError("bench driver did not start: %r" % line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def run(self, job: dict) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("bench driver exited")
        result = json.loads(line)
        if "fatal" in result:
            raise RuntimeError("bench driver failed: %s" % result["fatal"])
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------------------------------------
# Statistics and formatting


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _ms(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "-"
    ms = v * 1000.0
    return ("%.*f" % (digits if abs(ms) < 100 else 0, ms))


def _signed_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return "%+.2f" % (v * 1000.0)


@dataclasses.dataclass
class Side:
    """Measurements of one side (direct or proxy) of one case, merged over rounds."""
    n: int = 0
    errors: int = 0
    error_samples: list[str] = dataclasses.field(default_factory=list)
    wall: float = 0.0
    lat: list[float] = dataclasses.field(default_factory=list)
    ttfb: list[float] = dataclasses.field(default_factory=list)
    gaps: list[float] = dataclasses.field(default_factory=list)
    cpu: float = 0.0  # of the measured server (proxy tree, or the fake on the direct side)
    driver_cpu: float = 0.0
    sent: int = 0
    rss_peak_kb: int = 0
    rss_base_kb: int = 0
    hwm_kb: int = 0

    def add(self, result: dict, sent: int) -> None:
        self.n += result["n"]
        self.errors += result["errors"]
        self.error_samples += result["error_samples"][: max(0, 5 - len(self.error_samples))]
        self.wall += result["wall"]
        self.lat += result["lat"]
        self.ttfb += result["ttfb"]
        self.gaps += result["gaps"]
        self.sent += sent


@dataclasses.dataclass
class Row:
    mode: str
    case: Case
    side: str
    data: Side


def _row_cells(row: Row, direct: Row | None, bare: Row | None) -> list[str]:
    d, case = row.data, row.case
    rps = d.n / d.wall if d.wall else 0.0
    gap = "-"
    if case.stream and case.group.gap_ms and d.gaps:
        target = case.group.gap_ms / 1000.0
        errs = [abs(g - target) for g in d.gaps]
        gap = "%s / %s" % (_ms(pct(errs, 50)), _ms(pct(errs, 99)))
    cpu = "%.3f" % (d.cpu * 1000.0 / d.sent) if d.sent else "-"
    rss = "%.0f" % (d.hwm_kb / 1024.0) if d.hwm_kb else "-"
    if case.rss_per_stream and d.rss_peak_kb:
        rss += " (+%.0f KB/stream)" % ((d.rss_peak_kb - d.rss_base_kb) / max(1, case.concurrency))
    added = added_ttfb = ratio = "-"
    if row.side != "direct" and direct is not None and direct.data.lat and d.lat:
        added = _signed_ms(added_latency(d, direct.data))
        if case.stream:
            added_ttfb = _signed_ms(pct(d.ttfb, 50) - pct(direct.data.ttfb, 50))  # type: ignore[operator]
    if row.side == "proxy" and bare is not None and direct is not None:
        ratio = "%s / %s" % (_ratio(added_latency(d, direct.data), added_latency(bare.data, direct.data)),
                             _ratio(cpu_per_request(d), cpu_per_request(bare.data)))
    return [row.mode, case.name, row.side, str(d.n), str(d.errors), "%.0f" % rps,
            _ms(pct(d.lat, 50)), _ms(pct(d.lat, 90)), _ms(pct(d.lat, 99)),
            _ms(pct(d.ttfb, 50)) if case.stream else "-", _ms(pct(d.ttfb, 99)) if case.stream else "-",
            gap, cpu, rss, added, added_ttfb, ratio]


def added_latency(side: Side, direct: Side) -> float | None:
    if not side.lat or not direct.lat:
        return None
    return pct(side.lat, 50) - pct(direct.lat, 50)  # type: ignore[operator]


def cpu_per_request(side: Side) -> float | None:
    return side.cpu / side.sent if side.sent else None


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    return "%.2fx" % (a / b)


HEADER = ["mode", "case", "side", "ok", "err", "req/s", "p50 ms", "p90 ms", "p99 ms", "TTFB p50", "TTFB p99",
          "gap err p50 / p99 ms", "CPU ms/req", "peak RSS MB", "added p50 ms", "added TTFB ms",
          "vs bare: added / CPU"]


def render_table(rows: list[Row]) -> str:
    index = {(r.mode, r.case.name, r.side): r for r in rows}
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for r in rows:
        direct = index.get((r.mode, r.case.name, "direct"))
        bare = index.get((r.mode, r.case.name, "bare"))
        lines.append("| " + " | ".join(_row_cells(r, direct, bare)) + " |")
    return "\n".join(lines)


def check_targets(rows: list[Row]) -> list[str]:
    """The issue's targets, judged on this run's medians."""
    index = {(r.mode, r.case.name, r.side): r.data for r in rows}
    out: list[str] = []

    def both(mode: str, name: str) -> tuple[Side, Side] | None:
        d, p = index.get((mode, name, "direct")), index.get((mode, name, "proxy"))
        return (d, p) if d and p and d.lat and p.lat else None

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    def three(mode: str, name: str) -> tuple[Side, Side, Side] | None:
        sides = tuple(index.get((mode, name, side)) for side in ("direct", "bare", "proxy"))
        return sides if all(x and x.lat and x.sent for x in sides) else None  # type: ignore[return-value]

    for mode in sorted({r.mode for r in rows} - {CHAT_BESIDE}):
        pair = both(mode, "json 2KB c=1")
        if pair:
            added = pct(pair[1].lat, 50) - pct(pair[0].lat, 50)  # type: ignore[operator]
            out.append("%s: added latency, JSON 2KB c=1: %.2f ms (target <= 2 ms) %s"
                       % (mode, added * 1000, verdict(added <= 0.002)))
        pair = both(mode, "stream 2KB c=1")
        if pair:
            added = pct(pair[1].ttfb, 50) - pct(pair[0].ttfb, 50)  # type: ignore[operator]
            out.append("%s: added TTFB, stream 2KB c=1: %.2f ms (target <= 2 ms) %s"
                       % (mode, added * 1000, verdict(added <= 0.002)))
        pair = both(mode, "stream 2KB c=1, 50ms gaps")
        if pair and pair[1].gaps:
            errs = [abs(g - 0.05) for g in pair[1].gaps]
            med = pct(errs, 50) or 0.0
            out.append("%s: chunk gaps seen through the proxy vs upstream's 50 ms: median error %.2f ms, "
                       "p99 %.2f ms (target within 1 ms) %s"
                       % (mode, med * 1000, (pct(errs, 99) or 0) * 1000, verdict(med <= 0.001)))
        p = index.get((mode, "json 2KB c=32", "proxy"))
        if p and p.sent:
            cpu = p.cpu / p.sent
            out.append("%s: proxy CPU per small JSON request (c=32): %.3f ms (target <= 1.5 ms, i.e. %d req/s "
                       "per core) %s" % (mode, cpu * 1000, 1 / cpu if cpu else 0, verdict(cpu <= 0.0015)))
        p = index.get((mode, "stream 2KB c=1000, 100ms gaps", "proxy"))
        if p and p.sent:
            per = (p.rss_peak_kb - p.rss_base_kb) / 1000.0
            errs = [abs(g - 0.1) for g in p.gaps]
            med, p99 = (pct(errs, 50) or 0.0), (pct(errs, 99) or 0.0)
            out.append("%s: 1,000 concurrent streams at 10 chunks/s on one worker: %d errors, chunk-gap error "
                       "p50 %.2f ms / p99 %.2f ms, +%.0f KB RSS per open stream (target 0 errors, p50 <= 2 ms, "
                       "p99 <= 20 ms, <= 64 KB) %s"
                       % (mode, p.errors, med * 1000, p99 * 1000, per,
                          verdict(p.errors == 0 and med <= 0.002 and p99 <= 0.020 and per <= 64)))
        trio = three(mode, "json 200KB c=1")
        if trio:
            d, b, p = trio
            added, bare_added = added_latency(p, d), added_latency(b, d)
            cpu, bare_cpu = cpu_per_request(p), cpu_per_request(b)
            ok = added <= 1.2 * max(bare_added, 0.0) and cpu <= 1.2 * bare_cpu  # type: ignore[operator]
            out.append("%s: 200KB conversation (JSON c=1): added %.2f ms vs bare relay %.2f ms (%s), CPU "
                       "%.2f vs %.2f ms/request (%s) (target <= 1.2x both) %s"
                       % (mode, added * 1000, bare_added * 1000, _ratio(added, bare_added),
                          cpu * 1000, bare_cpu * 1000, _ratio(cpu, bare_cpu), verdict(ok)))
        short = index.get((mode, "stream 2KB c=32, 10 chunks 10ms apart", "proxy"))
        long_ = index.get((mode, "stream 2KB c=32, 100 chunks 10ms apart", "proxy"))
        if short and long_ and short.sent and long_.sent:
            per_chunk = (long_.cpu / long_.sent - short.cpu / short.sent) / (CHUNKS_MANY.chunks - CHUNKS_FEW.chunks)
            limit = 40e-6 if mode == "passthrough" else 60e-6  # the Responses API is translation too
            out.append("%s: CPU per relayed chunk (100 vs 10 chunks 10 ms apart, c=32): %.1f us (target <= %.0f us) %s"
                       % (mode, per_chunk * 1e6, limit * 1e6, verdict(per_chunk <= limit)))
        trio = three(mode, "json 2KB c=32")
        if trio and trio[1].cpu and trio[2].cpu:
            _d, b, p = trio
            ratio = (b.cpu / b.sent) / (p.cpu / p.sent)
            out.append("%s: small JSON c=32, requests per CPU-second: %.0f vs bare relay %.0f (%.2fx; target >= "
                       "1.5x) %s" % (mode, p.sent / p.cpu, b.sent / b.cpu, ratio, verdict(ratio >= 1.5)))
    out.extend(_responses_vs_chat(index))
    return out


def _responses_vs_chat(index: dict) -> list[str]:
    """The Responses path may cost no more than the Chat Completions path, measured in the same rounds through
    the same proxy: added latency and CPU per request, case by case (within 5% or 0.05 ms, the noise of one
    case on this machine)."""
    out = []
    for name in LATENCY_VS_CHAT:
        sides = [index.get((m, name, s)) for m in (CHAT_BESIDE, "responses") for s in ("direct", "proxy")]
        if not all(sides) or not all(x.lat for x in sides):
            continue
        chat_d, chat_p, resp_d, resp_p = sides
        chat = pct(chat_p.lat, 50) - pct(chat_d.lat, 50)  # type: ignore[operator]
        resp = pct(resp_p.lat, 50) - pct(resp_d.lat, 50)  # type: ignore[operator]
        ok = resp <= chat + max(abs(chat) * 0.05, 0.00005)
        out.append("responses vs chat: added latency, %s: %.2f ms vs %.2f ms %s"
                   % (name, resp * 1000, chat * 1000, "PASS" if ok else "FAIL"))
    for name in CPU_VS_CHAT:
        chat_p, resp_p = index.get((CHAT_BESIDE, name, "proxy")), index.get(("responses", name, "proxy"))
        if not chat_p or not resp_p or not chat_p.sent or not resp_p.sent:
            continue
        chat, resp = chat_p.cpu / chat_p.sent, resp_p.cpu / resp_p.sent
        ok = resp <= chat + max(chat * 0.05, 0.00005)
        out.append("responses vs chat: proxy CPU per request, %s: %.3f ms vs %.3f ms %s"
                   % (name, resp * 1000, chat * 1000, "PASS" if ok else "FAIL"))
    return out


def machine_info() -> str:
    model = platform.processor() or "unknown cpu"
    mem = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem = ", %.1f GiB RAM" % (int(f.readline().split()[1]) / 1024 / 1024)
    except OSError:
        pass
    return "%s, %d cores%s, Linux %s, Python %s" % (model, os.cpu_count() or 0, mem, platform.release(),
                                                   platform.python_version())


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(REPO_ROOT), capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "uncommitted"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------------------------------
# Running cases


class Bench:
    def __init__(self, args: argparse.Namespace, log: Callable[[str], None]) -> None:
        self.args = args
        self.log = log
        self.tmp = Path(tempfile.mkdtemp(prefix="nexus-bench-"))
        self.bodies: dict[tuple[str, str, bool], str] = {}
        for size in ("small", "large"):
            for stream in (False, True):
                body = payloads.small_request(stream) if size == "small" else payloads.long_conversation(stream)
                beside = dict(body, model=CHAT_BESIDE_MODEL)
                for api, data in (("anthropic", body), ("openai", payloads.to_openai(body)),
                                  ("responses", payloads.to_responses(body)), ("anthropic-chat", beside)):
                    path = self.tmp / ("%s-%s-%s.json" % (api, size, "stream" if stream else "json"))
                    path.write_bytes(payloads.encode(data))
                    self.bodies[(api, size, stream)] = str(path)
        self.rows: list[Row] = []

    def _job(self, port: int, path: str, headers: dict, api: str, case: Case, requests: int) -> dict:
        job = {"host": "127.0.0.1", "port": port, "path": path, "headers": headers,
               "body_file": self.bodies[(api, case.size, case.stream)], "concurrency": case.concurrency,
               "requests": requests, "stream": case.stream, "expect_deltas": case.group.chunks,
               "timeout": 120}
        if api == "responses":
            job["marker"] = "response.output_text.delta"  # its done events repeat the whole text
        return job

    def jobs(self, mode: str, case: Case, fake: FakeUpstream, ports: dict[str, int],
             requests: int) -> dict[str, dict]:
        """The job of each side: direct to the fake, and through each server in `ports` (bare, proxy)."""
        prefix = case.group.prefix
        if mode == "translation":
            jobs = {"direct": self._job(fake.port, prefix + "/chat/completions", OPENAI_HEADERS, "openai", case,
                                        requests)}
        elif mode == "responses":
            jobs = {"direct": self._job(fake.port, prefix + "/responses", OPENAI_HEADERS, "responses", case,
                                        requests)}
        else:
            jobs = {"direct": self._job(fake.port, prefix + "/v1/messages", ANTHROPIC_HEADERS, "anthropic", case,
                                        requests)}
        for side, port in ports.items():
            jobs[side] = self._job(port, "/v1/messages", CLIENT_HEADERS, "anthropic", case, requests)
        return jobs

    def beside_jobs(self, case: Case, fake: FakeUpstream, proxy_port: int | None, requests: int) -> tuple:
        """The Chat Completions path measured beside the responses mode: direct, and through the same proxy."""
        direct = self._job(fake.port, case.group.prefix + "/chat/completions", OPENAI_HEADERS, "openai", case,
                           requests)
        proxied = None
        if proxy_port is not None:
            proxied = self._job(proxy_port, "/v1/messages", CLIENT_HEADERS, "anthropic-chat", case, requests)
        return direct, proxied

    def measure(self, driver: Driver, job: dict, side: Side, pids: list[int], sample_rss: bool) -> None:
        cpu0 = procstat.tree_cpu(pids)
        dcpu0 = procstat.cpu_seconds(driver.pid)
        if sample_rss:
            side.rss_base_kb = procstat.rss_kb(pids)
            with procstat.RssSampler(pids) as sampler:
                result = driver.run(job)
            side.rss_peak_kb = sampler.peak
        else:
            result = driver.run(job)
        side.cpu += procstat.tree_cpu(pids) - cpu0
        side.driver_cpu += procstat.cpu_seconds(driver.pid) - dcpu0
        side.add(result, job["requests"])
        side.hwm_kb = procstat.hwm_kb(pids)

    def warm_up(self, mode: str, group: Group, cases: list[Case], fake: FakeUpstream, ports: dict[str, int],
                driver: Driver) -> None:
        seen = set()
        for case in cases:
            key = (case.size, case.stream)
            if key in seen:
                continue
            seen.add(key)
            n = 3 if case.stream or case.size == "large" else 30
            if self.args.smoke:
                n = 2
            # paced streams last a second or more: warm up with all of them at once
            warm = dataclasses.replace(case, concurrency=n if group.gap_ms else min(4, case.concurrency))
            for job in self.jobs(mode, warm, fake, ports, n).values():
                driver.run(job)

    def run_case(self, mode: str, case: Case, fake: FakeUpstream, servers: dict[str, ProxyServer],
                 driver: Driver) -> None:
        rounds = 1 if case.rss_per_stream else max(1, self.args.rounds)
        per_round = max(1, case.requests // rounds)
        ports = {name: server.port for name, server in servers.items()}
        sides = {"direct": Side(), **{name: Side() for name in servers}}
        pids = {"direct": [fake.pid], **{name: procstat.tree(server.pid) for name, server in servers.items()}}
        # the responses mode also measures the Chat path through the same proxy, in the same rounds
        beside = (mode == "responses" and "proxy" in servers and not case.rss_per_stream
                  and (case.name in COMPARED_WITH_CHAT or self.args.smoke))
        if beside:
            sides.update({BESIDE_DIRECT: Side(), BESIDE_PROXY: Side()})
            pids.update({BESIDE_DIRECT: pids["direct"], BESIDE_PROXY: pids["proxy"]})
        for r in range(rounds):
            jobs = self.jobs(mode, case, fake, ports, per_round)
            if beside:
                jobs[BESIDE_DIRECT], jobs[BESIDE_PROXY] = self.beside_jobs(case, fake, ports["proxy"], per_round)
            order = list(jobs.items())
            shift = r % len(order)  # rotate who goes first, so drift hits every side
            for name, job in order[shift:] + order[:shift]:
                if case.rss_per_stream:
                    # a side that just closed 1,000 streams is still tearing them down: not the next side's cost
                    settle([pid for side_pids in pids.values() for pid in side_pids] + [driver.pid])
                self.measure(driver, job, sides[name], pids[name], case.rss_per_stream)
        for name, side in sides.items():
            if name in (BESIDE_DIRECT, BESIDE_PROXY):
                self.rows.append(Row(CHAT_BESIDE, case, "direct" if name == BESIDE_DIRECT else "proxy", side))
            else:
                self.rows.append(Row(mode, case, name, side))
            if side.errors:
                self.log("  %s %s %s: %d errors, e.g. %s" % (mode, case.name, name, side.errors,
                                                               side.error_samples[:2]))
        self.log("  %-32s %s" % (case.name, ", ".join("%s p50 %s ms" % (name, _ms(pct(side.lat, 50)))
                                                        for name, side in sides.items())))


MARK_START = "<!-- bench-results:start -->"
MARK_END = "<!-- bench-results:end -->"


def update_marked(path: Path, text: str) -> None:
    """Put `text` (its heading demoted below the file's own) between the result markers of a markdown file."""
    content = path.read_text()
    # the markers count only on lines of their own (prose may quote them)
    start = re.search("^%s$" % re.escape(MARK_START), content, re.M)
    end = re.search("^%s$" % re.escape(MARK_END), content, re.M)
    if not start or not end or end.start() < start.end():
        raise SystemExit("%s has no %s ... %s lines" % (path, MARK_START, MARK_END))
    body = text.replace("# Benchmark results", "### Latest benchmark results", 1).replace("\n## ", "\n#### ")
    path.write_text(content[:start.end()] + "\n" + body + content[end.start():])


def settle(pids: list[int], quiet: float = 0.02, window: float = 0.1, limit: float = 5.0) -> None:
    """Wait (up to `limit` seconds) until `pids` together use under `quiet` of a core over `window` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = procstat.tree_cpu(pids)
        time.sleep(window)
        if procstat.tree_cpu(pids) - before < quiet * window:
            return


def both(servers, action: Callable[[ProxyServer], object]) -> None:
    """Run `action` (start or stop) on every server at once; the first failure is raised after all ran.
    A failed start stops the servers that did start."""
    servers = list(servers)
    errors: list[BaseException] = []

    def run(server: ProxyServer) -> None:
        try:
            action(server)
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(server,)) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        if action is ProxyServer.start:
            for server in servers:
                if server.proc is not None and server.proc.poll() is None:
                    server.stop()
        raise errors[0]


def bare_relay(mode: str, upstream: str) -> ProxyServer:
    """The bare Flask + gevent + requests relay (bench/bare_relay.py) on gunicorn, one gevent worker."""
    server = ProxyServer({"BARE_MODE": mode, "BARE_UPSTREAM": upstream})
    server.argv = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1", "--worker-connections", "4000",
                   "-b", "%s:%d" % (server.host, server.port), "--log-level", "warning", "bench.bare_relay:app"]
    return server


def proxy_env(mode: str, upstream: str, database_url: str | None) -> dict:
    env = {"PROXY_MODE": "translation" if mode == "responses" else mode, "DEBUG": "false", "LOG_LEVEL": "WARNING"}
    if mode in ("translation", "responses"):
        env.update(ANTHROPIC_PROXY_BASE_URL=upstream, CLAUDE_CODE_PROXY_API_KEY="test-key")
    else:
        env.update(CLAUDE_API_BASE_URL=upstream, CLAUDE_API_KEY="sk-ant-api03-bench")
    if mode == "responses":
        env.update(UPSTREAM_API="responses",
                   MODEL_MAP=json.dumps({CHAT_BESIDE_MODEL: {"model": "gpt-bench", "api": "chat"}}))
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


class FreshDatabase:
    """A new PostgreSQL database on the server of `url`, dropped afterwards."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.admin_url = url
        self.name = "nexus_bench_%d_%d" % (os.getpid(), int(time.time()))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute('CREATE DATABASE "%s"' % self.name)
        parts = urllib.parse.urlsplit(url)
        self.url = urllib.parse.urlunsplit(parts._replace(path="/" + self.name))

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the proxy against a fake upstream, side by side.")
    parser.add_argument("--smoke", action="store_true", help="a few seconds with tiny counts (CI)")
    parser.add_argument("--out", default=None, help="markdown file to write (default bench/results.md; "
                                                    "none in --smoke unless given)")
    parser.add_argument("--json", default=None, help="also write raw numbers as JSON here")
    parser.add_argument("--readme", action="append", default=[], metavar="FILE",
                        help="replace the text between '%s' and '%s' in FILE with the results (repeatable)"
                             % (MARK_START, MARK_END))
    parser.add_argument("--modes", default="translation,responses,passthrough",
                        help="translation (to Chat Completions), responses (translation to the Responses API), "
                             "passthrough")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this text")
    parser.add_argument("--rounds", type=int, default=3, help="alternating direct/proxy batches per case")
    parser.add_argument("--workers", type=int, default=1, help="WEB_CONCURRENCY for the proxy")
    parser.add_argument("--database-url", default=None,
                        help="run the proxy with DATABASE_URL on a fresh database created on this server")
    parser.add_argument("--direct-only", action="store_true", help="measure the fake upstream alone")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare relay side (bench/bare_relay.py)")
    parser.add_argument("--proxy-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the proxy (repeatable)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else (None if args.smoke else str(REPO_ROOT / "bench" / "results.md"))

    def log(msg: str) -> None:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    cases = SMOKE_CASES if args.smoke else FULL_CASES
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    extra_env = dict(item.split("=", 1) for item in args.proxy_env)
    bench = Bench(args, log)
    started = time.monotonic()
    machine0 = procstat.machine_cpu()
    own_cpu = 0.0  # CPU of every process this run started, to tell other load on the machine apart
    database = FreshDatabase(args.database_url) if args.database_url else None
    fake = FakeUpstream().start()
    driver = Driver()
    probes: list[float] = []
    try:
        for mode in modes:
            groups: list[tuple[Group, list[Case]]] = []
            for case in cases:
                # a case measuring RSS per stream gets a fresh proxy of its own, run first
                key = (case.group, case.rss_per_stream and not args.smoke)
                if not groups or groups[-1][0] != key:
                    groups.append((key, []))  # type: ignore[arg-type]
                groups[-1][1].append(case)
            for (group, _fresh), group_cases in groups:  # type: ignore[misc]
                log("%s: %s (upstream %s%s)" % (mode, ", ".join(c.name for c in group_cases), fake.url,
                                                group.prefix))
                group_started = time.monotonic()
                probes.append(procstat.speed_probe())
                servers: dict[str, ProxyServer] = {}
                try:
                    if not args.direct_only:
                        if not args.no_bare and mode != "responses":  # the bare relay has no Responses twin
                            servers["bare"] = bare_relay(mode, fake.url + group.prefix)
                        env = proxy_env(mode, fake.url + group.prefix, database.url if database else None)
                        env.update(extra_env)
                        servers["proxy"] = ProxyServer(env, workers=args.workers)
                        both(servers.values(), ProxyServer.start)  # side by side: neither is measured yet
                    ports = {name: server.port for name, server in servers.items()}
                    if not any(c.rss_per_stream for c in group_cases):
                        bench.warm_up(mode, group, group_cases, fake, ports, driver)
                    for case in group_cases:
                        bench.run_case(mode, case, fake, servers, driver)
                finally:
                    for server in servers.values():
                        if server.proc is not None:
                            own_cpu += procstat.tree_cpu(procstat.tree(server.pid))
                    both(servers.values(), ProxyServer.stop)
                log("  (%.0f s)" % (time.monotonic() - group_started))
    finally:
        own_cpu += procstat.cpu_seconds(driver.pid) + procstat.cpu_seconds(fake.pid)
        driver.close()
        fake.stop()
        if database is not None:
            database.drop()

    hot_table, hot_targets = "", []
    if not args.direct_only:
        from bench import hotpath

        log("hot path parts: journal, metrics, /metrics scrape (in-process)")
        hot_table, hot_targets = hotpath.render_table(hotpath.run_in_subprocess(smoke=args.smoke))

    elapsed = time.monotonic() - started
    busy, total = (b - a for a, b in zip(machine0, procstat.machine_cpu()))
    own_cpu += sum(os.times()[:2])
    other_share = max(0.0, busy - own_cpu) / total if total else 0.0
    rows = bench.rows
    table = render_table(rows)
    targets = check_targets(rows)
    total_driver_cpu = sum(r.data.driver_cpu for r in rows)
    total_sent = sum(r.data.sent for r in rows)
    direct_fast = [r for r in rows if r.side == "direct" and r.case.name.startswith("json 2KB c=") and
                   r.case.concurrency > 1]
    notes = [
        "- Direct rows call the fake upstream straight (OpenAI-compatible body in translation mode, the same "
        "Anthropic body in passthrough); their CPU and RSS columns are the fake upstream's. Proxy rows: the "
        "gunicorn master + worker(s).",
        "- Latency is to the last byte; TTFB is to the first content delta (the first token the user sees). "
        "Gap error: |gap between consecutive deltas at the client - the upstream's configured gap|.",
        "- Load driver (raw sockets, keep-alive, gevent): %.3f ms CPU per request on average."
        % (total_driver_cpu * 1000.0 / total_sent if total_sent else 0.0),
    ]
    for r in direct_fast:
        d = r.data
        notes.append("- Fake upstream alone (%s, %s): %.0f req/s at %.3f ms CPU/req, so it is not the bottleneck."
                     % (r.mode, r.case.name, d.n / d.wall if d.wall else 0, d.cpu * 1000.0 / d.sent if d.sent else 0))
    accounting = "PostgreSQL (--database-url)" if args.database_url else "SQLite (default USAGE_DB_PATH)"
    header = [
        "# Benchmark results" + (" (smoke)" if args.smoke else ""),
        "",
        "- Date: %s" % datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "- Machine: %s" % machine_info(),
        "- Revision: %s" % git_revision(),
        "- Command: `python -m bench.run %s`" % " ".join(argv if argv is not None else sys.argv[1:]),
        "- Proxy: `python -m gunicorn -c config/gunicorn.conf.py wsgi:app`, WEB_CONCURRENCY=%d, DEBUG off, "
        "accounting %s" % (args.workers, accounting),
        "- CPU speed probe (a fixed pure-Python loop, run before each group of cases; lower is faster): %s"
        % ("%.0f-%.0f ms, median %.0f" % (min(probes) * 1e3, max(probes) * 1e3, statistics.median(probes) * 1e3)
           if probes else "-"),
        "- Run time: %.0f s; other processes used %.0f%% of the machine's CPU meanwhile%s"
        % (elapsed, 100 * other_share, " (numbers are noisy: rerun on a quiet machine)" if other_share > 0.1 else ""),
        "",
    ]
    targets += hot_targets
    text = "\n".join(header) + "\n" + table + "\n\n" + \
        ("## Hot path parts (CPU per request, measured in one process)\n\n" + hot_table + "\n\n" if hot_table else "") + \
        "## Targets\n\n" + "\n".join("- " + t for t in targets) + \
        "\n\n## Notes\n\n" + "\n".join(notes) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)
        log("written to %s" % out)
    for readme in args.readme:
        update_marked(Path(readme), text)
        log("updated %s" % readme)
    if args.json:
        Path(args.json).write_text(json.dumps([{
            "mode": r.mode, "case": r.case.name, "side": r.side, "n": r.data.n, "errors": r.data.errors,
            "error_samples": r.data.error_samples, "wall": r.data.wall, "cpu": r.data.cpu, "driver_cpu": r.data.driver_cpu, "sent": r.data.sent,
            "hwm_kb": r.data.hwm_kb, "rss_base_kb": r.data.rss_base_kb, "rss_peak_kb": r.data.rss_peak_kb,
            "p50": pct(r.data.lat, 50), "p99": pct(r.data.lat, 99), "ttfb_p50": pct(r.data.ttfb, 50),
        } for r in rows], indent=1))
    errors = sum(r.data.errors for r in rows)
    if errors:
        log("FAILED: %d requests had errors" % errors)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
