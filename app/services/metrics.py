"""Prometheus metrics that stay exact under several gunicorn workers.

Every worker writes its values with the official `prometheus_client` in multiprocess mode: each counter,
histogram and gauge lives in the worker's own memory-mapped file in `PROMETHEUS_MULTIPROC_DIR`, so a
scrape (which reaches one worker) sums every worker's files, including those of workers that died; a
dead worker's live gauges are dropped by `mark_dead` (gunicorn's `child_exit`). The values are in the
page cache the moment they are written, so even a worker killed with SIGKILL loses none.

The request path feeds this module in one place, `Metrics.request_finished` (from the Recorder), plus the
relay's live events: a stream opening and closing, its first token, a retry. Domain and model labels are
bounded across all workers by `BoundedLabels`. A scrape is served by `render`, which reads the files with
prometheus_client's own reader and formats the text itself, caching each series' label text, so that
thousands of series take milliseconds; the standard collector plus `generate_latest` takes several times
longer.
"""
from __future__ import annotations

import atexit
import fcntl
import glob
import itertools
import json
import logging
import math
import operator
import os
import shutil
import struct
import tempfile
import time
from typing import Iterable

log = logging.getLogger("nexus.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"
# Set by whoever created the directory (the gunicorn master, or the first app in a process), so it
# alone removes it at exit.
_OWNER_ENV = "NEXUS_METRICS_DIR_OWNER"

# LLM calls: from a quick count_tokens to a ten-minute reasoning stream.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TOKEN_TYPES = (("input", "input_tokens"), ("output", "output_tokens"),
               ("cache_read", "cache_read_input_tokens"), ("cache_creation", "cache_creation_input_tokens"))
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "status_4xx", "status_5xx", "mid_stream", "client_disconnect")
TELEMETRY_RESULTS = ("sent", "failed", "dropped")
WARM_EVERY = 5  # seconds between looks for new series, off the request path
OTHER = "other"
UNKNOWN = "unknown"


# --------------------------------------------------------------------------- the directory


