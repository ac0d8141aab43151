"""The shared limiter state, on the real parts: the host's SQLite file from several processes, and Redis."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.keys.limits import Limits
from app.keys.local import LocalState
from app.keys.redis_state import RedisState

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["local", "redis"])
def state(request, tmp_path):
    if request.param == "local":
        st = LocalState(str(tmp_path / "limits.sqlite3"))
    else:
        url = request.getfixturevalue("redis_url")
        st = RedisState(url, request.getfixturevalue("redis_prefix"))
    yield st
    st.close()


def test_rpm_window(state):
    lim = Limits(rpm=3)
    now = time.time()
    assert [state.admit("k1", lim, now, None).allowed for _ in range(5)] == [True, True, True, False, False]
    refused = state.admit("k1", lim, now, None)
    assert refused.reason == "requests" and 55 < refused.retry_after <= 61
    assert state.admit("k2", lim, now, None).allowed  # another key has its own window
    assert state.usage("k1", time.time())[0] == 3


def test_tokens_count_at_finish(state):
    lim = Limits(tpm=1000)
    now = time.time()
    assert state.admit("k", lim, now, None).allowed
    state.finish("k", None, 1500, now, True)
    refused = state.admit("k", lim, time.time(), None)
    assert refused.reason == "tokens" and refused.tokens_used == 1500
    assert state.usage("k", time.time())[1] == 1500


def test_concurrency_slots_release(state):
    lim = Limits(concurrency=2)
    now = time.time()
    assert state.admit("k", lim, now, "a").allowed
    assert state.admit("k", lim, now, "b").allowed
    assert state.admit("k", lim, now, "c").reason == "concurrency"
    state.finish("k", "a", 0, now, False)
    assert state.admit("k", lim, now, "c").allowed
    state.renew([("k", "b"), ("k", "c")], time.time())
    assert state.usage("k", time.time())[2] == 2


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from app.keys.limits import Limits
    kind, target, prefix, go = sys.argv[2:6]
    if kind == "local":
        from app.keys.local import LocalState
        st = LocalState(target)
    else:
        from app.keys.redis_state import RedisState
        st = RedisState(target, prefix)
    import os
    while not os.path.exists(go):
        time.sleep(0.002)
    ok = sum(st.admit("shared", Limits(rpm=50), time.time(), None).allowed for _ in range(40))
    print(ok)
""")


@pytest.mark.parametrize("kind", ["local", "redis"])
def test_exact_across_processes(kind, tmp_path, request):
    """Four processes (workers or hosts) race 160 admissions against rpm 50: exactly 50 get in."""
    if kind == "local":
        target, prefix = str(tmp_path / "limits.sqlite3"), ""
    else:
        target, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(REPO), kind, target, prefix, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    time.sleep(1.0)
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert sum(int(o[0]) for o in outs) == 50


def test_local_steps_of_two_workers_interleaved(tmp_path):
    """Each process keeps the state it last wrote; a step by another worker in between must be seen."""
    path = str(tmp_path / "limits.sqlite3")
    a, b = LocalState(path), LocalState(path)
    lim = Limits(rpm=5, concurrency=2)
    now = time.time()
    try:
        assert a.admit("k", lim, now, "a1").allowed
        assert b.admit("k", lim, now, "b1").allowed
        assert a.admit("k", lim, now, "a2").reason == "concurrency"  # b's lease, written after a's own step
        b.finish("k", "b1", 0, now, False)
        assert a.admit("k", lim, now, "a2").allowed
        assert a.usage("k", now) == b.usage("k", now) == (3, 0, 2)
        with pytest.raises(ZeroDivisionError):  # a step that fails leaves the row and the kept state as they were
            a._step("k", lambda st: (st["r"].clear(), 1 / 0))
        refused = a.admit("k", lim, now, None)  # both slots still held, and the 3 requests still counted
        assert (refused.reason, refused.requests_used, refused.in_flight) == ("concurrency", 3, 2)
    finally:
        a.close()
        b.close()
