"""Usage accounting: an in-memory buffer on the request path, a background flusher, the console report.

`record()` only appends to a bounded deque. A flusher greenlet writes batches (every second or every
100 records) to the storage; if the storage is down the records stay buffered, up to a bound, and are
written once it is back. A reporter greenlet prints the table from the one process holding report
leadership, and only when the totals changed.
"""
from __future__ import annotations

import collections
import logging
import time
from datetime import datetime
from typing import Callable, Sequence

import gevent
import gevent.event
import gevent.lock

from app.masking import mask_text
from app.records import RequestRecord
from app.services.report import format_report, format_started
from app.storage.base import Storage, StorageDataError, StorageError
from config.settings import Settings

log = logging.getLogger("nexus.accounting")

MAX_PENDING = 50_000
BATCH_SIZE = 100
FLUSH_INTERVAL = 1.0
MAX_RETRY_WAIT = 10.0
# One transaction never carries more than this, so a long backlog is written in bounded steps.
MAX_WRITE = 1000


def _mask_error(exc: BaseException) -> str:
    """A short, secret-free description of a storage error for GET /."""
    text = str(exc).strip().splitlines()
    text = (text[0] if text else type(exc).__name__)[:200]
    return mask_text(text)  # a DATABASE_URL's password too, if a driver echoes it


