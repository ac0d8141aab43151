"""Telemetry, Slack and logs as an operator sees them, from the real server."""
import json
import socket
import time
import urllib.request

import anthropic
import pytest

from tests.fakes.server import ProxyServer

READ_TOOL = {"name": "Read", "description": "Read a file",
             "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}


@pytest.fixture
def blackhole():
    """Accepts connections and never answers: a dead telemetry endpoint."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/events"
    sock.close()


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_telemetry_and_slack_events_for_real_requests(fake_upstream, recorder, tmp_path):
    base = f"http://127.0.0.1:{recorder.server_address[1]}"
    env = {"ANTHROPIC_PROXY_BASE_URL": fake_upstream.url, "CLAUDE_CODE_PROXY_API_KEY": "ghp_upstreamkeyfortelemetry0001",
           "TELEMETRY_ENDPOINT": base + "/events", "SLACK_WEBHOOK_URL": base + "/slack",
           "SLACK_CHANNEL": "#proxy-logs", "SLACK_USERNAME": "Nexus Bot"}
    with ProxyServer(env, cwd=tmp_path) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
        msg = client.messages.create(model="claude-sonnet-4", max_tokens=100, system="be brief",
                                     tools=[READ_TOOL],
                                     messages=[{"role": "user", "content": "Read /tmp/notes.txt please"}])
        assert msg.stop_reason == "tool_use"
        events = wait_for(lambda: [p["json"] for p in recorder.posts if p["path"] == "/events"])
        health = wait_for(lambda: (lambda h: h if h["slack"]["sent"] >= 2 else None)(get_json(proxy.url + "/")))
        slack = [p["json"] for p in recorder.posts if p["path"] == "/slack"]

    assert len(events) == 1
    event = events[0]
    assert set(event) >= {"timestamp", "requestId", "method", "path", "apiKey", "model", "inputTokens",
                          "outputTokens", "duration", "status", "error", "domain", "mode", "toolCallCount",
                          "requestType"}
    assert event["method"] == "POST" and event["path"] == "/v1/messages" and event["status"] == 200
    assert event["error"] is None and event["mode"] == "translation" and event["toolCallCount"] == 1
    assert event["inputTokens"] == msg.usage.input_tokens and event["outputTokens"] == msg.usage.output_tokens
    assert event["requestType"] in ("query", "query_evaluation")
    assert "upstreamkeyfortelemetry" not in json.dumps(event)
    assert event["timestamp"].endswith("Z")

    texts = [p["text"] for p in slack]
    assistant = next(t for t in texts if t.startswith("🤖 Assistant | Request "))
    assert event["requestId"] in assistant
    assert "Domain: 127.0.0.1" in assistant and "Tokens: In: " in assistant and "Read" in assistant
    assert any("Read /tmp/notes.txt please" in t for t in texts)  # the user's message is posted too
    assert all(p["channel"] == "#proxy-logs" and p["username"] == "Nexus Bot" for p in slack)
    assert "upstreamkeyfortelemetry" not in json.dumps(slack)
    assert health["telemetry"]["sent"] == 1 and health["slack"]["sent"] >= 2


def test_a_dead_telemetry_endpoint_does_not_slow_requests(fake_upstream, blackhole, tmp_path):
    env = {"ANTHROPIC_PROXY_BASE_URL": fake_upstream.url, "CLAUDE_CODE_PROXY_API_KEY": "k",
           "TELEMETRY_ENDPOINT": blackhole}
    with ProxyServer(env, cwd=tmp_path) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
        client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "warm up"}])
        durations = []
        for i in range(30):
            started = time.perf_counter()
            client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": f"hi {i}"}])
            durations.append(time.perf_counter() - started)
        health = get_json(proxy.url + "/")
    durations.sort()
    print(f"requests with a dead telemetry endpoint: median {durations[15] * 1000:.1f} ms, "
          f"max {durations[-1] * 1000:.1f} ms")
    # The endpoint never answers (a 5 s timeout per attempt): any waiting on it would show in seconds.
    assert durations[-1] < 2.0
    assert health["telemetry"]["queued"] + health["telemetry"]["failed"] + health["telemetry"]["sent"] >= 25


def test_debug_logs_show_the_exchange_and_info_logs_one_line_per_request(fake_upstream, tmp_path):
    secret = "ghp_debugmodeupstreamsecret123456"
    env = {"ANTHROPIC_PROXY_BASE_URL": fake_upstream.url, "CLAUDE_CODE_PROXY_API_KEY": secret, "DEBUG": "true"}
    (tmp_path / "debug").mkdir()
    (tmp_path / "info").mkdir()
    with ProxyServer(env, cwd=tmp_path / "debug") as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
        with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
            s.get_final_message()
        time.sleep(0.3)
        debug_output = proxy.output()
    for heading in ("=== Incoming Request ===", "=== Outgoing Request ===", "Authentication type:",
                    "SSE chunk", "Request ID: req_"):
        assert heading in debug_output, heading
    assert secret not in debug_output and "Bearer ****" in debug_output

    env["DEBUG"] = "false"
    with ProxyServer(env, cwd=tmp_path / "info") as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0)
        for _ in range(3):
            client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        time.sleep(0.3)
        info_output = proxy.output()
    access = [line for line in info_output.splitlines() if "nexus.access" in line and "POST /v1/messages 200" in line]
    assert len(access) == 3
    assert "=== Incoming Request ===" not in info_output
