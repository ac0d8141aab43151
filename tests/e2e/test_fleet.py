"""A fleet: several proxy hosts (separate gunicorn servers, own working directories) sharing one PostgreSQL.

Every proxy runs as users run it (gunicorn + gevent workers, passthrough mode) in front of the fake
upstream, with `DATABASE_URL` pointing at a fresh schema on the machine's PostgreSQL. Outages are
simulated by a TCP forwarder in this process (tests/e2e/fleet_helpers.py), never by touching the
server. What is checked is what an operator sees: `/token-stats`, `GET /`, the console output and
what reached the upstream.
"""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.fleet_helpers import PgForwarder, Usage, call, get_json, wait_for
from tests.fakes.server import FakeUpstream, ProxyServer

pytestmark = pytest.mark.timeout(120)

API_KEY = "sk-ant-api03-fleet-suite-key-0123456789abcdefghijklmnop"
REPORT_TITLE = "Token Usage Report"


# --------------------------------------------------------------------------- fixtures and helpers


class Fleet:
    """Starts proxies (in their own working directories) and stops them all at the end, in parallel."""

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.running: list[ProxyServer] = []

    def env(self, database_url: str, **extra: str) -> dict:
        env = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": self.fake.url, "TOKEN_REPORT_INTERVAL": "0",
               "DATABASE_URL": database_url}
        env.update(extra)
        return env

    def start(self, env: dict, cwd: Path, workers: int = 1, timeout: float = 30.0) -> ProxyServer:
        cwd.mkdir(parents=True, exist_ok=True)
        proxy = ProxyServer(env, workers=workers, cwd=cwd, timeout=timeout)
        proxy.fleet_spec = (env, cwd, workers)  # what a restart runs again (proxy.env has the old PORT)
        self.running.append(proxy)
        return proxy.start()

    def start_many(self, specs: list[tuple[dict, Path, int]]) -> list[ProxyServer]:
        with ThreadPoolExecutor(len(specs)) as pool:
            return list(pool.map(lambda s: self.start(*s), specs))

    def stop(self, *proxies: ProxyServer) -> None:
        threads = [threading.Thread(target=p.stop) for p in proxies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for p in proxies:
            assert p.proc is not None and p.proc.returncode == 0, \
                f"proxy exited with {p.proc.returncode if p.proc else None}:\n{p.output()[-3000:]}"

    def restart(self, *proxies: ProxyServer) -> list[ProxyServer]:
        """Graceful stop, then the same command again in the same working directory."""
        self.stop(*proxies)
        return self.start_many([p.fleet_spec for p in proxies])

    def close(self) -> None:
        threads = [threading.Thread(target=p.stop) for p in self.running]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)


@pytest.fixture
def fleet(fake_upstream: FakeUpstream) -> Iterator[Fleet]:
    f = Fleet(fake_upstream)
    yield f
    f.close()


@pytest.fixture
def forwarder() -> Iterator[PgForwarder]:
    with PgForwarder() as fwd:
        yield fwd


