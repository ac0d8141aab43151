"""Profile the proxy's worker under one benchmark case with py-spy (``pip install py-spy``; not a dependency).

    python -m bench.profile --mode translation --case "json 2KB c=32" --seconds 10
    python -m bench.profile --mode passthrough --case "stream 2KB c=32" --out /tmp/pt.svg

Starts the fake upstream and the proxy like bench.run, drives the case in a loop while py-spy samples the
gunicorn worker, then prints the functions with the most samples (self and inclusive) and the worker's
CPU utilisation (a worker below ~90% CPU while requests queue is waiting on something, not computing).
With --out it also writes a flame graph (svg) or speedscope file (.json).
"""
from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import procstat
from bench.run import FULL_CASES, Bench, Driver, proxy_env
from tests.fakes.server import FakeUpstream, ProxyServer


# Leaf frames where the worker is not computing: waiting in the loop, or preempted right after a send()
# woke the peer process on the same core (perf shows the send syscall itself costs ~10 us).
WAIT_LEAVES = ("Hub.run", "SocketMixin.send (", "acquire_with_timeout", "poll.poll", "Waiter.get",
               "Hub.switch", "sleep (gevent", "(urllib3/connectionpool.py:534)", "(gunicorn/http/message.py:540)")


def _package(frame: str) -> str:
    """'func (path/to/file.py:12)' -> a short package label for the file."""
    path = frame.rpartition("(")[2].rstrip(")").rpartition(":")[0]
    if path.startswith(("app/", "config/")):
        return path
    head = path.split("/")[0]
    return {"<frozen _collections_abc>": "collections", "": "?"}.get(head, head.removesuffix(".py"))


def summarize(collapsed: Path, top: int) -> str:
    """Where the CPU samples go, from py-spy's collapsed ("raw") output.

    Samples whose leaf is a wait (see WAIT_LEAVES) are counted apart; the rest are split by the package
    of the leaf frame (self) and by app function (inclusive).
    """
    self_counts: collections.Counter = collections.Counter()
    pkg_counts: collections.Counter = collections.Counter()
    app_counts: collections.Counter = collections.Counter()
    total = waiting = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = stack.split(";")
        if any(w in frames[-1] for w in WAIT_LEAVES):
            waiting += count
            continue
        self_counts[frames[-1]] += count
        pkg_counts[_package(frames[-1])] += count
        for frame in set(frames):
            if "(app/" in frame or "(config/" in frame:
                app_counts[frame] += count
    cpu = max(1, total - waiting)
    out = ["%d samples: %d computing, %d waiting or preempted (leaf in the loop / right after send)"
           % (total, total - waiting, waiting), "", "computing samples by package of the running frame:"]
    for pkg, n in pkg_counts.most_common(top):
        out.append("  %5.1f%%  %s" % (100.0 * n / cpu, pkg))
    out += ["", "top self (computing samples):"]
    for frame, n in self_counts.most_common(top):
        out.append("  %5.1f%%  %s" % (100.0 * n / cpu, frame))
    out += ["", "top inclusive app/ frames (computing samples):"]
    for frame, n in app_counts.most_common(top):
        out.append("  %5.1f%%  %s" % (100.0 * n / cpu, frame))
    return "\n".join(out)


def _cprofile_report(path: Path, requests: int, top: int) -> str:
    """Self time per request by package and by function, from a cProfile dump."""
    import pstats

    stats = pstats.Stats(str(path))
    by_pkg: collections.Counter = collections.Counter()
    rows = []
    total = 0.0
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        if "site-packages/" in filename:
            pkg = filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
        elif "/app/" in filename or "/config/" in filename:
            pkg = filename[filename.rfind("/app/") + 1:] if "/app/" in filename else "config"
        elif filename.startswith("~") or filename.startswith("<"):
            pkg = "builtins"
        else:
            pkg = "stdlib:" + Path(filename).stem
        by_pkg[pkg] += tottime
        rows.append((tottime, cumtime, ncalls, "%s (%s:%d)" % (func, filename.split("site-packages/")[-1]
                                                              .split("/work/main/")[-1], line)))
    per = 1e6 / max(1, requests)
    out = ["cProfile: %.3f s of self time over %d requests = %.0f us/request (profiling overhead included; "
           "compare shares, not absolute numbers)" % (total, requests, total * per), "", "self time by package:"]
    for pkg, t in by_pkg.most_common(top):
        out.append("  %5.1f%%  %7.1f us/req  %s" % (100 * t / total, t * per, pkg))
    out += ["", "top functions by self time:"]
    for tottime, cumtime, ncalls, name in sorted(rows, reverse=True)[:top]:
        out.append("  %5.1f%%  %7.1f us/req  %6.2f calls/req  %s" % (100 * tottime / total, tottime * per,
                                                                   ncalls / max(1, requests), name))
    out += ["", "app functions by cumulative time (includes waits for sockets):"]
    app_rows = sorted((r for r in rows if "app/" in r[3]), key=lambda r: r[1], reverse=True)[:top]
    for tottime, cumtime, ncalls, name in app_rows:
        out.append("  %7.1f us/req cumulative  %s" % (cumtime * per, name))
    return "\n".join(out)