def prepare_directory() -> str:
    """For the gunicorn master, before any worker exists: use PROMETHEUS_MULTIPROC_DIR, or create one.

    Files of an earlier run are removed either way; counters restart from zero with the process, which
    Prometheus handles as a counter reset, rather than carrying numbers of a run that is over.
    """
    path = os.environ.get(ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        for name in glob.glob(os.path.join(path, "*.db")) + glob.glob(os.path.join(path, "labels_*.txt")):
            _remove(name)
    else:
        path = tempfile.mkdtemp(prefix="nexus-metrics-")
        os.environ[ENV] = path
        os.environ[_OWNER_ENV] = str(os.getpid())
    return path


def cleanup_directory() -> None:
    """At the master's exit: remove the directory if this process created it."""
    path = os.environ.get(ENV)
    if path and os.environ.get(_OWNER_ENV) == str(os.getpid()):
        shutil.rmtree(path, ignore_errors=True)


def mark_dead(pid: int) -> None:
    """What gunicorn's child_exit does for a worker that is gone: its live gauges stop counting."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)
    except Exception as exc:  # bookkeeping must not break the master
        log.warning("could not mark metrics of worker %s dead: %s", pid, exc)


def _ensure_multiprocess() -> str:
    """Multiprocess mode in this process (a worker, or an app built without gunicorn)."""
    path = os.environ.get(ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="nexus-metrics-")
        os.environ[ENV] = path
        os.environ[_OWNER_ENV] = str(os.getpid())
        atexit.register(cleanup_directory)
    os.makedirs(path, exist_ok=True)
    from prometheus_client import values

    if not getattr(values.ValueClass, "_nexus", False):
        # prometheus_client chose its value class when it was imported; choose again now the directory exists.
        # Its values ask for the pid on every update (to notice a fork): a pid kept by a fork hook instead of a
        # getpid() call each time is about 7% of a small request's CPU.
        values.ValueClass = values.MultiProcessValue(process_identifier=_current_pid)
        values.ValueClass._nexus = True
    return path


_pid = os.getpid()


def _current_pid() -> int:
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- the instruments


class _Instruments:
    """The metric objects: one set per process (two sets would overwrite each other's values)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("nexus_requests", "Requests answered, by the status the client got",
                                ["mode", "domain", "model", "status"], registry=None)
        self.duration = Histogram("nexus_request_duration_seconds", "Time from request to last byte",
                                  ["mode", "domain"], buckets=DURATION_BUCKETS, registry=None)
        self.ttft = Histogram("nexus_time_to_first_token_seconds", "Streams: time from request to first token",
                              ["mode", "domain"], buckets=TTFT_BUCKETS, registry=None)
        self.tokens = Counter("nexus_tokens", "Tokens, by type", ["domain", "model", "type"], registry=None)
        self.cost = Counter("nexus_cost_usd", "Cost of the requests in US dollars, at the configured prices",
                            ["domain", "model"], registry=None)
        self.upstream_errors = Counter("nexus_upstream_errors", "Requests that failed on the way to or from "
                                       "the upstream, by kind", ["mode", "kind"], registry=None)
        self.retries = Counter("nexus_upstream_retries", "Upstream requests sent again", ["mode", "reason"],
                               registry=None)
        self.open_streams = Gauge("nexus_open_streams", "Streams being relayed now", ["mode"],
                                  multiprocess_mode="livesum", registry=None)
        self.pending = Gauge("nexus_storage_pending_records", "Usage records waiting to be written",
                             multiprocess_mode="livesum", registry=None)
        self.dropped = Counter("nexus_storage_dropped_records", "Usage records given up", registry=None)
        self.telemetry = Counter("nexus_telemetry_events", "Telemetry events, by result", ["result"],
                                 registry=None)
        self.build_info = Gauge("nexus_build_info", "Version and mode of the running proxy", ["version", "mode"],
                                multiprocess_mode="max", registry=None)


_instruments: _Instruments | None = None
_instruments_pid = 0


def instruments() -> _Instruments:
    global _instruments, _instruments_pid
    if _instruments is None:
        _ensure_multiprocess()
        _instruments, _instruments_pid = _Instruments(), os.getpid()
    return _instruments


# --------------------------------------------------------------------------- bounded labels


class BoundedLabels:
    """At most `limit` distinct values of one label across every worker; the rest are reported as `other`.

    Admitted values are shared through a small file in the metrics directory, appended under a lock, so
    every worker admits the same ones. A value is looked up in the file the first time this process
    sees it, and never again; once the file is full, unseen values cost a dict miss.
    """

    def __init__(self, path: str, limit: int, seed: Iterable[str] = ()) -> None:
        self.path = path
        self.limit = max(1, int(limit))
        self._known: dict[str, str] = {}
        self._full = False
        for value in seed:
            value = _clean(value)
            if len(self._known) < self.limit:
                self._known[value] = value
        self._seeds = frozenset(self._known)
        self._room = self.limit - len(self._known)

    def label(self, value: str | None) -> str:
        known = self._known.get(value)  # type: ignore[arg-type]
        if known is not None:
            return known
        if self._full:
            return OTHER
        return self._admit(value)

    def _admit(self, raw: str | None) -> str:
        value = _clean(raw)
        if value in self._known:
            self._known[raw] = self._known[value]  # type: ignore[index]
            return self._known[value]
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError:
            return OTHER
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            admitted = _read_lines(fd)
            others = [v for v in admitted if v not in self._seeds]
            if value in admitted:
                result = value
            elif len(others) < self._room:
                os.write(fd, value.encode("utf-8", "replace") + b"\n")
                others.append(value)
                result = value
            else:
                result = OTHER
            if len(others) >= self._room:
                # Full for good (the file only grows): learn every admitted value once.
                self._full = True
                for v in others:
                    self._known.setdefault(v, v)
        finally:
            os.close(fd)
        if result != OTHER:
            self._known[value] = result
            if raw is not None and raw != value:
                self._known[raw] = result
        return result


def _clean(value: str | None) -> str:
    if not value or not isinstance(value, str):
        return UNKNOWN
    if len(value) > 200:
        value = value[:200]
    if "\n" in value or "\r" in value:
        value = value.replace("\n", " ").replace("\r", " ")
    return value


def _read_lines(fd: int) -> list[str]:
    chunks = []
    offset = 0
    while True:
        data = os.pread(fd, 65536, offset)
        if not data:
            break
        chunks.append(data)
        offset += len(data)
    return [line for line in b"".join(chunks).decode("utf-8", "replace").split("\n") if line]


# --------------------------------------------------------------------------- the service


class Metrics:
    """What the request path and the background parts report; one per worker process."""

    def __init__(self, settings, accounting=None, telemetry=None, credentials=None) -> None:
        from ..version import __version__

        self.settings = settings
        self.enabled = bool(getattr(settings, "metrics_enabled", True))
        self.mode = settings.proxy_mode
        self.accounting = accounting
        self.telemetry = telemetry
        self.credentials = credentials
        self._open: set[int] = set()
        self._sampler = None
        self._synced = {"dropped": 0, "sent": 0, "failed": 0, "tdropped": 0, "pending": -1}
        if not self.enabled:
            return
        self.path = _ensure_multiprocess()
        m = self.m = instruments()
        mapped = [d.lower() for d in getattr(settings, "domain_credential_mapping", {}) or {}]
        self.domains = BoundedLabels(os.path.join(self.path, "labels_domain.txt"),
                                     getattr(settings, "metrics_max_domains", 200), seed=mapped)
        self.models = BoundedLabels(os.path.join(self.path, "labels_model.txt"),
                                    getattr(settings, "metrics_max_models", 200))
        mode = self.mode
        m.build_info.labels(__version__, mode).set(1)
        # Series that dashboards and alerts divide by exist from the start, at zero.
        self._errors = {kind: m.upstream_errors.labels(mode, kind) for kind in UPSTREAM_ERROR_KINDS}
        self._streams = m.open_streams.labels(mode)
        self._telemetry = {r: m.telemetry.labels(r) for r in TELEMETRY_RESULTS}
        m.pending.set(0)
        self._requests: dict[tuple, object] = {}
        self._durations: dict[str, object] = {}
        self._ttfts: dict[str, object] = {}
        self._tokens: dict[tuple, object] = {}
        self._costs: dict[tuple, object] = {}
        self._retries: dict[str, object] = {}

    # -- the request path ------------------------------------------------------------------

    def request_finished(self, rec) -> None:
        """Count one finished request: its status, duration, tokens and upstream failure, if any."""
        if not self.enabled:
            return
        key = id(rec)
        if key in self._open:
            self._open.discard(key)
            self._streams.dec()
        domain = self.domains.label(rec.domain)
        model = self.models.label(rec.model_used or rec.model_requested or UNKNOWN)
        closed = rec.error_type == "client_disconnected"
        status = "client_closed" if closed else str(rec.status)
        child = self._requests.get((domain, model, status))
        if child is None:
            child = self._requests[(domain, model, status)] = self.m.requests.labels(self.mode, domain, model, status)
        child.inc()
        hist = self._durations.get(domain)
        if hist is None:
            hist = self._durations[domain] = self.m.duration.labels(self.mode, domain)
        hist.observe((rec.duration_ms or 0.0) / 1000.0)
        for kind, attr in TOKEN_TYPES:
            n = getattr(rec, attr, 0)
            if n and type(n) is int and n > 0:
                counter = self._tokens.get((domain, model, kind))
                if counter is None:
                    counter = self._tokens[(domain, model, kind)] = self.m.tokens.labels(domain, model, kind)
                counter.inc(n)
        cost = rec.cost_usd
        if cost:  # None: a model without a price, counted nowhere rather than as $0
            counter = self._costs.get((domain, model))
            if counter is None:
                counter = self._costs[(domain, model)] = self.m.cost.labels(domain, model)
            counter.inc(cost)
        kind = upstream_error_kind(rec)
        if kind is not None:
            self._errors[kind].inc()

    def stream_opened(self, rec) -> None:
        if self.enabled:
            self._open.add(id(rec))
            self._streams.inc()

    def first_token(self, rec, seconds: float) -> None:
        if not self.enabled:
            return
        domain = self.domains.label(rec.domain)
        hist = self._ttfts.get(domain)
        if hist is None:
            hist = self._ttfts[domain] = self.m.ttft.labels(self.mode, domain)
        hist.observe(seconds)

    def retry(self, reason: str) -> None:
        if not self.enabled:
            return
        counter = self._retries.get(reason)
        if counter is None:
            counter = self._retries[reason] = self.m.retries.labels(self.mode, reason)
        counter.inc()

    # -- the background parts: copied from their own counters once a second ------------------

    def sync(self) -> None:
        if not self.enabled:
            return
        s = self._synced
        acc = self.accounting
        if acc is not None:
            pending = acc.pending
            if pending != s["pending"]:
                self.m.pending.set(pending)
                s["pending"] = pending
            dropped = acc.dropped
            if dropped > s["dropped"]:
                self.m.dropped.inc(dropped - s["dropped"])
                s["dropped"] = dropped
        tel = self.telemetry
        if tel is not None:
            for result, attr, key in (("sent", "sent", "sent"), ("failed", "failed", "failed"),
                                      ("dropped", "dropped", "tdropped")):
                value = getattr(tel, attr, 0)
                if value > s[key]:
                    self._telemetry[result].inc(value - s[key])
                    s[key] = value

    def start(self) -> None:
        if not self.enabled or self._sampler is not None:
            return
        import gevent

        def loop() -> None:
            rounds = 0
            while True:
                gevent.sleep(1.0)
                try:
                    self.sync()
                    if rounds % WARM_EVERY == 0:
                        # A scrape then finds the series already learnt: it only reads the values.
                        warm_directory(self.path, pause=lambda: gevent.sleep(0))
                except Exception:  # pragma: no cover - the sampler must outlive a bug
                    log.exception("metrics sync failed")
                rounds += 1

        self._sampler = gevent.spawn(loop)

    def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.kill(block=False)
            self._sampler = None
        try:
            self.sync()
            if self.enabled:
                self.m.pending.set(0)  # what is left is in the journal, not pending in this process
        except Exception:
            pass

    # -- the scrape ------------------------------------------------------------------------

    def render(self) -> bytes:
        """The exposition text: every worker's files merged, plus what this worker reads at scrape time."""
        self.sync()
        text = render_directory(self.path)
        return text + self._credentials_text()

    def _credentials_text(self) -> bytes:
        """What the credentials' own state says at scrape time (never a secret): OAuth expiry, windows, state."""
        creds = self.credentials
        if creds is None:
            return b""
        try:
            expiry, view = creds.oauth_expiry(), creds.credential_view()
        except Exception:
            return b""
        return _expiry_text(expiry) + _windows_text(view)


def _expiry_text(expiry: dict[str, int]) -> bytes:
    if not expiry:
        return b""
    name = "nexus_credential_expiry_timestamp_seconds"
    lines = [f"# HELP {name} When the OAuth access token of a mapped domain expires (epoch seconds)",
             f"# TYPE {name} gauge"]
    for domain, ms in sorted(expiry.items()):
        lines.append(f'{name}{{domain="{_escape(domain)}"}} {_num(ms / 1000.0)}')
    return ("\n".join(lines) + "\n").encode()


def _windows_text(view: dict[str, dict]) -> bytes:
    """Each credential file's subscription windows and state, as the upstream's answers told them."""
    util, state = "nexus_credential_utilization_ratio", "nexus_credential_state"
    util_lines, state_lines = [], []
    for name, item in sorted(view.items()):
        label = _escape(name)
        for window, key in (("5h", "fiveHour"), ("7d", "sevenDay")):
            value = (item.get(key) or {}).get("utilization")
            if value is not None:
                util_lines.append(f'{util}{{credential="{label}",window="{window}"}} {_num(value)}')
        for phase in _CREDENTIAL_PHASES:
            state_lines.append(f'{state}{{credential="{label}",state="{phase}"}} '
                               f'{1 if item.get("status") == phase else 0}')
    if not state_lines:
        return b""
    lines = [f"# HELP {util} A subscription window's utilisation (0-1) from the upstream's last answer",
             f"# TYPE {util} gauge", *util_lines,
             f"# HELP {state} 1 for the credential's current state (ok, cooling, broken, invalid)",
             f"# TYPE {state} gauge", *state_lines]
    return ("\n".join(lines) + "\n").encode()


_CREDENTIAL_PHASES = ("ok", "cooling", "broken", "invalid")


def upstream_error_kind(rec) -> str | None:
    """The kind of upstream failure a finished request had (see docs/metrics.md), or None."""
    kind = getattr(rec, "upstream_error", None)
    if kind is not None:
        return kind
    error = rec.error_type
    if error is None:
        return None
    if error == "client_disconnected":
        return "client_disconnect"
    if rec.stream and rec.status < 400:
        # Started well, then failed: the upstream stopped answering, or broke off.
        return "timeout" if error == "timeout_error" else "mid_stream"
    return None


# --------------------------------------------------------------------------- the text format

_key_cache: dict[str, tuple] = {}
_KEY_CACHE_MAX = 200_000


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _num(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value)}.0"
    return repr(value)


