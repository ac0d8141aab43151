"""The usage journal: what a killed process had not written reaches the store exactly once, on SQLite and
on PostgreSQL, whether a starting worker adopts it or the master replays it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.records import RequestRecord
from app.services import journal as journal_mod
from app.services.accounting import Accounting
from app.storage import open_storage
from app.storage.base import StorageError
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def env(request, tmp_path) -> dict:
    out = {"TOKEN_REPORT_INTERVAL": "0", "USAGE_DB_PATH": str(tmp_path / "data" / "usage.sqlite3")}
    if request.param == "postgres":
        out["DATABASE_URL"] = request.getfixturevalue("pg_url")
    return out


def settings_for(env: dict) -> Settings:
    return Settings.from_env(env)


# A worker that records `n` requests, has `flushed` of them written, and is then killed with SIGKILL.
# With `keep_written`, the segments of the written batch are not deleted first: the kill lands between
# the write and the clean-up, the case that needs the store to skip request ids it already has.
CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    from app.records import RequestRecord
    from app.services.accounting import Accounting
    from app.storage import open_storage
    from app.settings import Settings
    env, n, flushed, keep_written = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    in_flight = int(sys.argv[5])
    settings = Settings.from_env(env)
    storage = open_storage(settings)
    storage.migrate()
    acc = Accounting(settings, storage, journal=True)
    acc.start()  # opens the journal; the flusher greenlet never gets to run here
    if keep_written:
        acc._journal.discard = lambda mark: None
    def rec(i):
        return RequestRecord(request_id="req_kill_%d" % i, timestamp=time.time(), domain="team.example.com",
                             mode="passthrough", status=200, input_tokens=10, output_tokens=3, model_used="m")
    for i in range(flushed):
        acc.record(rec(i))
    assert acc.flush()
    for i in range(flushed, n):
        acc.record(rec(i))
    for i in range(n, n + in_flight):  # the upstream has these; the kill lands before they finish
        acc.begin(rec(i))
    print("ready", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def kill_a_worker(env: dict, n: int, flushed: int, keep_written: bool = False, in_flight: int = 0) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(env), str(n), str(flushed),
                           "1" if keep_written else "0", str(in_flight)], cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "ready", proc.stderr
    assert proc.returncode == -9


def requests_of(settings: Settings) -> int:
    storage = open_storage(settings)
    try:
        return storage.domain_stats().get("team.example.com", {}).get("requestCount", 0)
    finally:
        storage.close()


def test_a_starting_worker_adopts_what_a_killed_one_left(env):
    settings = settings_for(env)
    kill_a_worker(env, n=50, flushed=20)
    assert requests_of(settings) == 20  # the 30 buffered ones died with the process's memory
    storage = open_storage(settings)
    acc = Accounting(settings, storage, journal=True)
    acc.start()
    try:
        assert acc.adopt_orphans() == 30
        assert acc.flush()
        assert requests_of(settings) == 50
        assert acc.adopt_orphans() == 0  # nothing is adopted twice
    finally:
        acc.stop(final_report=False)
        storage.close()
    assert requests_of(settings) == 50
    assert not list(Path(journal_mod.journal_dir(settings)).glob("seg-*"))  # cleaned up after a clean stop


def test_a_record_written_just_before_the_kill_is_not_counted_twice(env):
    settings = settings_for(env)
    kill_a_worker(env, n=40, flushed=25, keep_written=True)
    assert requests_of(settings) == 25
    storage = open_storage(settings)
    acc = Accounting(settings, storage, journal=True)
    acc.start()
    try:
        assert acc.adopt_orphans() == 40  # the written 25 are still in its journal
        assert acc.flush()
    finally:
        acc.stop(final_report=False)
        storage.close()
    assert requests_of(settings) == 40


def test_the_master_replays_a_dead_workers_journal_once(env):
    settings = settings_for(env)
    kill_a_worker(env, n=30, flushed=10, keep_written=True)
    storage = open_storage(settings)
    try:
        assert journal_mod.replay_into_store(settings, storage) == 30
        assert journal_mod.replay_into_store(settings, storage) == 0
    finally:
        storage.close()
    assert requests_of(settings) == 30


def test_requests_in_flight_at_the_kill_are_counted_as_killed(env):
    settings = settings_for(env)
    kill_a_worker(env, n=10, flushed=4, in_flight=3)
    storage = open_storage(settings)
    try:
        assert journal_mod.replay_into_store(settings, storage) == 9  # 6 finished + 3 begun
        stats = storage.domain_stats()["team.example.com"]
        rows = storage.model_stats()
    finally:
        storage.close()
    assert stats["requestCount"] == 13  # what the upstream was asked for
    assert stats["errorCount"] == 3
    assert stats["inputTokens"] == 100  # the killed ones add no tokens
    assert rows["m"]["requestCount"] == 13


def test_a_live_workers_journal_is_left_alone(env):
    settings = settings_for(env)
    storage = open_storage(settings)
    live = Accounting(settings, storage, journal=True)
    live.start()
    try:
        live.record(RequestRecord(request_id="req_live", timestamp=time.time(), domain="team.example.com",
                                  mode="passthrough", status=200))
        other = open_storage(settings)
        try:
            assert journal_mod.replay_into_store(settings, other) == 0
        finally:
            other.close()
        assert requests_of(settings) == 0
        assert live.flush()
        assert requests_of(settings) == 1
    finally:
        live.stop(final_report=False)
        storage.close()


class DownStorage:
    """A store that is unreachable (PostgreSQL during an outage)."""

    backend = "postgresql"

    def write_batch(self, records, skip_existing=False):
        raise StorageError("connection refused")

    def healthy(self) -> bool:
        return False


def test_records_buffered_during_an_outage_survive_the_stop(env, caplog):
    settings = settings_for(env)
    acc = Accounting(settings, DownStorage(), journal=True)
    acc.start()
    for i in range(12):
        acc.record(RequestRecord(request_id=f"req_outage_{i}", timestamp=time.time(), domain="team.example.com",
                                 mode="passthrough", status=200, input_tokens=1))
    acc.stop(final_report=False)
    assert "kept in the journal" in caplog.text
    # The database is back and the proxy starts again.
    storage = open_storage(settings)
    back = Accounting(settings, storage, journal=True)
    back.start()
    try:
        assert back.adopt_orphans() == 12
        assert back.flush()
    finally:
        back.stop(final_report=False)
        storage.close()
    assert requests_of(settings) == 12


def test_journal_lines_round_trip_and_tolerate_odd_values():
    rec = RequestRecord(request_id="req_x", timestamp=1.5, domain="d", mode="translation", input_tokens=7,
                        duration_ms=float("inf"), error_type="api_error", status=502, user_text="secret-ish text",
                        api_key_masked="sk-...abcd")
    line = journal_mod.encode(rec)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert b"secret-ish" not in line and b"sk-" not in line  # only what the store keeps
    back = journal_mod.decode(line)
    assert back is not None
    assert (back.request_id, back.input_tokens, back.status, back.error_type) == ("req_x", 7, 502, "api_error")
    assert journal_mod.decode(line[:-10]) is None  # the cut last line of a killed process is skipped


def test_a_begun_line_leaves_out_what_the_key_limiter_holds():
    """A request admitted by a client key journals its key id, but not the limiter's hold (the key's record)."""
    from app.keys.rules import ClientKey
    from app.keys.service import Admission

    key = ClientKey(id="key_abc", name="alice", key_hash="f" * 64, last4="wxyz", created_at=1.0, updated_at=1.0)
    rec = RequestRecord(request_id="req_k", timestamp=1.5, domain="d", mode="translation", key_id="key_abc")
    rec.admission = Admission(key, "lease-1")
    line = journal_mod.encode_begun(rec)
    assert b"f" * 64 not in line and b"lease-1" not in line and b"alice" not in line
    back = journal_mod.decode(line)
    assert back is not None and back.key_id == "key_abc" and back.admission is None
    assert len(json.loads(line[1:])) == len(journal_mod.FIELDS)  # the slot stays: every line has every field


def test_a_domains_slack_webhook_is_never_journaled_and_the_credential_is():
    webhook = "https://hooks.slack.com/services/T000/B000/journal-secret-hook"
    rec = RequestRecord(request_id="req_s", timestamp=1.5, domain="d", mode="passthrough", credential="a-max-1.json",
                        slack_override={"webhook_url": webhook, "channel": "#team"})
    line = journal_mod.encode_begun(rec)
    assert b"journal-secret-hook" not in line and b"#team" not in line
    back = journal_mod.decode(line)
    assert back is not None and back.credential == "a-max-1.json" and back.slack_override is None


def test_a_line_written_before_fields_were_added_still_replays():
    """A worker of the previous version killed before an upgrade left lines with fewer fields (a prefix)."""
    rec = RequestRecord(request_id="req_old", timestamp=1.5, domain="d", mode="translation", input_tokens=9,
                        status=200, credential="gone-by-then")
    values = json.loads(journal_mod.encode(rec))
    older = json.dumps(values[:journal_mod.FIELDS.index("credential")]).encode() + b"\n"
    back = journal_mod.decode(older)
    assert back is not None and (back.request_id, back.input_tokens, back.status) == ("req_old", 9, 200)
    assert back.credential is None
