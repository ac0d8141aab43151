"""Who may read /metrics: open without client keys; with keys, the rule of the detailed GET /; a
METRICS_TOKEN for scrapers; off with METRICS_ENABLED=false. Never a secret in it."""
from __future__ import annotations

import json
import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from app.settings import Settings

PROXY_KEY = "nexus-proxy-key-metrics-7f3a9c1e5b2d"
TEAM_KEY = "team-a-client-key-metrics-9d8c7b6a5f"
TOKEN = "metrics-token-for-scrapers-0a1b2c3d4e"
UPSTREAM_KEY = "sk-upstream-metrics-key-a1b2c3d4e5f6"
TEAM_ANTHROPIC_KEY = "sk-ant-api03-team-metrics-0123456789abcdef"


def client(tmp_path, **env):
    base = {"USAGE_DB_PATH": str(tmp_path / "usage.sqlite3"), "TOKEN_REPORT_INTERVAL": "0",
            "CLAUDE_CODE_PROXY_API_KEY": UPSTREAM_KEY}
    base.update(env)
    return create_app(Settings.from_env(base), start_background=False).test_client()


def team_mapping(tmp_path) -> str:
    path = tmp_path / "team-a.json"
    path.write_text(json.dumps({"type": "api_key", "api_key": TEAM_ANTHROPIC_KEY, "client_api_key": TEAM_KEY}))
    os.chmod(path, 0o600)
    return json.dumps({"team-a.example.com": str(path)})


def parses(resp) -> dict:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.content_type.startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(resp.get_data(as_text=True))}


def refused(resp, status: int = 401) -> None:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["type"] == "error" and body["error"]["type"] in ("authentication_error", "not_found_error")


def test_open_without_client_keys(tmp_path):
    families = parses(client(tmp_path).get("/metrics"))
    assert "nexus_build_info" in families and "nexus_upstream_errors" in families


def test_proxy_api_keys_protect_it_on_every_host(tmp_path):
    c = client(tmp_path, PROXY_API_KEYS=PROXY_KEY)
    for host in ("localhost", "127.0.0.1", "anything.example.com"):
        refused(c.get("/metrics", headers={"host": host}))
        refused(c.get("/metrics", headers={"host": host, "authorization": "Bearer wrong"}))
        parses(c.get("/metrics", headers={"host": host, "x-api-key": PROXY_KEY}))
        parses(c.get("/metrics", headers={"host": host, "authorization": "Bearer " + PROXY_KEY}))


def test_it_follows_the_detailed_health_rule_with_team_keys(tmp_path):
    # Per-team keys only: a team key spends its team's credential, but operator views need an admin key.
    c = client(tmp_path, PROXY_MODE="passthrough", DOMAIN_CREDENTIAL_MAPPING=team_mapping(tmp_path))
    for headers in ({"host": "team-a.example.com"}, {"host": "team-a.example.com", "x-api-key": "nope"},
                    {"host": "team-a.example.com", "x-api-key": TEAM_KEY}, {"host": "localhost"}):
        refused(c.get("/metrics", headers=headers))
        assert "credentials" not in c.get("/", headers=headers).get_json()  # the same rule as GET /
    both = client(tmp_path, PROXY_MODE="passthrough", DOMAIN_CREDENTIAL_MAPPING=team_mapping(tmp_path),
                  PROXY_API_KEYS=PROXY_KEY)
    ok = {"host": "team-a.example.com", "x-api-key": PROXY_KEY}
    assert "credentials" in both.get("/", headers=ok).get_json()
    parses(both.get("/metrics", headers=ok))
    refused(both.get("/metrics", headers={"host": "team-a.example.com", "x-api-key": TEAM_KEY}))