def run_cprofile(args: argparse.Namespace) -> int:
    case = next((c for c in FULL_CASES if c.name == args.case), None)
    if case is None:
        print("unknown case; one of: %s" % ", ".join(c.name for c in FULL_CASES), file=sys.stderr)
        return 2
    bench = Bench(argparse.Namespace(smoke=False, rounds=1), lambda m: print(m, file=sys.stderr))
    tmp = Path(tempfile.mkdtemp(prefix="nexus-cprofile-"))
    config = Path(__file__).resolve().parent / "gunicorn_profile.conf.py"
    with FakeUpstream() as fake:
        env = proxy_env(args.mode, fake.url + case.group.prefix, None)
        env.update(dict(item.split("=", 1) for item in args.proxy_env))
        env["NEXUS_PROFILE_OUT"] = str(tmp / "worker")
        proxy = ProxyServer(env, config=config).start()
        driver = Driver()
        n = errors = 0
        try:
            job = bench.jobs(args.mode, case, fake, {"proxy": proxy.port}, max(case.concurrency, 200))["proxy"]
            assert job is not None
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                result = driver.run(job)
                n += result["n"]
                errors += result["errors"]
        finally:
            driver.close()
            proxy.terminate()
            proxy.stop()
    dumps = sorted(tmp.glob("worker.*"))
    if not dumps:
        print("no profile written (did the worker exit cleanly?)", file=sys.stderr)
        return 1
    print("%s / %s: %d requests, %d errors (profiled, so slower than unprofiled)" % (args.mode, case.name, n, errors))
    print(_cprofile_report(dumps[0], n, args.top))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default="translation", choices=["translation", "passthrough"])
    parser.add_argument("--case", default="json 2KB c=32", help="a case name from bench.run FULL_CASES")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=499, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default=None, help="flame graph .svg or speedscope .json")
    parser.add_argument("--raw", default=None, help="keep py-spy's collapsed stacks in this file")
    parser.add_argument("--idle", action="store_true", help="include idle samples (waiting in the loop)")
    parser.add_argument("--no-gil", action="store_true",
                        help="sample whether or not the worker holds the GIL (default: only while it does, "
                             "which leaves out time blocked in syscalls)")
    parser.add_argument("--proxy-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--cprofile", action="store_true",
                        help="deterministic profile of the worker with cProfile instead of sampling with py-spy")
    args = parser.parse_args(argv)
    if args.cprofile:
        return run_cprofile(args)
    if not shutil.which("py-spy"):
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    case = next((c for c in FULL_CASES if c.name == args.case), None)
    if case is None:
        print("unknown case; one of: %s" % ", ".join(c.name for c in FULL_CASES), file=sys.stderr)
        return 2
    bench = Bench(argparse.Namespace(smoke=False, rounds=1), lambda m: print(m, file=sys.stderr))
    tmp = Path(tempfile.mkdtemp(prefix="nexus-profile-"))
    with FakeUpstream() as fake:
        env = proxy_env(args.mode, fake.url + case.group.prefix, None)
        env.update(dict(item.split("=", 1) for item in args.proxy_env))
        with ProxyServer(env) as proxy:
            driver = Driver()
            try:
                job = bench.jobs(args.mode, case, fake, {"proxy": proxy.port}, max(case.concurrency, 200))["proxy"]
                assert job is not None
                driver.run(job)  # warm up
                workers = procstat.children(proxy.pid)
                worker = workers[0]
                stop = threading.Event()
                done = [0, 0]

                def load() -> None:
                    while not stop.is_set():
                        result = driver.run(job)
                        done[0] += result["n"]
                        done[1] += result["errors"]

                raw = tmp / "profile.txt"
                cmd = ["py-spy", "record", "--pid", str(worker), "--rate", str(args.rate), "--duration",
                       str(int(args.seconds)), "--format", "raw", "--output", str(raw)]
                if args.idle:
                    cmd.append("--idle")
                if not args.no_gil:
                    cmd.append("--gil")
                thread = threading.Thread(target=load, daemon=True)
                thread.start()
                time.sleep(0.5)
                cpu0, t0 = procstat.cpu_seconds(worker), time.monotonic()
                n0 = done[0]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                cpu, wall = procstat.cpu_seconds(worker) - cpu0, time.monotonic() - t0
                n = done[0] - n0
                if args.out:
                    fmt = "speedscope" if args.out.endswith(".json") else "flamegraph"
                    thread_cmd = cmd[:]
                    thread_cmd[thread_cmd.index("raw")] = fmt
                    thread_cmd[thread_cmd.index(str(raw))] = args.out
                    thread_cmd[thread_cmd.index(str(int(args.seconds)))] = "5"
                    subprocess.run(thread_cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                stop.set()
                thread.join()
            finally:
                driver.close()
    print("%s / %s: worker pid %d, %.1f%% CPU, ~%d requests during the %.0f s sample (%.0f req/s, %.3f ms CPU/req),"
          " %d errors" % (args.mode, case.name, worker, 100 * cpu / wall, n, wall, n / wall if wall else 0,
                          1000 * cpu / n if n else 0, done[1]))
    print(summarize(raw, args.top))
    if args.raw:
        shutil.copy(raw, args.raw)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
