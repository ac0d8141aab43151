"""Client keys as a client meets them (Flask test client, real SQLite store, the fake upstream as a process):
401 unknown / revoked / expired, 403 model globs and spent budgets, 429 with the headers the SDKs read,
the key never forwarded, the key id on each row, `/token-stats?group_by=key`, the Redis fail mode."""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

import pytest

from app import create_app
from app.keys.keyformat import hash_key
from app.keys.rules import period_bounds
from app.settings import Settings
from tests.fakes.server import free_port

UPSTREAM_KEY = "sk-upstream-openai-key-a1b2c3d4e5f6a7b8c9d0"
ANTHROPIC_KEY = "sk-ant-api03-envkey-ZYXWVUTSRQPONMLKJIHGFEDCBA0123456789"
ADMIN_KEY = "nexus-admin-key-0f1e2d3c4b5a69788796"
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
# High enough that one small request costs about a cent: budgets of a few cents run out in a few requests.
PRICES = json.dumps({"openai/gpt-4.1": {"input": 1000, "output": 1000}})


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Proxy:
    def __init__(self, tmp_path, fake, mode="translation", **env):
        base = {"USAGE_DB_PATH": str(tmp_path / "usage.sqlite3"), "TOKEN_REPORT_INTERVAL": "0",
                "CLIENT_SETUP_DIR": str(tmp_path), "STREAM_PING_INTERVAL": "0",
                "RATE_LIMIT_STATE_PATH": str(tmp_path / "limits.sqlite3"), "MODEL_PRICES": PRICES}
        if mode == "translation":
            base.update(ANTHROPIC_PROXY_BASE_URL=fake.url, CLAUDE_CODE_PROXY_API_KEY=UPSTREAM_KEY)
        else:
            base.update(PROXY_MODE="passthrough", CLAUDE_API_BASE_URL=fake.url, CLAUDE_API_KEY=ANTHROPIC_KEY)
        base.update(env)
        self.app = create_app(Settings.from_env(base), start_background=False)
        self.services = self.app.extensions["nexus"]
        self.keys = self.services.client_keys
        self.client = self.app.test_client()
        self.tmp_path = tmp_path

    def create(self, name="alice", **fields):
        key, record = self.keys.store.create(name, **fields)
        self.keys.reload()
        return key, record

    def post(self, key, body=None, how="x-api-key", **kw):
        headers = {"x-api-key": key} if how == "x-api-key" else {"authorization": "Bearer " + key}
        kw.setdefault("buffered", True)  # read to the end and closed, as a server does: the request finishes
        return self.client.post("/v1/messages", json=body or MESSAGE, headers=headers, **kw)


def error_of(resp, status, error_type):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["type"] == "error" and body["error"]["type"] == error_type, body
    return body["error"]["message"]


@pytest.fixture
def proxy(tmp_path, fake_upstream):
    return Proxy(tmp_path, fake_upstream)


# --- who may come in ------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
def test_a_key_works_both_ways_and_is_never_forwarded(proxy, fake_upstream, how):
    key, record = proxy.create()
    resp = proxy.post(key, how=how)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    stream = proxy.post(key, dict(MESSAGE, stream=True), how=how)
    assert stream.status_code == 200 and b"message_stop" in stream.get_data()
    sent = fake_upstream.requests()
    assert len(sent) == 2
    for entry in sent:
        assert key not in json.dumps(entry) and record.key_hash not in json.dumps(entry)
        assert entry["headers"]["authorization"] == "Bearer " + UPSTREAM_KEY


def test_once_a_key_exists_a_request_without_a_valid_one_is_401(proxy, fake_upstream):
    assert proxy.client.post("/v1/messages", json=MESSAGE).status_code == 200  # no keys yet: open
    proxy.create()
    for headers in ({}, {"x-api-key": "sk-nexus-" + "A" * 43}, {"x-api-key": "some-other-token"}):
        message = error_of(proxy.client.post("/v1/messages", json=MESSAGE, headers=headers), 401,
                           "authentication_error")
        assert "revoked" not in message and "expired" not in message  # an unknown key gets no detail
    assert len(fake_upstream.requests()) == 1


def test_revoked_and_expired_keys_say_which(proxy, fake_upstream):
    key, record = proxy.create()
    old, _ = proxy.create("bob", expires_at=ts("2026-01-31T00:00:00Z"))
    assert proxy.post(key).status_code == 200
    proxy.keys.store.revoke(record.id)
    proxy.keys.reload()
    assert "revoked" in error_of(proxy.post(key), 401, "authentication_error")
    assert "expired at 2026-01-31T00:00Z" in error_of(proxy.post(old), 401, "authentication_error")
    assert len(fake_upstream.requests()) == 1


def test_a_domain_key_only_works_on_its_domain(proxy):
    key, _ = proxy.create(domain="team-a.example.com")
    assert proxy.client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": key, "host": "team-a.example.com"}
                             ).status_code == 200
    error_of(proxy.client.post("/v1/messages", json=MESSAGE, headers={"x-api-key": key, "host": "b.example.com"}),
             403, "permission_error")