class Accounting:
    """Records every request once; the service code never knows which storage is behind it."""

    def __init__(self, settings: Settings, storage: Storage, *, max_pending: int = MAX_PENDING,
                 batch_size: int = BATCH_SIZE, flush_interval: float = FLUSH_INTERVAL,
                 max_retry_wait: float = MAX_RETRY_WAIT, printer: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.storage = storage
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_retry_wait = max_retry_wait
        self.report_interval = settings.report_interval
        self._print = printer or (lambda text: print(text, flush=True))
        self._clock = clock
        self._started_at = time.monotonic()
        self._pending: collections.deque[RequestRecord] = collections.deque()
        self._dropped = 0
        self._last_error: str | None = None
        self._failing = False
        self._flush_lock = gevent.lock.Semaphore()
        self._wake = gevent.event.Event()
        self._stop = gevent.event.Event()
        self._flusher: gevent.Greenlet | None = None
        self._reporter: gevent.Greenlet | None = None
        self._last_version: int | None = None
        self._announced = False
        self._stopped = False

    # --- the request path ------------------------------------------------------------------

    def record(self, rec: RequestRecord) -> None:
        """Queue one request's usage. O(1); never raises, never blocks, never does I/O."""
        try:
            pending = self._pending
            if len(pending) >= self.max_pending:
                pending.popleft()
                self._dropped += 1
            pending.append(rec)
            if len(pending) == self.batch_size:
                self._wake.set()
        except Exception:  # pragma: no cover - defensive: accounting must never fail a request
            pass

    # --- flushing --------------------------------------------------------------------------

    def flush(self) -> bool:
        """Write everything pending now. True when the buffer is empty afterwards; never raises."""
        with self._flush_lock:
            while self._pending:
                batch = self._take(MAX_WRITE)
                try:
                    self.storage.write_batch(batch)
                except BaseException as exc:
                    if not isinstance(exc, Exception):  # killed mid-write (shutdown): keep the batch
                        self._restore(batch)
                        raise
                    if isinstance(exc, StorageDataError):
                        # The store works but refused something in this batch: write the records one by
                        # one so a single bad record cannot hold the whole buffer back forever.
                        if self._write_one_by_one(batch):
                            continue
                        return False  # unreachable after all: the rest is buffered again
                    self._restore(batch)
                    if not self._failing:
                        log.warning("usage storage unavailable, keeping %d records buffered: %s",
                                    len(self._pending), _mask_error(exc))
                    self._failing = True
                    self._last_error = _mask_error(exc)
                    return False
                if self._failing:
                    log.warning("usage storage is back; buffered records written")
                self._failing = False
                self._last_error = None
            return True

    def _write_one_by_one(self, batch: list[RequestRecord]) -> bool:
        """False (nothing lost) if the store turns out to be unreachable after all."""
        for i, rec in enumerate(batch):
            try:
                self.storage.write_batch([rec])
            except Exception as exc:
                if not isinstance(exc, StorageDataError):
                    self._restore(batch[i:])
                    self._failing = True
                    self._last_error = _mask_error(exc)
                    return False
                self._dropped += 1
                log.error("usage record %s could not be stored and was dropped: %s",
                          getattr(rec, "request_id", "?"), _mask_error(exc))
        return True

    def _take(self, n: int) -> list[RequestRecord]:
        pending = self._pending
        return [pending.popleft() for _ in range(min(n, len(pending)))]

    def _restore(self, batch: Sequence[RequestRecord]) -> None:
        # Put a failed batch back in front (it is older than anything recorded meanwhile), then
        # apply the bound: the oldest records are the ones given up.
        pending = self._pending
        pending.extendleft(reversed(batch))
        over = len(pending) - self.max_pending
        if over > 0:
            for _ in range(over):
                pending.popleft()
            self._dropped += over

    def _flush_loop(self) -> None:
        wait = self.flush_interval
        while not self._stop.is_set():
            self._wake.wait(timeout=wait)
            self._wake.clear()
            if self._stop.is_set():
                break
            if not self._pending:
                wait = self.flush_interval
                continue
            try:
                ok = self.flush()
            except Exception:  # pragma: no cover - flush() does not raise; the loop must outlive bugs
                log.exception("usage flush failed")
                ok = False
            # Back off while the storage is down; the buffer keeps the records meanwhile.
            wait = self.flush_interval if ok else min(self.max_retry_wait, max(wait * 2, self.flush_interval))

    # --- the report ------------------------------------------------------------------------

    def report_once(self, force: bool = False) -> bool:
        """Print the table if this process is the reporter and the totals changed. True if printed."""
        try:
            if not self.storage.try_report_leadership():
                return False
            if not self._announced:
                self._announced = True
                self._print(format_started(self.report_interval or 10))
            version = self.storage.totals_version()
            if not force and version == self._last_version:
                return False
            stats = self.storage.domain_stats()
            if not stats:
                return False
            self._last_version = version
            self._print("\n" + format_report(stats, now=datetime.fromtimestamp(self._clock()),
                                             uptime_seconds=time.monotonic() - self._started_at))
            return True
        except Exception as exc:
            log.debug("token report skipped: %s", _mask_error(exc))
            return False

    def _report_loop(self) -> None:
        while not self._stop.wait(timeout=self.report_interval):
            self.report_once()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the flusher (and, when report_interval > 0, the reporter) greenlets."""
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush_loop)
        if self.report_interval > 0 and self._reporter is None:
            self._reporter = gevent.spawn(self._report_loop)

    def stop(self, final_report: bool = True, timeout: float = 5.0) -> None:
        """Stop the greenlets, write what is pending, print the final report. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self._wake.set()
        for g in (self._flusher, self._reporter):
            if g is not None:
                g.join(timeout=timeout)
                if not g.dead:
                    g.kill(block=False)
        self._flusher = self._reporter = None
        if not self.flush():
            log.warning("usage storage unavailable at shutdown: %d records not written", len(self._pending))
        if final_report and self.report_interval > 0:
            self.report_once(force=True)

    # --- reads -----------------------------------------------------------------------------

    def stats(self, since: float | None = None, until: float | None = None) -> dict:
        """Per-domain stats including this process's latest records. Raises StorageError if the store is down."""
        self._flush_for_read()
        return self.storage.domain_stats(since, until)

    def model_stats(self, since: float | None = None, until: float | None = None,
                    domain: str | None = None) -> dict:
        self._flush_for_read()
        return self.storage.model_stats(since, until, domain)

    def credential_stats(self, since: float | None = None, until: float | None = None,
                         domain: str | None = None) -> dict:
        """Usage per credential file (by name). Raises StorageError if the store is down."""
        self._flush_for_read()
        return self.storage.credential_stats(since, until, domain)

    def _flush_for_read(self) -> None:
        # If the write failed but the store still answers (say, SQLite busy for too long), show what
        # it has rather than nothing; if it is down, say so at once instead of waiting again.
        if not self.flush() and not self._storage_healthy():
            raise StorageError(self._last_error or "usage storage unavailable")

    def status(self) -> dict:
        """For GET /: backend, health, backlog and losses (no secrets)."""
        healthy = self._storage_healthy()
        return {
            "backend": self.storage.backend,
            "healthy": healthy,
            # Degraded: usage is waiting in memory because the store failed (or is failing now).
            "degraded": self._failing or not healthy,
            "pending": len(self._pending),
            "dropped": self._dropped,
            "lastError": self._last_error,
        }

    def _storage_healthy(self) -> bool:
        try:
            return bool(self.storage.healthy())
        except Exception as exc:
            self._last_error = _mask_error(exc)
            return False

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def dropped(self) -> int:
        return self._dropped
