"""Translation with two upstreams where the first is down: the real server (gunicorn + gevent) fails over
before the first byte, with the second upstream's model map, and the first's breaker opens after five tries."""
from __future__ import annotations

import json
import urllib.request

import anthropic

from tests.fakes.server import CountingListener, ProxyServer


def test_first_upstream_down_fails_over_and_its_breaker_opens(fake_upstream):
    fake = fake_upstream
    dead = CountingListener(reset=True)  # accepts and resets every connection: an upstream that is down
    try:
        upstreams = [
            {"name": "primary", "base_url": f"http://127.0.0.1:{dead.port}/v1", "api_key": "sk-primary-e2e-000001",
             "model_map": {"claude-*": "primary-model"}},
            {"name": "backup", "base_url": fake.url + "/v1", "api_key_env": "BACKUP_KEY",
             "model_map": {"claude-*haiku*": "backup-mini", "claude-*": "backup-model"}},
        ]
        env = {"UPSTREAMS": json.dumps(upstreams), "BACKUP_KEY": "sk-backup-e2e-000002"}
        with ProxyServer(env, workers=1) as proxy:
            client = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0, timeout=30)
            for i in range(4):
                raw = client.messages.with_raw_response.create(
                    model="claude-sonnet-4-5", max_tokens=32, messages=[{"role": "user", "content": f"hi {i}"}])
                assert raw.headers["x-nexus-upstream"] == "backup" and raw.headers["x-nexus-tries"] == "2"
                assert raw.parse().content[0].text
            with client.messages.stream(model="claude-haiku-4-5", max_tokens=32,
                                        messages=[{"role": "user", "content": "stream"}]) as stream:
                assert "".join(stream.text_stream)
                assert stream.get_final_message().stop_reason == "end_turn"
            assert dead.count == 5
            # open now: the next requests go straight to the backup
            for i in range(3):
                raw = client.messages.with_raw_response.create(
                    model="claude-sonnet-4-5", max_tokens=32, messages=[{"role": "user", "content": f"again {i}"}])
                assert raw.headers["x-nexus-upstream"] == "backup" and "x-nexus-tries" not in raw.headers
            assert dead.count == 5
            posts = fake.requests("/chat/completions")
            assert [p["model"] for p in posts] == ["backup-model"] * 4 + ["backup-mini"] + ["backup-model"] * 3
            assert {p["headers"]["authorization"] for p in posts} == {"Bearer sk-backup-e2e-000002"}
            with urllib.request.urlopen(proxy.url + "/", timeout=10) as resp:
                health = json.loads(resp.read())
            primary, backup = health["upstreams"]
            assert (primary["name"], primary["state"], backup["state"]) == ("primary", "open", "closed")
            assert len(primary["recentErrors"]) == 5 and primary["openUntil"]
            assert "sk-primary-e2e" not in json.dumps(health) and "sk-backup-e2e" not in json.dumps(health)
    finally:
        dead.close()