def test_static_proxy_keys_keep_working_without_limits(tmp_path, fake_upstream):
    proxy = Proxy(tmp_path, fake_upstream, PROXY_API_KEYS=ADMIN_KEY)
    proxy.create(rpm=1)
    for _ in range(3):
        assert proxy.post(ADMIN_KEY).status_code == 200


def test_translation_never_sends_a_client_key_upstream_as_the_users_own(tmp_path, fake_upstream):
    proxy = Proxy(tmp_path, fake_upstream, CLAUDE_CODE_PROXY_API_KEY="")
    key, _ = proxy.create()
    assert "No upstream API key" in error_of(proxy.post(key), 401, "authentication_error")
    assert fake_upstream.requests() == []


def test_passthrough_replaces_the_client_key_with_the_proxys_credential(tmp_path, fake_upstream):
    proxy = Proxy(tmp_path, fake_upstream, mode="passthrough")
    key, _ = proxy.create(models=("claude-*sonnet*",))
    assert proxy.post(key, how="bearer").status_code == 200
    error_of(proxy.post(key, dict(MESSAGE, model="claude-opus-4-1")), 403, "permission_error")
    (entry,) = fake_upstream.requests()
    assert entry["headers"]["x-api-key"] == ANTHROPIC_KEY and "authorization" not in entry["headers"]
    assert key not in json.dumps(entry)


# --- models, limits, budgets -------------------------------------------------------------------

def test_model_globs_on_the_model_the_client_asked_for(proxy, fake_upstream):
    key, _ = proxy.create(models=("claude-*sonnet*", "claude-*haiku*"))
    assert proxy.post(key).status_code == 200  # sent upstream as openai/gpt-4.1: the asked-for name counts
    message = error_of(proxy.post(key, dict(MESSAGE, model="claude-opus-4-1")), 403, "permission_error")
    assert "claude-opus-4-1" in message and "claude-*sonnet*, claude-*haiku*" in message
    assert [e["body"]["model"] for e in fake_upstream.requests()] == ["openai/gpt-4.1"]


def test_rpm_gives_429_with_retry_after_and_anthropic_headers(proxy, fake_upstream):
    key, _ = proxy.create(rpm=2)
    assert [proxy.post(key).status_code for _ in range(2)] == [200, 200]
    resp = proxy.post(key)
    assert "2 requests per minute" in error_of(resp, 429, "rate_limit_error")
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert resp.headers["anthropic-ratelimit-requests-limit"] == "2"
    assert resp.headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.strptime(resp.headers["anthropic-ratelimit-requests-reset"], "%Y-%m-%dT%H:%M:%SZ")
    assert 0 < reset.replace(tzinfo=timezone.utc).timestamp() - time.time() <= 61
    assert len(fake_upstream.requests()) == 2  # refused before any upstream call


def test_tpm_counts_finished_requests_and_says_so_in_token_headers(proxy, fake_upstream):
    key, _ = proxy.create(tpm=20)
    assert proxy.post(key).status_code == 200  # the fake reports ~25 input + output tokens
    resp = proxy.post(key)
    error_of(resp, 429, "rate_limit_error")
    assert resp.headers["anthropic-ratelimit-tokens-limit"] == "20"
    assert resp.headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert "anthropic-ratelimit-tokens-reset" in resp.headers and int(resp.headers["retry-after"]) >= 1


def test_concurrency_slot_is_freed_when_a_stream_ends_or_its_client_leaves(proxy, fake_upstream):
    key, record = proxy.create(concurrency=1)
    fake_upstream.script("/chat/completions", [{"sse": [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "a"}}]},
        {"choices": [{"index": 0, "delta": {"content": "b"}, "finish_reason": "stop"}]}], "gap_ms": 50}])
    held = proxy.post(key, dict(MESSAGE, stream=True), buffered=False)
    assert held.status_code == 200
    first = next(iter(held.response))  # the stream is running: its slot is taken
    assert first
    busy = proxy.post(key)
    error_of(busy, 429, "rate_limit_error")
    assert busy.headers["anthropic-ratelimit-requests-limit"] == "1"
    held.close()  # the client goes away mid-stream
    assert proxy.keys.state.usage(record.id, time.time())[2] == 0
    assert proxy.post(key).status_code == 200


