"""Usage accounting: an in-memory buffer on the request path, a background flusher, the console report.

`record()` appends the record to this process's journal (app.services.journal) and to a bounded deque.
A flusher greenlet writes batches (every second or every 100 records) to the storage; if the storage is
down the records stay buffered, up to a bound, and are written once it is back. What a killed process
left in its journal is adopted by the next flusher that finds it. A reporter greenlet prints the table from the one process holding report
leadership, and only when the totals changed.
"""
from __future__ import annotations

import collections
import logging
import os
import time
from datetime import datetime
from typing import Callable, Sequence

import gevent
import gevent.event
import gevent.lock

from ..masking import mask_text
from ..records import RequestRecord
from .report import format_report, format_started
from ..storage.base import Storage, StorageDataError, StorageError
from ..settings import Settings

log = logging.getLogger("nexus.accounting")

MAX_PENDING = 50_000
BATCH_SIZE = 100
FLUSH_INTERVAL = 1.0
MAX_RETRY_WAIT = 10.0
# One transaction never carries more than this, so a long backlog is written in bounded steps.
MAX_WRITE = 1000
# Flusher rounds between looks for journals that a dead process left behind.
ADOPT_EVERY = 10


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
                 clock: Callable[[], float] = time.time, journal: bool = False) -> None:
        self.settings = settings
        self.use_journal = journal
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
        self._journal = None
        self._replayed: set[str] = set()  # request ids adopted from a dead process's journal
        self._inflight: dict[str, RequestRecord] = {}  # begun, not finished (journaled again at each seal)
        self._journal_failed = False

    # --- the request path ------------------------------------------------------------------

    def begin(self, rec: RequestRecord) -> None:
        """The upstream is about to be called: journal the request, so a kill cannot make it vanish."""
        journal = self._journal
        if journal is not None:
            self._inflight[rec.request_id] = rec
            try:
                journal.append_begun(rec)
            except Exception:
                pass  # reported by record() if the journal keeps failing

    def record(self, rec: RequestRecord) -> None:
        """Queue one request's usage. O(1); never raises, never blocks; one append to the journal."""
        journal = self._journal
        if journal is not None:
            self._inflight.pop(rec.request_id, None)
            try:
                journal.append(rec)
            except Exception as exc:  # a full disk must not fail the request; the batch still has it
                if not self._journal_failed:
                    self._journal_failed = True
                    log.warning("usage journal write failed (%s); records are only in memory until written", exc)
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
                # Every record pending now is in the segments sealed here; once that many records are
                # written (or given up by the bound), those segments can go.
                todo = len(self._pending)
                mark = self._seal()
                while todo > 0 and self._pending:
                    batch = self._take(min(MAX_WRITE, todo))
                    todo -= len(batch)
                    if not self._write(batch):
                        return False
                self._discard(mark)
            return True

    def _write(self, batch: list[RequestRecord]) -> bool:
        """One batch to the store; False (batch restored) when the store is unreachable."""
        replayed = self._replayed
        skip = bool(replayed) and any(r.request_id in replayed for r in batch)
        try:
            if skip:
                self.storage.write_batch(batch, skip_existing=True)
            else:
                self.storage.write_batch(batch)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # killed mid-write (shutdown): keep the batch
                self._restore(batch)
                raise
            if isinstance(exc, StorageDataError):
                # The store works but refused something in this batch: write the records one by
                # one so a single bad record cannot hold the whole buffer back forever.
                return self._write_one_by_one(batch)
            self._restore(batch)
            if not self._failing:
                log.warning("usage storage unavailable, keeping %d records buffered: %s",
                            len(self._pending), _mask_error(exc))
            self._failing = True
            self._last_error = _mask_error(exc)
            return False
        if skip:
            for r in batch:
                replayed.discard(r.request_id)
        if self._failing:
            log.warning("usage storage is back; buffered records written")
        self._failing = False
        self._last_error = None
        return True

    def _write_one_by_one(self, batch: list[RequestRecord]) -> bool:
        """False (nothing lost) if the store turns out to be unreachable after all."""
        for i, rec in enumerate(batch):
            try:
                if rec.request_id in self._replayed:
                    self.storage.write_batch([rec], skip_existing=True)
                else:
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

    # --- the journal -----------------------------------------------------------------------

    def _open_journal(self) -> None:
        from .journal import Journal, journal_dir, store_tag

        try:
            self._journal = Journal(journal_dir(self.settings), store_tag(self.settings))
        except OSError as exc:
            log.warning("usage journal unavailable (%s); a killed worker may lose its last second of usage", exc)

    def _seal(self) -> int:
        journal = self._journal
        if journal is None:
            return 0
        try:
            mark = journal.seal()
            if self._inflight:
                # Their "begun" lines are in the sealed segments, which go once the batch is written.
                journal.append_begun_many(list(self._inflight.values()))
            return mark
        except OSError:
            return 0

    def _discard(self, mark: int) -> None:
        if self._journal is not None and mark:
            self._journal.discard(mark)

    def adopt_orphans(self) -> int:
        """Take into this process's batch what dead processes left in their journals. Returns how many."""
        journal = self._journal
        if journal is None:
            return 0
        from .journal import finish_orphan, orphans, read_segments

        total = 0
        for owner, paths, fd in orphans(journal.dir, journal.tag, skip_owner=journal.owner):
            try:
                records = read_segments(paths)
                journal.append_many(records)  # ours now: safe before the orphan's files go
            except Exception as exc:
                os.close(fd)
                log.warning("could not adopt a stopped worker's journal: %s", exc)
                continue
            for rec in records:
                self._replayed.add(rec.request_id)
            self._pending.extend(records)
            self._restore(())
            finish_orphan(journal.dir, journal.tag, owner, paths, fd)
            total += len(records)
        if total:
            log.warning("adopted %d usage records a stopped worker had not written", total)
            self._wake.set()
        return total

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
        rounds = 0
        while not self._stop.is_set():
            if rounds % ADOPT_EVERY == 0:
                try:
                    self.adopt_orphans()
                except Exception:  # pragma: no cover - never let the flusher die
                    log.exception("journal adoption failed")
            rounds += 1
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
        if self.use_journal and self._journal is None:
            self._open_journal()
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
        written = self.flush()
        if not written:
            if self._journal is not None:
                log.warning("usage storage unavailable at shutdown: %d records kept in the journal (%s), written "
                            "by the next process that starts", len(self._pending), self._journal.dir)
            else:
                log.warning("usage storage unavailable at shutdown: %d records not written", len(self._pending))
        if self._journal is not None:
            journal, self._journal = self._journal, None
            try:
                # Requests still in flight keep their "begun" lines for whoever replays this journal.
                journal.close(keep=not written or bool(self._inflight))
            except OSError as exc:
                log.warning("closing the usage journal failed: %s", exc)
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
