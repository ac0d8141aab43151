"""A per-process journal of usage records not yet in the store, so a killed worker loses none.

Each record is appended (one JSON line, no fsync: the page cache outlives a killed process) before it
joins the in-memory batch. A request also gets a shorter "begun" line just before the upstream is
called, so one that was in flight when its worker was killed is still counted (as `worker_killed`,
with no tokens): the upstream saw it, so the count must too. The journal is a series of segments; the flusher seals the current one before
writing a batch and deletes the sealed segments once every record they hold is in the store.

Whoever finds segments of a process that is gone replays them: a worker that starts (it adopts them into
its own batch), or the master when it reaps a dead worker. A process is alive while it holds the flock
on its owner file; the kernel releases that lock however the process ends. Replays can overlap with a
batch that was written just before the kill, so the store skips request ids it already has.

Names: `owner-<tag>-<id>.lock` and `seg-<tag>-<id>-<seq>.jsonl`, where `<tag>` names the store the
records belong to (two proxies sharing a directory never replay into each other's store) and `<id>`
is the pid plus a random part (a reused pid is a new owner).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
from dataclasses import fields
from typing import Iterator

from .. import jsoncodec
from ..records import RequestRecord

log = logging.getLogger("nexus.journal")

# Only what the store keeps; the Slack texts and the masked key stay out of the file.
_NOT_STORED = frozenset({"user_text", "assistant_text", "tool_names", "api_key_masked", "error_message",
                         "slack_override"})
FIELDS = tuple(f.name for f in fields(RequestRecord) if f.name not in _NOT_STORED)
# The limiter's hold on a key is this process's own state: its slot stays (so every line has the same fields)
# but is written empty. Written, it would cost a repr of the key's record on every request and put the
# key's hash in the file.
_EMPTY = frozenset({"admission"})
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str).encode


def store_tag(settings) -> str:
    """A short name for the store the settings point at (database URL, else the SQLite path)."""
    url = getattr(settings, "database_url", None)
    ident = url if url else "sqlite:" + os.path.abspath(getattr(settings, "usage_db_path", "data/usage.sqlite3"))
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def journal_dir(settings) -> str:
    configured = getattr(settings, "usage_journal_dir", None)
    if configured:
        return os.path.abspath(configured)
    db_path = getattr(settings, "usage_db_path", "data/usage.sqlite3")
    return os.path.join(os.path.dirname(os.path.abspath(db_path)), "usage-journal")


def encode(rec: RequestRecord) -> bytes:
    values = []
    for name in FIELDS:
        v = getattr(rec, name, None) if name not in _EMPTY else None
        if type(v) is float and (v != v or v in (float("inf"), float("-inf"))):
            v = None  # an upstream's 1e999 must not make the line unreadable
        values.append(v)
    try:
        return jsoncodec.dumps(values) + b"\n"
    except ValueError:
        pass
    try:  # a lone surrogate in a model name, say: the standard encoder escapes it
        return _dumps(values).encode() + b"\n"
    except (ValueError, TypeError):
        return _dumps([v if isinstance(v, (str, int, bool, type(None))) else None for v in values]).encode() + b"\n"


BEGUN = b"B"
KILLED = "worker_killed"


def encode_begun(rec: RequestRecord) -> bytes:
    return BEGUN + encode(rec)


def decode(line: bytes) -> RequestRecord | None:
    if line[:1] == BEGUN:
        line = line[1:]
    try:
        values = json.loads(line)
    except ValueError:
        return None  # the last line of a killed process may be cut short
    # a line written before a field was added is a prefix of today's fields
    if not isinstance(values, list) or not 0 < len(values) <= len(FIELDS):
        return None
    data = dict(zip(FIELDS, values))
    if not isinstance(data.get("request_id"), str) or not data["request_id"]:
        return None
    try:
        return RequestRecord(**data)
    except TypeError:
        return None


class Journal:
    """This process's journal. `append` is on the request path: one write(2) of one line."""

    def __init__(self, directory: str, tag: str) -> None:
        self.dir = directory
        self.tag = tag
        self.owner = f"{os.getpid()}.{secrets.token_hex(4)}"
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._owner_fd = _locked_file(directory, f"owner-{tag}-{self.owner}.lock")
        self._seq = 0
        self._sealed: list[str] = []  # segment paths, oldest first
        self._fd = -1
        self._path = ""
        self._used = False
        self._open_segment()

    def _open_segment(self) -> None:
        self._seq += 1
        self._path = os.path.join(self.dir, f"seg-{self.tag}-{self.owner}-{self._seq:08d}.jsonl")
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._used = False

    def append(self, rec: RequestRecord) -> None:
        os.write(self._fd, encode(rec))
        self._used = True

    def append_many(self, records: list[RequestRecord]) -> None:
        if records:
            os.write(self._fd, b"".join(encode(r) for r in records))
            self._used = True

    def append_begun(self, rec: RequestRecord) -> None:
        os.write(self._fd, encode_begun(rec))
        self._used = True

    def append_begun_many(self, records) -> None:
        data = b"".join(encode_begun(r) for r in records)
        if data:
            os.write(self._fd, data)
            self._used = True

    def seal(self) -> int:
        """Close the current segment (everything appended so far) and start a new one. Returns a mark."""
        if self._used:
            os.close(self._fd)
            self._sealed.append(self._path)
            self._open_segment()
        return len(self._sealed)

    def discard(self, mark: int) -> None:
        """Delete the segments sealed up to `mark`: their records are in the store."""
        done, self._sealed = self._sealed[:mark], self._sealed[mark:]
        for path in done:
            _unlink(path)

    def close(self, keep: bool) -> None:
        """At exit. `keep`: records are still unwritten, leave the segments for a replay."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not keep:
            for path in [*self._sealed, self._path]:
                _unlink(path)
            self._sealed = []
            _unlink(os.path.join(self.dir, f"owner-{self.tag}-{self.owner}.lock"))
        os.close(self._owner_fd)  # releases the lock: the segments left are anyone's to replay


def orphans(directory: str, tag: str, skip_owner: str | None = None) -> Iterator[tuple[str, list[str], int]]:
    """(owner, segment paths, lock fd) for each owner of `tag` that is gone. Close the fd when done."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    by_owner: dict[str, list[str]] = {}
    prefix = f"seg-{tag}-"
    for name in names:
        if name.startswith(prefix) and name.endswith(".jsonl"):
            owner = name[len(prefix):-len(".jsonl")].rsplit("-", 1)[0]
            by_owner.setdefault(owner, []).append(name)
    for owner, segs in by_owner.items():
        if owner == skip_owner:
            continue
        lock_path = os.path.join(directory, f"owner-{tag}-{owner}.lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(os.path.join(directory, f"owner-{tag}-{owner}.lock"),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # alive (or another replayer has it)
            continue
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)  # another replayer finished with it a moment ago
            continue
        yield owner, [os.path.join(directory, n) for n in sorted(segs)], fd


