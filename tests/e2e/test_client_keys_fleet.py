"""Client keys on a fleet: two proxy instances of two gunicorn workers each, sharing one PostgreSQL store and
one Redis, keys managed with the `keys` CLI while they run. Limits hold across all four workers."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fakes.server import REPO_ROOT, ProxyServer

UPSTREAM_KEY = "sk-upstream-openai-key-fleet-5e6f7a8b9c0d"
ADMIN_KEY = "nexus-admin-key-fleet-1a2b3c4d5e6f7a8b"
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
PRICES = json.dumps({"openai/gpt-4.1": {"input": 1000, "output": 1000}})  # ~3 cents a request


def keys_cli(env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run([sys.executable, "-m", "app", "keys", *args], capture_output=True, text=True,
                          env=full, cwd=str(cwd), timeout=60)


def post(url: str, key: str | None, body: dict | None = None, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
        if key:
            headers["x-api-key"] = key
        conn.request("POST", "/v1/messages", body=json.dumps(body or MESSAGE), headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get(url: str, path: str, key: str | None = None) -> tuple[int, bytes]:
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers={"x-api-key": key} if key else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def fleet(pg_url, redis_url, redis_prefix, fake_upstream, tmp_path):
    """(the two proxies, the env the CLI needs, a function that creates a key with the CLI)."""
    store_env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": redis_prefix}
    env = {
        **store_env, "ANTHROPIC_PROXY_BASE_URL": fake_upstream.url, "CLAUDE_CODE_PROXY_API_KEY": UPSTREAM_KEY,
        "PROXY_API_KEYS": ADMIN_KEY, "KEYS_REFRESH_INTERVAL": "1", "MODEL_PRICES": PRICES,
        "STREAM_PING_INTERVAL": "0", "UPSTREAM_MAX_RETRIES": "0",
        "TELEMETRY_ENDPOINT": fake_upstream.url + "/telemetry", "SLACK_WEBHOOK_URL": fake_upstream.url + "/slack",
    }
    cwd = tmp_path / "cli"
    cwd.mkdir()

    def create(*flags: str) -> dict:
        out = keys_cli(store_env, "create", "--json", *flags, cwd=cwd)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # one key exists before the servers start, so they are locked from their first request
    first = create("--name", "seed")
    proxies = [ProxyServer(env, workers=2) for _ in range(2)]
    starters = [threading.Thread(target=p.start) for p in proxies]
    for t in starters:
        t.start()
    for t in starters:
        t.join(60)
    try:
        yield proxies, store_env, create, cwd, first
    finally:
        for p in proxies:
            p.stop()


def both(proxies, i: int):
    return proxies[i % 2].url


def test_rpm_10_with_30_concurrent_requests_across_both_instances(fleet, fake_upstream):
    proxies, _env, create, _cwd, _seed = fleet
    key = create("--name", "alice", "--rpm", "10")["key"]
    time.sleep(1.5)  # within KEYS_REFRESH_INTERVAL every worker knows it (no request needed to learn it)
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
        results = list(pool.map(lambda i: post(both(proxies, i), key), range(30)))
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 10 and statuses.count(429) == 20, statuses
    for status, headers, body in results:
        if status == 429:
            assert 1 <= int(headers["retry-after"]) <= 60
            assert headers["anthropic-ratelimit-requests-limit"] == "10"
            assert headers["anthropic-ratelimit-requests-remaining"] == "0"
            assert json.loads(body)["error"]["type"] == "rate_limit_error"
    assert len(fake_upstream.requests("/chat/completions")) == 10


def test_concurrency_2_with_5_slow_streams(fleet, fake_upstream):
    proxies, _env, create, _cwd, _seed = fleet
    key = create("--name", "bob", "--concurrency", "2")["key"]
    time.sleep(1.5)
    fake_upstream.script("/chat/completions", [{"gap_ms": 400, "first_byte_ms": 1500}] * 5)
    body = dict(MESSAGE, stream=True)
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda i: post(both(proxies, i), key, body), range(5)))
    statuses = [r[0] for r in results]
    assert statuses.count(200) == 2 and statuses.count(429) == 3, statuses
    assert all(b"message_stop" in r[2] for r in results if r[0] == 200)
    # the slots came back when the streams ended
    assert post(proxies[0].url, key)[0] == 200 and post(proxies[1].url, key)[0] == 200


def test_tpm_across_instances(fleet):
    proxies, _env, create, _cwd, _seed = fleet
    key = create("--name", "carol", "--tpm", "50")["key"]
    time.sleep(1.5)
    assert post(proxies[0].url, key)[0] == 200  # ~29 tokens
    assert post(proxies[1].url, key)[0] == 200  # ~58: over from now on
    # A request's tokens count once it has finished, which is just after its last byte went out: the client
    # can have the answer a moment before the other instance has counted it.
    time.sleep(0.2)
    status, headers, _ = post(proxies[0].url, key)
    assert status == 429 and headers["anthropic-ratelimit-tokens-limit"] == "50"
    assert int(headers["anthropic-ratelimit-tokens-remaining"]) == 0 and int(headers["retry-after"]) >= 1


def test_budget_model_globs_and_expiry(fleet):
    proxies, _env, create, _cwd, _seed = fleet
    spender = create("--name", "dave", "--budget", "0.05/day")
    globbed = create("--name", "erin", "--models", "claude-*haiku*")
    expires_at = int(time.time()) + 20  # time for the CLI and the budget loop on a loaded machine
    expiring = create("--name", "frank", "--expires", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at)))
    time.sleep(1.5)
    assert post(proxies[0].url, expiring["key"])[0] == 200
    statuses = []
    for i in range(12):
        status, _h, body = post(both(proxies, i), spender["key"])
        statuses.append(status)
        if status == 403:
            break
        time.sleep(0.4)
    assert statuses[-1] == 403 and statuses.count(200) >= 2, statuses
    message = json.loads(body)["error"]["message"]
    tomorrow = time.strftime("%Y-%m-%dT00:00Z", time.gmtime(time.time() + 86400))
    assert "'dave'" in message and "$0.05/day" in message and f"renews {tomorrow}" in message and "spent $0.0" in message
    status, _h, body = post(proxies[1].url, globbed["key"])
    assert status == 403 and "claude-sonnet-4-5" in json.loads(body)["error"]["message"]
    assert post(proxies[0].url, globbed["key"], dict(MESSAGE, model="claude-haiku-4-5"))[0] == 200
    time.sleep(max(0.0, expires_at - time.time()) + 0.2)
    status, _h, body = post(proxies[1].url, expiring["key"])
    assert status == 401 and "expired" in json.loads(body)["error"]["message"]


def test_revoke_and_update_with_the_cli_while_the_servers_run(fleet):
    proxies, env, create, cwd, _seed = fleet
    made = create("--name", "gina")
    deadline = time.monotonic() + 5
    while post(proxies[0].url, made["key"])[0] != 200:  # a new key works within 5 s without a restart
        assert time.monotonic() < deadline
        time.sleep(0.2)
    out = keys_cli(env, "update", made["id"], "--rpm", "1", cwd=cwd)
    assert out.returncode == 0 and "rpm=1" in out.stdout, out.stderr
    time.sleep(2.5)
    results = [post(both(proxies, i), made["key"])[0] for i in range(3)]
    assert results.count(429) >= 2, results
    shown = json.loads(keys_cli(env, "show", made["id"], "--json", cwd=cwd).stdout)
    assert shown["rpm"] == 1 and shown["usage"]["requestsLastMinute"] == 1
    assert keys_cli(env, "revoke", made["id"], cwd=cwd).returncode == 0
    revoked_at = time.monotonic()
    seen = set()
    while time.monotonic() - revoked_at < 5.5:
        status, _h, body = post(both(proxies, len(seen)), made["key"])
        if status == 401:
            assert "revoked" in json.loads(body)["error"]["message"]
            seen.add(len(seen) % 2)
            if seen == {0, 1}:
                break
        time.sleep(0.1)
    assert seen == {0, 1}, "both instances refuse the revoked key within 5 s"
    bad = keys_cli(env, "update", made["id"], "--budget", "lots", cwd=cwd)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--budget" in bad.stderr


def test_the_key_appears_nowhere_but_as_its_hash(fleet, fake_upstream, pg_url):
    proxies, env, create, cwd, _seed = fleet
    made = create("--name", "hank", "--team", "ops", "--rpm", "100")
    key = made["key"]
    time.sleep(1.5)
    fake_upstream.reset()
    assert post(proxies[0].url, key)[0] == 200
    assert post(proxies[1].url, key, dict(MESSAGE, stream=True))[0] == 200
    time.sleep(3)  # telemetry, Slack and the usage flush are off the request path
    listed = keys_cli(env, "list", cwd=cwd).stdout + keys_cli(env, "list", "--json", cwd=cwd).stdout
    assert "hank" in listed and key not in listed and key[-4:] in listed
    seen = json.dumps(fake_upstream.requests())
    events = [json.loads(json.dumps(e["body"])) for e in fake_upstream.requests() if e["path"] == "/telemetry"]
    assert {e.get("keyName") for e in events} == {"hank"}, events
    assert any(e["path"] == "/slack" for e in fake_upstream.requests())
    health = "".join(get(p.url, "/", ADMIN_KEY)[1].decode() for p in proxies)
    stats = get(proxies[0].url, "/token-stats?group_by=key", ADMIN_KEY)[1].decode()
    assert '"hank"' in stats
    import psycopg

    with psycopg.connect(pg_url) as conn:
        dump = json.dumps([conn.execute(f"SELECT * FROM {t}").fetchall()
                           for t in ("nexus_keys", "nexus_requests")], default=str)
    assert made["id"] in dump
    import hashlib

    assert hashlib.sha256(key.encode()).hexdigest() in dump
    logs = "".join(p.output() for p in proxies)
    body = key[len("sk-nexus-"):]
    for where, text in (("upstream, telemetry, Slack", seen), ("GET /", health), ("/token-stats", stats),
                        ("the store", dump), ("the logs", logs)):
        assert body not in text and body[:16] not in text, where
    import redis

    client = redis.Redis.from_url(env["REDIS_URL"])
    names = b" ".join(client.scan_iter(match=env["REDIS_KEY_PREFIX"] + "*"))
    assert body.encode() not in names and made["id"].encode() in names