def test_a_spent_budget_is_403_with_the_renewal_and_renews_with_the_period(proxy, fake_upstream):
    now = [time.time()]  # the rows are stamped with the real time; the key's clock is injected
    proxy.keys.clock = lambda: now[0]
    key, record = proxy.create(budget_usd=0.05, budget_period="day")
    statuses = []
    for _ in range(10):
        resp = proxy.post(key)
        statuses.append(resp.status_code)
        proxy.services.accounting.flush()
        if resp.status_code != 200:
            break
    assert statuses[-1] == 403 and 200 in statuses
    message = error_of(resp, 403, "permission_error")
    spent = proxy.keys.store.spend([record.id], period_bounds("day", now[0])[0])[record.id]
    assert spent >= 0.05
    renews = datetime.fromtimestamp(period_bounds("day", now[0])[1], timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    assert renews.endswith("T00:00Z")
    assert "'alice'" in message and "$0.05/day" in message and f"renews {renews}" in message
    assert f"${spent:.4f}".rstrip("0") in message
    now[0] = period_bounds("day", now[0])[1] + 5  # the next day starts: the rows of yesterday no longer count
    assert proxy.post(key).status_code == 200


def test_rows_carry_the_key_id_and_token_stats_group_by_key(tmp_path, fake_upstream):
    proxy = Proxy(tmp_path, fake_upstream, PROXY_API_KEYS=ADMIN_KEY)
    alice, a = proxy.create("alice", team="platform")
    bob, b = proxy.create("bob", team="data")
    for k in (alice, alice, bob):
        assert proxy.post(k).status_code == 200
    proxy.post(ADMIN_KEY)
    error_of(proxy.client.get("/token-stats?group_by=key", headers={"x-api-key": alice}), 401,
             "authentication_error")  # a client key spends; it does not read everyone's usage
    stats = proxy.client.get("/token-stats?group_by=key", headers={"x-api-key": ADMIN_KEY}).get_json()
    by_name = {e["name"]: e for e in stats["keys"]}
    assert by_name["alice"]["requestCount"] == 2 and by_name["alice"]["team"] == "platform"
    assert by_name["bob"]["requestCount"] == 1 and by_name["bob"]["keyId"] == b.id
    assert by_name[None]["requestCount"] == 1  # the static key's request
    assert by_name["alice"]["costUsd"] > 0
    rows = proxy.services.storage.query("SELECT key_id FROM nexus_requests ORDER BY id")
    assert [r[0] for r in rows] == [a.id, a.id, b.id, None]
    error_of(proxy.client.get("/token-stats?group_by=nope", headers={"x-api-key": ADMIN_KEY}), 400,
             "invalid_request_error")


def test_the_store_holds_only_the_hash(proxy):
    key, record = proxy.create()
    proxy.post(key)
    proxy.services.accounting.flush()
    data = b"".join(p.read_bytes() for p in proxy.tmp_path.glob("*.sqlite3*"))
    assert key.encode() not in data and key[len("sk-nexus-"):].encode() not in data
    assert hash_key(key).encode() in data


# --- Redis away: RATE_LIMIT_FAIL ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_outage_follows_rate_limit_fail_logged_once_and_shown(tmp_path, fake_upstream, caplog, mode):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    proxy = Proxy(tmp_path, fake_upstream, REDIS_URL=dead, RATE_LIMIT_FAIL=mode, PROXY_API_KEYS=ADMIN_KEY)
    key, _ = proxy.create(rpm=100)
    with caplog.at_level(logging.WARNING, logger="nexus.keys"):
        statuses = [proxy.post(key).status_code for _ in range(3)]
        time.sleep(1.1)  # past the retry pause: the next request tries Redis again
        statuses.append(proxy.post(key).status_code)
    assert statuses == ([200] * 4 if mode == "open" else [503] * 4)
    outage_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage_lines) == 1 and f"RATE_LIMIT_FAIL={mode}" in outage_lines[0].getMessage()
    health = proxy.client.get("/", headers={"x-api-key": ADMIN_KEY}).get_json()
    assert health["status"] == "degraded"
    limiter = health["clientKeys"]["rateLimiter"]
    assert limiter["backend"] == "redis" and not limiter["healthy"] and limiter["outage"]["since"]
    assert limiter["failMode"] == mode


def test_dashboard_shows_usage_by_key_and_filters_requests_by_key(tmp_path, fake_upstream):
    dash_key = "dashboard-key-for-tests-0123456789"
    proxy = Proxy(tmp_path, fake_upstream, DASHBOARD_API_KEY=dash_key)
    alice, a = proxy.create("alice", team="platform")
    bob, b = proxy.create("bob")
    for k in (alice, alice, bob):
        assert proxy.post(k).status_code == 200
    page = proxy.client.get("/dashboard?token=" + dash_key, follow_redirects=True)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="top-keys"' in html and "alice</a> (platform)" in html and f"/dashboard/requests?key_id={a.id}" in html
    data = proxy.client.get("/dashboard/api/overview").get_json()
    by_name = {k["name"]: k for k in data["topKeys"]}
    assert by_name["alice"]["requests"] == 2 and by_name["bob"]["requests"] == 1
    assert by_name["alice"]["costUsd"] > 0 and by_name["alice"]["tokens"] > 0
    rows = proxy.client.get(f"/dashboard/api/requests?key_id={b.id}").get_json()["rows"]
    assert len(rows) == 1
    assert alice not in html and bob not in html
