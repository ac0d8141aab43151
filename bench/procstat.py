"""CPU time and memory of a process tree, read from /proc (Linux)."""
from __future__ import annotations

import os
import threading
import time

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open("/proc/%d/stat" % pid, "rb") as f:
        data = f.read().decode()
    # the command name may contain spaces: fields start after the last ')'
    return data[data.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = _stat_fields(pid)
    except (OSError, ValueError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    try:
        out = []
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                out.extend(int(x) for x in f.read().split())
        return out
    except OSError:
        pass
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat_fields(int(entry))[1]) == pid:
                    kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return kids


def tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(children(p))
    return pids


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return (total - idle) / _TICK, total / _TICK


def tree_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def _status_kb(pid: int, key: str) -> int:
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pids: list[int]) -> int:
    """Sum of current resident set sizes, KiB."""
    return sum(_status_kb(p, "VmRSS:") for p in pids)


def hwm_kb(pids: list[int]) -> int:
    """Sum of peak resident set sizes (VmHWM), KiB."""
    return sum(_status_kb(p, "VmHWM:") for p in pids)


class RssSampler:
    """Samples the summed RSS of some processes in a thread; `peak` is the highest sample."""

    def __init__(self, pids: list[int], interval: float = 0.02) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = rss_kb(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_kb(self.pids))

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kb(self.pids))


def tree_run_seconds(pids: list[int]) -> float:
    """CPU seconds the processes' threads have run, from the scheduler's own count (/proc/<pid>/task/*/schedstat,
    nanoseconds): exact, where utime/stime are sampled at each clock tick (10 ms) and are only right on average."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue
        for task in tasks:
            try:
                with open("/proc/%d/task/%s/schedstat" % (pid, task)) as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def speed_probe(iterations: int = 1_500_000) -> float:
    """CPU seconds of a fixed pure-Python loop: how fast this machine runs Python right now.

    A shared VM's speed can change by half within minutes (its neighbours' load); the bench runs this
    between groups so that a run's absolute figures can be read against the machine's speed at the time.
    """
    start = time.process_time()
    total = 0
    for i in range(iterations):
        total += i
    return time.process_time() - start