def read_segments(paths: list[str]) -> list[RequestRecord]:
    """The records of a dead process: every finished one, plus one per request it had begun and not
    finished (the worker died with it in flight)."""
    finished: dict[str, RequestRecord] = {}
    begun: dict[str, RequestRecord] = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                for line in f:
                    rec = decode(line)
                    if rec is None:
                        continue
                    if line[:1] == BEGUN:
                        begun.setdefault(rec.request_id, rec)
                    else:
                        finished[rec.request_id] = rec
        except FileNotFoundError:
            continue
    for rid, rec in begun.items():
        if rid not in finished:
            rec.status = 0
            rec.error_type = KILLED
            rec.input_tokens = rec.output_tokens = rec.cache_read_input_tokens = 0
            rec.cache_creation_input_tokens = rec.tool_calls = 0
            rec.cache_creation_5m_input_tokens = rec.cache_creation_1h_input_tokens = 0
            rec.cost_usd = 0.0
            finished[rid] = rec
    return list(finished.values())


def finish_orphan(directory: str, tag: str, owner: str, paths: list[str], fd: int) -> None:
    """The orphan's records are safe elsewhere: delete its segments, then its owner file, then unlock."""
    for path in paths:
        _unlink(path)
    _unlink(os.path.join(directory, f"owner-{tag}-{owner}.lock"))
    os.close(fd)


def replay_into_store(settings, storage) -> int:
    """Write every orphaned record straight to `storage` (the master's replay). Returns how many."""
    directory, tag = journal_dir(settings), store_tag(settings)
    total = 0
    for owner, paths, fd in orphans(directory, tag):
        try:
            records = read_segments(paths)
            for i in range(0, len(records), 1000):
                storage.write_batch(records[i:i + 1000], skip_existing=True)
        except Exception as exc:
            os.close(fd)  # left for a worker to adopt once the store is back
            log.warning("journal replay of %d records deferred: %s", len(records), str(exc).splitlines()[0][:200])
            continue
        finish_orphan(directory, tag, owner, paths, fd)
        total += len(records)
    if total:
        log.warning("replayed %d usage records a stopped worker had not written", total)
    return total


def _locked_file(directory: str, name: str) -> int:
    """Create `name` already flocked: made under a temporary name, locked, then renamed into place,
    so no replayer can ever see it unlocked while its owner lives."""
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(tmp, os.path.join(directory, name))
    return fd


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove journal file %s: %s", path, exc)
