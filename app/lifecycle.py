"""What a worker does when it starts and stops, and the final report the master prints on shutdown."""
from __future__ import annotations

import gc
import logging

import gevent

log = logging.getLogger("nexus")


def _services(worker):
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("nexus") if app is not None else None


# The young generation's threshold (CPython's default is 700). A worker with 1,000 open streams allocates
# enough to collect it at 700 hundreds of times a second, and every tenth of those is a middle collection,
# every hundredth may be an old one: a scan of every open stream's objects (tens of milliseconds with the whole
# loop stopped, so every stream's next event is late). At 20,000 the young collections stay short (a few
# milliseconds) and the long ones come 30 times less often.
GC_YOUNG_THRESHOLD = 20000


def tune_gc() -> None:
    """After the app is loaded: what exists now (modules, the app, its services) lives as long as the worker,
    so it is frozen out of the collector's scans, and the young generation is collected less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def worker_started(worker) -> None:
    """Tune the collector for a long-lived server; watch for the start of a graceful stop and end streams
    cleanly before gunicorn's hard kill."""
    tune_gc()
    services = _services(worker)
    timeout = worker.cfg.graceful_timeout

    def watch() -> None:
        while worker.alive:
            gevent.sleep(0.2)
        close_idle = getattr(worker, "close_idle_connections", None)
        if close_idle is not None:
            close_idle()
        # Leave a margin before gunicorn kills the handlers, so each open stream ends with a
        # complete `event: error` instead of being cut mid-event.
        if services is None:
            return
        gevent.sleep(max(0.0, timeout - 1.5))
        closed = services.upstream.close_open_streams()
        if closed:
            log.warning("shutdown timeout: ended %d open stream(s) with an error event", closed)

    gevent.spawn(watch)


def worker_stopping(worker) -> None:
    services = _services(worker)
    if services is not None:
        services.stop()
    # What tune_gc froze would otherwise outlive the interpreter's last collection and be torn down with the
    # modules, when logging's and gevent's cleanup callbacks can no longer run.
    gc.unfreeze()


def worker_reaped(settings, pid: int) -> None:
    """In the master, for a worker that is gone however it ended: its live gauges stop counting, and
    the usage it had not written yet is replayed from its journal."""
    from .services.metrics import mark_dead

    mark_dead(pid)
    if settings.usage_journal:
        _replay_in_child(settings)


def _replay_in_child(settings) -> None:
    """Replay in a short-lived child process: the master must not import the database driver itself
    (psycopg picks a blocking wait function when imported before gevent patches a worker), and must
    not wait on the store while it supervises the workers."""
    import os
    import signal

    try:
        pid = os.fork()
    except OSError as exc:
        log.warning("journal replay not started (%s); the next worker to start replays it", exc)
        return
    if pid:
        return  # gunicorn's SIGCHLD handling reaps the child
    code = 0
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT,
                    signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_DFL)
        _replay_now(settings)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _replay_now(settings) -> int:
    from .services.journal import replay_into_store
    from .storage import open_storage

    storage = open_storage(settings)
    try:
        return replay_into_store(settings, storage)
    finally:
        storage.close()


def master_exiting(settings) -> None:
    """After the last worker: replay what a worker killed during the shutdown left, remove the metrics
    directory the master made."""
    from .services.metrics import cleanup_directory

    if settings.usage_journal:
        try:
            _replay_now(settings)
        except Exception as exc:
            print(f"usage journal replay failed ({exc}); the next start replays it", flush=True)
    cleanup_directory()


def print_final_report(settings, started_at: float) -> None:
    """Printed once by the master after every worker has flushed its usage."""
    try:
        import time
        from datetime import datetime

        from .services.report import format_report
        from .storage import open_storage

        storage = open_storage(settings)
        try:
            stats = storage.domain_stats()
        finally:
            storage.close()
        uptime = time.time() - started_at
        print("\nFinal token usage:", flush=True)
        print(format_report(stats, now=datetime.now(), uptime_seconds=uptime), flush=True)
    except Exception as exc:  # a report must never turn a clean shutdown into a crash
        print(f"could not print the final token report: {exc}", flush=True)