def test_metrics_token_admits_scrapers(tmp_path):
    c = client(tmp_path, PROXY_API_KEYS=PROXY_KEY, METRICS_TOKEN=TOKEN)
    parses(c.get("/metrics", headers={"authorization": "Bearer " + TOKEN}))
    parses(c.get("/metrics", headers={"x-api-key": PROXY_KEY}))  # an admin key works too
    refused(c.get("/metrics"))
    refused(c.get("/metrics", headers={"authorization": "Bearer " + TOKEN[:-1]}))
    # The scrape token is for /metrics only: it opens nothing else.
    refused(c.get("/token-stats", headers={"authorization": "Bearer " + TOKEN}))
    refused(c.post("/v1/messages", headers={"authorization": "Bearer " + TOKEN},
                   json={"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}))


def test_metrics_token_alone_closes_it(tmp_path):
    c = client(tmp_path, METRICS_TOKEN=TOKEN)
    refused(c.get("/metrics"))
    parses(c.get("/metrics", headers={"authorization": "Bearer " + TOKEN}))


@pytest.mark.parametrize("value", ["false", "0", "no"])
def test_metrics_enabled_false_turns_it_off(tmp_path, value):
    c = client(tmp_path, METRICS_ENABLED=value)
    refused(c.get("/metrics"), 404)
    assert c.post("/v1/messages/count_tokens", json={"model": "m", "messages": [
        {"role": "user", "content": "hi"}]}).status_code == 200  # requests work without metrics


def test_no_secret_in_the_metrics(tmp_path):
    c = client(tmp_path, PROXY_MODE="passthrough", DOMAIN_CREDENTIAL_MAPPING=team_mapping(tmp_path),
               PROXY_API_KEYS=PROXY_KEY, METRICS_TOKEN=TOKEN, CLAUDE_API_BASE_URL="http://127.0.0.1:9")
    c.post("/v1/messages", headers={"host": "team-a.example.com", "x-api-key": TEAM_KEY},
           json={"model": "claude-x", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]})
    text = c.get("/metrics", headers={"authorization": "Bearer " + TOKEN}).get_data(as_text=True)
    assert "nexus_requests_total" in text
    for secret in (PROXY_KEY, TEAM_KEY, TOKEN, UPSTREAM_KEY, TEAM_ANTHROPIC_KEY, str(tmp_path)):
        assert secret not in text
    # a credential is named by its file name (as in /token-stats and GET /), never by its path or secret
    assert 'nexus_credential_state{credential="team-a.json",state="ok"} 1' in text


def test_oauth_credential_expiry_is_exposed_per_domain(tmp_path):
    expires_ms = 1893456000000
    path = tmp_path / "team-b.json"
    path.write_text(json.dumps({"type": "oauth", "oauth": {"accessToken": "sk-ant-oat01-metrics-secret-token",
                                                            "refreshToken": "sk-ant-ort01-metrics-secret",
                                                            "expiresAt": expires_ms}}))
    os.chmod(path, 0o600)
    c = client(tmp_path, PROXY_MODE="passthrough", PROXY_API_KEYS=PROXY_KEY, DOMAIN_CREDENTIAL_MAPPING=json.dumps(
        {"team-b.example.com": str(path), "team-a.example.com": json.loads(team_mapping(tmp_path))["team-a.example.com"]}))
    resp = c.get("/metrics", headers={"host": "team-a.example.com", "x-api-key": PROXY_KEY})
    family = parses(resp)["nexus_credential_expiry_timestamp_seconds"]
    assert [(s.labels, s.value) for s in family.samples] == [({"domain": "team-b.example.com"}, expires_ms / 1000)]
    assert "sk-ant-o" not in resp.get_data(as_text=True)


def test_pooled_credentials_windows_and_state_are_exposed(tmp_path):
    paths = []
    for name in ("max-1.json", "max-2.json"):
        path = tmp_path / name
        path.write_text(json.dumps({"type": "api_key", "api_key": f"sk-ant-api03-{name}-metrics-secret"}))
        os.chmod(path, 0o600)
        paths.append(str(path))
    c = client(tmp_path, PROXY_MODE="passthrough", PROXY_API_KEYS=PROXY_KEY,
               DOMAIN_CREDENTIAL_MAPPING=json.dumps({"pool.example.com": paths}))
    services = c.application.extensions["nexus"]
    pool = services.credentials.domain_config("pool.example.com").pool
    first, second = pool.files
    now = time.time()
    pool.learn(first, {"anthropic-ratelimit-unified-status": "allowed",
                       "anthropic-ratelimit-unified-5h-utilization": "0.5",
                       "anthropic-ratelimit-unified-7d-utilization": "0.25"}, now)
    pool.learn(second, {"retry-after": "600"}, now)
    pool.judge(second, 429, now)
    families = parses(c.get("/metrics", headers={"x-api-key": PROXY_KEY}))
    util = {(s.labels["credential"], s.labels["window"]): s.value
            for s in families["nexus_credential_utilization_ratio"].samples}
    assert util == {("max-1.json", "5h"): 0.5, ("max-1.json", "7d"): 0.25}
    state = {(s.labels["credential"], s.labels["state"]): s.value for s in families["nexus_credential_state"].samples}
    assert state[("max-1.json", "ok")] == 1 and state[("max-2.json", "cooling")] == 1
    assert state[("max-2.json", "ok")] == 0


def test_every_metric_is_documented_and_the_deploy_files_use_only_those(tmp_path):
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    documented = set(re.findall(r"`(nexus_[a-z_]+)`", (root / "docs" / "metrics.md").read_text()))
    c = client(tmp_path)
    c.post("/v1/messages/count_tokens", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    exported = set()
    for family in parses(c.get("/metrics")).values():
        exported |= {s.name for s in family.samples}
    exported = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported}
    assert exported - documented == set()
    used = set()
    for name in ("prometheus-alerts.yml", "grafana/nexus-dashboard.json"):
        used |= set(re.findall(r"nexus_[a-z_]+", (root / "deploy" / name).read_text()))
    used = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used} - {"nexus_proxy", "nexus_metrics_token"}
    assert used - documented == set()


def test_cost_per_domain_and_model_matches_the_usage_store(tmp_path, fake_upstream):
    c = client(tmp_path, PROXY_MODE="passthrough", CLAUDE_API_BASE_URL=fake_upstream.url,
               CLAUDE_API_KEY="sk-ant-api03-metrics-cost-key-0123456789")
    for text in ("one", "two two", "three three three"):
        resp = c.post("/v1/messages", headers={"host": "team-c.example.com"},
                      json={"model": "claude-sonnet-4-5", "max_tokens": 20,
                            "messages": [{"role": "user", "content": text}]})
        assert resp.status_code == 200 and resp.get_json()["type"] == "message"
        resp.close()  # the request is recorded once the response is closed
    families = parses(c.get("/metrics"))
    costs = {(s.labels["domain"], s.labels["model"]): s.value for s in families["nexus_cost_usd"].samples}
    stored = c.get("/token-stats").get_json()["stats"]["team-c.example.com"]["costUsd"]
    assert stored > 0
    assert costs[("team-c.example.com", "claude-sonnet-4-5")] == pytest.approx(stored, rel=1e-9)