def _labels_text(labels: dict) -> str:
    return ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))


def _parse_key(key: str) -> tuple:
    """(metric, sample name, help, labels text, le or None): cached, since series repeat every scrape."""
    hit = _key_cache.get(key)
    if hit is None:
        metric, name, labels, help_text = json.loads(key)
        le = labels.pop("le", None) if name.endswith("_bucket") else None
        hit = (metric, name, help_text, _labels_text(labels), None if le is None else float(le))
        if len(_key_cache) >= _KEY_CACHE_MAX:
            _key_cache.clear()
        _key_cache[key] = hit
    return hit


_GAUGE_MERGE = {"sum": "sum", "livesum": "sum", "max": "max", "livemax": "max", "min": "min", "livemin": "min",
                "mostrecent": "recent", "livemostrecent": "recent", "all": "all", "liveall": "all"}
_INT = struct.Struct("<i")


class _Layout:
    """Where the values of one file are. Entries are only ever appended, so each is learnt once; the
    values are 8-byte aligned doubles, so a later scrape reads all of them, in catalog order, with one
    `itemgetter` over the file's bytes viewed as doubles."""

    __slots__ = ("inode", "used", "indexes", "keys", "slots", "perm")

    def __init__(self, inode: int) -> None:
        self.inode = inode
        self.used = 8
        self.indexes: list[int] = []  # of each entry's value, counted in doubles
        self.keys: list[tuple] = []
        self.slots: list[int] = []
        self.perm: tuple | None = None  # (catalog size, getter): catalog slot -> this file's value

    def update(self, data: bytes, used: int, typ: str, catalog: "_Catalog", pause=None) -> None:
        if used <= self.used:
            return
        for n, (key, pos) in enumerate(_read_keys(data, self.used, used)):
            if pause is not None and n % 500 == 499:
                pause()
            self.indexes.append(pos // 8)
            parsed = _parse_key(key)
            self.keys.append(parsed)
            if typ != "gauge":
                self.slots.append(catalog.slot(key, typ, parsed))
        self.used = used
        self.perm = None

    def aligned(self, doubles: memoryview, zero: int, catalog: "_Catalog") -> tuple:
        """This file's values in catalog slot order (0.0 where the file has no such series)."""
        n = len(catalog.info)
        if self.perm is None or self.perm[0] != n:
            perm = [zero] * n
            indexes = self.indexes
            for i, slot in enumerate(self.slots):
                perm[slot] = indexes[i]
            self.perm = (n, operator.itemgetter(*perm, zero, zero))
        return self.perm[1](doubles)[:n]


def _read_keys(data: bytes, pos: int, used: int):
    """(key, value position) of the entries between `pos` and `used`, in prometheus_client's mmap format."""
    while pos < used:
        n = _INT.unpack_from(data, pos)[0]
        if n + pos > used:
            raise RuntimeError("metrics file is corrupted")
        pos += 4
        key = data[pos:pos + n].decode("utf-8")
        pos += n + (8 - (n + 4) % 8)
        yield key, pos
        pos += 16


class _Catalog:
    """Every counter and histogram series seen in any file, each with a slot, and how to print them."""

    def __init__(self) -> None:
        self.slot_of: dict[str, int] = {}
        self.info: list[tuple] = []  # slot -> (type, metric, sample name, help, labels text, le)
        self._plan: tuple | None = None

    def slot(self, key: str, typ: str, parsed: tuple) -> int:
        slot = self.slot_of.get(key)
        if slot is None:
            metric, name, help_text, labels, le = parsed
            slot = self.slot_of[key] = len(self.info)
            self.info.append((typ, metric, name, help_text, labels, le))
            self._plan = None
        return slot

    def plan(self) -> list[tuple]:
        """Per metric, in output order: ("counter", header, slots, prefixes) or
        ("histogram", header, [(bucket slots, bucket prefixes, count prefix, sum slot, sum prefix)])."""
        if self._plan is not None and self._plan[0] == len(self.info):
            return self._plan[1]
        families: dict[str, list] = {}
        for slot, (typ, metric, name, help_text, labels, le) in enumerate(self.info):
            families.setdefault(metric, [typ, help_text, []])[2].append(slot)
        plan = []
        for metric in sorted(families):
            typ, help_text, slots = families[metric]
            if typ == "histogram":
                groups: dict[str, list] = {}
                for slot in slots:
                    _t, _m, name, _h, labels, le = self.info[slot]
                    group = groups.setdefault(labels, [[], None])
                    if le is not None:
                        group[0].append((le, slot))
                    elif name.endswith("_sum"):
                        group[1] = slot
                rows = []
                for labels in sorted(groups):
                    buckets, sum_slot = groups[labels]
                    buckets.sort()
                    prefix = labels + "," if labels else ""
                    braces = f"{{{labels}}}" if labels else ""
                    rows.append(([s for _, s in buckets],
                                 [f'{metric}_bucket{{{prefix}le="{_bound(le)}"}} ' for le, _ in buckets],
                                 f"{metric}_count{braces} ", sum_slot, f"{metric}_sum{braces} "))
                plan.append(("histogram", f"# HELP {metric} {help_text}\n# TYPE {metric} histogram\n", rows))
            else:
                shown = metric + "_total" if typ == "counter" else metric
                ordered = sorted(slots, key=lambda s: (self.info[s][2], self.info[s][4]))
                prefixes = [f"{self.info[s][2]}{{{self.info[s][4]}}} " if self.info[s][4] else f"{self.info[s][2]} "
                            for s in ordered]
                plan.append((typ, f"# HELP {shown} {help_text}\n# TYPE {shown} {typ}\n", ordered, prefixes))
        self._plan = (len(self.info), plan)
        return plan


# Per metrics directory (one in production; tests use several): the series seen and each file's layout.
_state: dict[str, tuple["_Catalog", dict]] = {}


def warm_directory(path: str, pause=None) -> None:
    """Learn the series that appeared since the last look (what a scrape would have to learn first),
    calling `pause()` now and then so a worker's other greenlets run meanwhile."""
    state = _state.get(path)
    if state is None:
        state = _state[path] = (_Catalog(), {})
    catalog, layouts = state
    for file in glob.glob(os.path.join(path, "*.db")):
        typ = os.path.basename(file).split("_", 1)[0]
        try:
            with open(file, "rb") as f:
                data = f.read()
                inode = os.fstat(f.fileno()).st_ino
        except OSError:
            continue
        if len(data) < 8:
            continue
        layout = layouts.get(file)
        if layout is None or layout.inode != inode:
            layout = layouts[file] = _Layout(inode)
        try:
            layout.update(data, _INT.unpack_from(data, 0)[0], typ, catalog, pause)
        except Exception:
            layouts.pop(file, None)
        if pause is not None:
            pause()
    catalog.plan()


def render_directory(path: str) -> bytes:
    """Merge every `*.db` file of `path` into Prometheus text format (0.0.4), the way prometheus_client's
    MultiProcessCollector merges them: counters and histograms summed over all files, gauges by mode."""
    state = _state.get(path)
    if state is None:
        state = _state[path] = (_Catalog(), {})
    catalog, layouts = state
    totals: list[float] = []
    gauges: dict[str, list] = {}  # metric -> [help, {(sample name, labels text) -> value}, {sid -> timestamp}]
    seen = set()
    for file in glob.glob(os.path.join(path, "*.db")):
        parts = os.path.basename(file)[:-3].split("_")
        typ = parts[0]
        try:
            with open(file, "rb") as f:
                data = f.read()
                inode = os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            continue  # a dead worker's live gauge file, removed meanwhile
        if len(data) < 8:
            continue
        seen.add(file)
        layout = layouts.get(file)
        if layout is None or layout.inode != inode:
            layout = layouts[file] = _Layout(inode)
        try:
            layout.update(data, _INT.unpack_from(data, 0)[0], typ, catalog)
            if len(data) % 8:
                data = data[: len(data) - len(data) % 8]
            doubles = memoryview(data + bytes(8)).cast("d")  # the last one is 0.0
            zero = len(doubles) - 1
        except Exception as exc:
            log.warning("metrics file %s unreadable: %s", file, exc)
            layouts.pop(file, None)
            continue
        if typ != "gauge":
            if layout.slots:
                row = layout.aligned(doubles, zero, catalog)
                totals = list(map(operator.add, totals, row)) if len(totals) == len(row) else \
                    _add_padded(totals, row)
            continue
        how = _GAUGE_MERGE.get(parts[1], "all")
        pid = parts[2] if len(parts) > 2 else ""
        for i, (metric, name, help_text, labels, _le) in enumerate(layout.keys):
            value, timestamp = doubles[layout.indexes[i]], doubles[layout.indexes[i] + 1]
            entry = gauges.get(metric)
            if entry is None:
                entry = gauges[metric] = [help_text, {}, {}]
            samples = entry[1]
            if how == "all":
                labels = (labels + "," if labels else "") + f'pid="{pid}"'
            sid = (name, labels)
            if how == "sum":
                samples[sid] = samples.get(sid, 0.0) + value
            elif how == "max":
                samples[sid] = max(samples.get(sid, value), value)
            elif how == "min":
                samples[sid] = min(samples.get(sid, value), value)
            elif how == "recent":
                if timestamp >= entry[2].get(sid, -1.0):
                    entry[2][sid] = timestamp
                    samples[sid] = value
            else:
                samples[sid] = value
    for gone in set(layouts) - seen:
        del layouts[gone]
    if len(totals) < len(catalog.info):
        totals = _add_padded(totals, [0.0] * len(catalog.info))
    blocks: list[tuple[str, str]] = []
    for family in catalog.plan():
        if family[0] == "histogram":
            _typ, header, rows = family
            metric = header.split(" ", 3)[2]
            prefixes: list[str] = []
            numbers: list[float] = []
            shown = False
            for bucket_slots, bucket_prefixes, count_prefix, sum_slot, sum_prefix in rows:
                cumulative = list(itertools.accumulate(totals[s] for s in bucket_slots))
                if not cumulative:
                    continue
                shown = True
                prefixes += bucket_prefixes
                prefixes += (count_prefix, sum_prefix)
                numbers += cumulative
                numbers += (cumulative[-1], totals[sum_slot] if sum_slot is not None else 0.0)
            if shown:
                blocks.append((metric, header + _lines(prefixes, numbers)))
        else:
            _typ, header, slots, prefixes = family
            metric = header.split(" ", 3)[2]
            numbers = [totals[s] for s in slots]
            blocks.append((metric[:-6] if _typ == "counter" else metric, header + _lines(prefixes, numbers)))
    for metric, (help_text, samples, _ts) in gauges.items():
        text = [f"# HELP {metric} {help_text}\n# TYPE {metric} gauge\n"]
        for (name, labels), value in sorted(samples.items()):
            text.append(f"{name}{{{labels}}} {_num(value)}\n" if labels else f"{name} {_num(value)}\n")
        blocks.append((metric, "".join(text)))
    blocks.sort(key=lambda b: b[0])
    return "".join(text for _, text in blocks).encode()


def _lines(prefixes: list[str], numbers: list[float]) -> str:
    if not prefixes:
        return ""
    return "\n".join(map(operator.add, prefixes, map(repr, numbers))) + "\n"


def _add_padded(a: list[float], b) -> list[float]:
    n = max(len(a), len(b))
    a = list(a) + [0.0] * (n - len(a))
    b = list(b) + [0.0] * (n - len(b))
    return list(map(operator.add, a, b))


def _bound(le: float) -> str:
    return "+Inf" if le == math.inf else repr(le)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def scrape_time(path: str) -> float:  # pragma: no cover - used by the benchmark
    started = time.perf_counter()
    render_directory(path)
    return time.perf_counter() - started