def send_all(jobs: list[tuple[ProxyServer, str, str, bool]], concurrency: int = 8) -> list[Usage]:
    """Run (proxy, host, text, stream) calls concurrently; every one must be a complete 200."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda j: call(j[0].url, j[1], j[2], stream=j[3]), jobs))


def totals(usages: list[Usage]) -> dict:
    return {"requestCount": len(usages), "inputTokens": sum(u.input_tokens for u in usages),
            "outputTokens": sum(u.output_tokens for u in usages)}


def domain_totals(proxy: ProxyServer, domain: str) -> dict | None:
    status, body = get_json(proxy.url, "/token-stats")
    if status != 200:
        return None
    row = body["stats"].get(domain)
    if row is None:
        return {}
    return {k: row[k] for k in ("requestCount", "inputTokens", "outputTokens")}


def wait_for_totals(proxy: ProxyServer, domain: str, expected: dict, timeout: float) -> None:
    seen: list = []

    def matches() -> bool:
        seen.append(domain_totals(proxy, domain))
        return seen[-1] == expected

    try:
        wait_for(matches, timeout, interval=0.3, what=f"{proxy.url}/token-stats to show {expected}")
    except AssertionError:
        raise AssertionError(f"{proxy.url}/token-stats never showed {expected}; last: {seen[-1:]}"
                             f"\n{proxy.output()[-3000:]}") from None


def health(proxy: ProxyServer) -> dict:
    status, body = get_json(proxy.url, "/")
    assert status == 200, body
    return body


def upstream_bearers(fake: FakeUpstream, marker: str) -> list[str]:
    """The Authorization header of every upstream /v1/messages request whose prompt contains `marker`."""
    out = []
    for entry in fake.requests("/v1/messages"):
        body = entry["body"] if isinstance(entry["body"], dict) else {}
        text = json.dumps(body.get("messages", ""))
        if marker in text:
            out.append(entry["headers"].get("authorization", ""))
    return out


# --------------------------------------------------------------------------- 1. shared usage


def test_two_hosts_share_usage_totals_and_keep_them_across_restarts(pg_url, fleet, tmp_path):
    env = fleet.env(pg_url, CLAUDE_API_KEY=API_KEY)
    a, b = fleet.start_many([(env, tmp_path / "a", 2), (env, tmp_path / "b", 2)])
    domain = "usage.fleet.test"

    jobs = [((a, b)[i % 2], domain, f"request {i} " + "x" * (i * 7), i % 3 == 0) for i in range(30)]
    usages = send_all(jobs)
    assert len(fleet.fake.requests("/v1/messages")) == 30
    expected = totals(usages)
    assert expected["inputTokens"] > 0 and expected["outputTokens"] > 0

    # Either host shows the fleet's sum, not its own half.
    for proxy in (a, b):
        wait_for_totals(proxy, domain, expected, timeout=15)
    status, body = get_json(b.url, "/token-stats")
    assert status == 200 and body["models"]["claude-sonnet-4-5"]["requestCount"] == 30
    status, ranged = get_json(a.url, f"/token-stats?since={int(time.time()) - 3600}")
    assert status == 200 and ranged["stats"][domain]["requestCount"] == 30

    # More traffic right before a graceful restart: shutdown writes what is still buffered.
    usages += send_all([((a, b)[i % 2], domain, f"late {i}", i % 2 == 0) for i in range(10)])
    expected = totals(usages)
    a, b = fleet.restart(a, b)
    for proxy in (a, b):
        assert domain_totals(proxy, domain) == expected, proxy.output()[-3000:]


# --------------------------------------------------------------------------- 2. OAuth on a fleet

OAUTH_DOMAIN = "team.fleet.test"
SEED_ACCESS = "sk-ant-oat01-fleetseed-" + "Qw3" * 15 + "zz"
SEED_REFRESH = "sk-ant-ort01-fleetseed-" + "Er4" * 15 + "yy"
OPERATOR_ACCESS = "sk-ant-oat01-operator-" + "Ty5" * 15 + "xx"
OPERATOR_REFRESH = "sk-ant-ort01-operator-" + "Ui6" * 15 + "ww"


def write_seed(cwd: Path, expires_at_ms: int, access: str = SEED_ACCESS, refresh: str = SEED_REFRESH) -> Path:
    path = cwd / "credentials" / "team.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "oauth", "oauth": {
        "accessToken": access, "refreshToken": refresh, "expiresAt": expires_at_ms,
        "scopes": ["user:inference", "user:profile"], "isMax": False}}))
    os.chmod(path, 0o600)
    return path


def test_oauth_refresh_happens_once_for_the_fleet_and_survives_restarts(pg_url, fleet, tmp_path):
    fake = fleet.fake
    fake.oauth(refresh_token=SEED_REFRESH, valid_tokens=[SEED_ACCESS])
    expires = int((time.time() + 30) * 1000)  # inside the 60 s refresh margin, still valid
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        write_seed(d, expires)  # each host has its own copy, as a deploy would put it there
    env = fleet.env(pg_url, DOMAIN_CREDENTIAL_MAPPING=json.dumps({OAUTH_DOMAIN: "credentials/team.json"}),
                    OAUTH_TOKEN_URL=fake.url + "/v1/oauth/token")
    a, b = fleet.start_many([(env, dirs[0], 2), (env, dirs[1], 2)])

    jobs = [((a, b)[i % 2], OAUTH_DOMAIN, f"burst-{'ab'[i % 2]}-{i}", i % 4 == 0) for i in range(60)]
    send_all(jobs, concurrency=60)
    assert fake.oauth_calls() == 1, "rotating refresh tokens allow exactly one refresh for the whole fleet"
    assert (a.output() + b.output()).count(f"OAuth token refreshed for {OAUTH_DOMAIN}") == 1
    state = fake.oauth_state()
    new_access = next(t for t in state["valid_tokens"] if t != SEED_ACCESS)
    new_refresh = state["refresh_token"]

    # From now on the upstream refuses the seed token: every later request must carry the new one.
    # (One at a time: while a worker that served none of the burst adopts the stored copy, its other
    # greenlets may go on with the still-valid seed token, as docs/credentials.md says.)
    fake.oauth(valid_tokens=[new_access])
    send_all([((a, b)[i % 2], OAUTH_DOMAIN, f"later-{'ab'[i % 2]}-{i}", i % 3 == 0) for i in range(24)],
             concurrency=1)
    for side in "ab":
        bearers = upstream_bearers(fake, f"later-{side}-")
        assert len(bearers) == 12 and set(bearers) == {"Bearer " + new_access}, side
    assert fake.oauth_calls() == 1

    # Restart both hosts with the stale seed file on disk again (a redeploy wipes the disk; the
    # seed's refresh token has been rotated away): the stored token is used, no new refresh.
    for d in dirs:
        write_seed(d, expires)
    a, b = fleet.restart(a, b)
    send_all([((a, b)[i % 2], OAUTH_DOMAIN, f"restarted-{'ab'[i % 2]}-{i}", i % 2 == 0) for i in range(10)])
    for side in "ab":
        bearers = upstream_bearers(fake, f"restarted-{side}-")
        assert len(bearers) == 5 and set(bearers) == {"Bearer " + new_access}, side
    assert fake.oauth_calls() == 1

    # An operator logs in again on host A (a new file; the old tokens are revoked): the newer file
    # wins there and says so, goes to the store, and host B takes it from the store when the
    # upstream refuses the old token, with no token-endpoint call.
    fake.oauth(refresh_token=OPERATOR_REFRESH, valid_tokens=[OPERATOR_ACCESS])
    write_seed(dirs[0], int((time.time() + 3600) * 1000), OPERATOR_ACCESS, OPERATOR_REFRESH)
    send_all([(a, OAUTH_DOMAIN, f"operator-a-{i}", False) for i in range(6)])
    assert f"credential file for {OAUTH_DOMAIN} is newer than the stored copy; using the file" in a.output()
    send_all([(b, OAUTH_DOMAIN, f"operator-b-{i}", False) for i in range(6)])
    for side in "ab":
        # a request sent with the revoked token is retried once with the operator's (after the 401)
        bearers = upstream_bearers(fake, f"operator-{side}-")
        assert set(bearers) <= {"Bearer " + OPERATOR_ACCESS, "Bearer " + new_access}, side
        assert bearers.count("Bearer " + OPERATOR_ACCESS) == 6 and bearers[-1] == "Bearer " + OPERATOR_ACCESS, side
    assert fake.oauth_calls() == 1
    for proxy in (a, b):
        cred = health(proxy)["credentials"]
        assert OAUTH_DOMAIN in json.dumps(cred)
        for secret in (SEED_ACCESS, SEED_REFRESH, new_access, new_refresh, OPERATOR_ACCESS, OPERATOR_REFRESH):
            assert secret not in json.dumps(cred)
            assert secret not in proxy.output()


# --------------------------------------------------------------------------- 3. one reporter


def test_the_console_report_is_printed_by_one_host_at_a_time(pg_url, fleet, tmp_path):
    env = fleet.env(pg_url, CLAUDE_API_KEY=API_KEY, TOKEN_REPORT_INTERVAL="1")
    a, b = fleet.start_many([(env, tmp_path / "a", 1), (env, tmp_path / "b", 1)])
    domain = "report.fleet.test"

    # Traffic on both hosts for several report ticks (a table is printed only when totals changed).
    for round_ in range(5):
        send_all([(a, domain, f"r{round_}a", False), (b, domain, f"r{round_}b", False)])
        time.sleep(1.1)
    wait_for(lambda: a.output().count(REPORT_TITLE) + b.output().count(REPORT_TITLE) >= 3, 10,
             what="report tables")
    counts = {"a": a.output().count(REPORT_TITLE), "b": b.output().count(REPORT_TITLE)}
    assert sorted(counts.values())[0] == 0 and sorted(counts.values())[1] >= 3, counts
    leader, follower = (a, b) if counts["a"] else (b, a)

    # The reporter goes away: the other host takes over and prints the fleet's totals.
    fleet.stop(leader)
    send_all([(follower, domain, "after-handover", False)])
    wait_for(lambda: report_requests(follower.output(), domain) == [11], 15,
             what="the remaining host to take over the report with the fleet's 11 requests")


def report_requests(output: str, domain: str) -> list[int]:
    """The request count of `domain` in each report table of `output` (the last one's included)."""
    counts = []
    for table in output.split(REPORT_TITLE)[1:]:
        for line in table.splitlines():
            if line.startswith(domain + " "):
                counts.append(int(line[len(domain):].split()[0]))
                break
    return counts[-1:]


# --------------------------------------------------------------------------- 4./5. database outages


def test_database_unreachable_from_the_start(pg_url, forwarder, fleet, tmp_path):
    forwarder.down()  # connections are refused until further notice
    password = "fleet-db-pw-9f8e7d6c5b4a"
    url = forwarder.url_for(pg_url).replace("postgres@", f"postgres:{password}@")  # trust auth ignores it
    a = fleet.start(fleet.env(url, CLAUDE_API_KEY=API_KEY), tmp_path / "a", workers=1)
    domain = "outage.fleet.test"

    usages = send_all([(a, domain, f"down {i}", i % 3 == 0) for i in range(12)])
    body = wait_for(lambda: (lambda h: h if h["storage"]["degraded"] else None)(health(a)), 15,
                    what="GET / to show the storage degraded")
    assert body["status"] == "degraded"
    assert body["storage"]["backend"] == "postgresql" and body["storage"]["pending"] == 12
    assert body["storage"]["dropped"] == 0
    status, stats = get_json(a.url, "/token-stats")
    assert status == 503 and stats["error"]["type"] == "api_error"
    assert password not in json.dumps(body) and password not in json.dumps(stats)

    forwarder.up()
    wait_for_totals(a, domain, totals(usages), timeout=25)
    body = wait_for(lambda: (lambda h: h if not h["storage"]["degraded"] else None)(health(a)), 10,
                    what="GET / to show the storage healthy again")
    assert body["status"] == "ok" and body["storage"]["pending"] == 0 and body["storage"]["dropped"] == 0
    assert password not in a.output()


def test_database_lost_mid_run_then_restored_loses_no_request(pg_url, forwarder, fleet, tmp_path):
    env = fleet.env(forwarder.url_for(pg_url), CLAUDE_API_KEY=API_KEY)
    a = fleet.start(env, tmp_path / "a", workers=2)
    domain = "midrun.fleet.test"
    usages = send_all([(a, domain, f"before {i}", i % 2 == 0) for i in range(10)])
    wait_for_totals(a, domain, totals(usages), timeout=15)

    # The database host vanishes: open connections die, new ones hang unanswered.
    forwarder.down(blackhole=True)
    usages += send_all([(a, domain, f"during {i}", i % 2 == 0) for i in range(20)])
    body = wait_for(lambda: (lambda h: h if h["storage"]["degraded"] else None)(health(a)), 20,
                    what="GET / to show the storage degraded")
    assert body["status"] == "degraded"
    usages += send_all([(a, domain, f"still down {i}", i % 2 == 1) for i in range(6)])
    assert len(usages) == 36

    forwarder.up()
    wait_for_totals(a, domain, totals(usages), timeout=30)
    body = wait_for(lambda: (lambda h: h if not h["storage"]["degraded"] else None)(health(a)), 15,
                    what="GET / to show the storage healthy again")
    assert body["storage"]["dropped"] == 0


# --------------------------------------------------------------------------- 6. cooperative under gevent


def test_a_stalled_database_does_not_hold_up_a_streaming_request(pg_url, forwarder, fleet, tmp_path):
    fake = fleet.fake
    a = fleet.start(fleet.env(forwarder.url_for(pg_url), CLAUDE_API_KEY=API_KEY), tmp_path / "a", workers=1)
    domain = "slowdb.fleet.test"
    usages = send_all([(a, domain, "warm-up", False)])
    wait_for_totals(a, domain, totals(usages), timeout=15)  # pool connected, schema migrated

    # The database stops answering while one greenlet of the only worker is inside a query.
    forwarder.stall()
    reader: dict = {}
    thread = threading.Thread(target=lambda: reader.update(result=domain_totals(a, domain)), daemon=True)
    thread.start()
    assert forwarder.held.wait(15), "the worker never sent the /token-stats query"

    # Meanwhile a stream is relayed event by event, start to finish, by that same worker.
    stream_events = [{"event": "message_start", "data": {"type": "message_start", "message": {
        "id": "msg_slowdb", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 77, "output_tokens": 1}}}}]
    stream_events += [{"event": "content_block_start", "data": {"type": "content_block_start", "index": 0,
                                                                "content_block": {"type": "text", "text": ""}}}]
    stream_events += [{"event": "content_block_delta", "data": {"type": "content_block_delta", "index": 0,
                                                                "delta": {"type": "text_delta", "text": f"w{i} "}}}
                      for i in range(10)]
    stream_events += [{"event": "content_block_stop", "data": {"type": "content_block_stop", "index": 0}},
                      {"event": "message_delta", "data": {"type": "message_delta", "delta": {
                          "stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 12}}},
                      {"event": "message_stop", "data": {"type": "message_stop"}}]
    fake.script("/v1/messages", [{"sse": stream_events, "gap_ms": 50}])
    streamed = call(a.url, domain, "stream while the database is stalled", stream=True, timeout=15)
    assert streamed.events.count("content_block_delta") == 10 and streamed.input_tokens == 77
    assert forwarder.stalled and thread.is_alive(), "the database query finished early: nothing was proven"
    usages.append(streamed)
    usages += send_all([(a, domain, "json while stalled", False)])
    assert thread.is_alive()

    forwarder.release()
    thread.join(20)
    assert reader.get("result") is not None, reader
    wait_for_totals(a, domain, totals(usages), timeout=15)
