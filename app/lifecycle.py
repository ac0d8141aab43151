"""What a worker does when it starts and stops, and the final report the master prints on shutdown."""
from __future__ import annotations

import logging

import gevent

log = logging.getLogger("nexus")


def _services(worker):
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("nexus") if app is not None else None


def worker_started(worker) -> None:
    """Watch for the start of a graceful stop and end streams cleanly before gunicorn's hard kill."""
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
