"""Telemetry and Slack: exact payloads, retries, counters, and a dead endpoint that costs requests nothing."""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import requests
import responses

from app.masking import clear_registered_secrets, register_secret
from app.records import RequestRecord
from app.services.notifications import (
    Slack,
    Telemetry,
    slack_assistant_text,
    slack_user_text,
    telemetry_event,
)
from config.settings import Settings

ENDPOINT = "http://telemetry.test/events"
WEBHOOK = "https://hooks.slack.com/services/T0000/B0000/GLOBALSECRETPATH1"
TEAM_WEBHOOK = "https://hooks.slack.com/services/T1111/B1111/TEAMSECRETPATH22"
API_KEY = "sk-ant-api03-" + "Zq8xR2vL9mN4pK7wT1yB6cH3jF5dG0sA" * 3 + "-QwErTy12AA"
OAUTH = "sk-ant-oat01-" + "Pp9Oo8Ii7Uu6Yy5Tt4Rr3Ee2Ww1Qq0" * 3 + "ZZ"
OPAQUE = "opaque-refresh-token-value-4242"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _fresh_registry():
    clear_registered_secrets()
    yield
    clear_registered_secrets()


def _rec(**kw) -> RequestRecord:
    base = dict(
        request_id="abc123-def456", timestamp=1705314600.25, domain="claude-1.example.com", mode="passthrough",
        model_requested="claude-3-opus-20240229", model_used="claude-3-opus-20240229", request_type="query",
        input_tokens=150, output_tokens=200, tool_calls=0, status=200, duration_ms=1250.4,
        api_key_masked="..." + API_KEY[-10:], auth_type="api_key",
        user_text="What is in README.md?", assistant_text="Here's my response to your question...",
    )
    base.update(kw)
    return RequestRecord(**base)


def _fast(sender):
    sender.backoff = (0.01, 0.01, 0.01)
    return sender


def _bodies(rsps):
    return [json.loads(c.request.body) for c in rsps.calls]


# ---------------------------------------------------------------- telemetry

def test_telemetry_event_has_exactly_the_product_fields():
    assert telemetry_event(_rec(tool_calls=2, request_type="inference")) == {
        "timestamp": "2024-01-15T10:30:00.250Z",
        "requestId": "abc123-def456",
        "method": "POST",
        "path": "/v1/messages",
        "apiKey": "..." + API_KEY[-10:],
        "model": "claude-3-opus-20240229",
        "inputTokens": 150,
        "outputTokens": 200,
        "duration": 1250,
        "status": 200,
        "error": None,
        "domain": "claude-1.example.com",
        "mode": "passthrough",
        "toolCallCount": 2,
        "requestType": "inference",
    }


def test_telemetry_event_error_and_defensive_masking():
    ev = telemetry_event(_rec(status=401, error_type="authentication_error",
                              error_message=f"invalid x-api-key {API_KEY}", api_key_masked=API_KEY,
                              model_used="openai/gpt-4.1", mode="translation"))
    assert ev["error"] == "authentication_error: invalid x-api-key sk-ant-api03-...12AA"
    assert ev["apiKey"] == "sk-ant-api03-...12AA"  # a raw key handed in by mistake is masked anyway
    assert ev["model"] == "openai/gpt-4.1"  # the model that used the tokens
    assert API_KEY not in json.dumps(ev)
    assert telemetry_event(_rec(api_key_masked=None))["apiKey"] is None


def test_telemetry_posts_each_event():
    tel = Telemetry(Settings.from_env({"TELEMETRY_ENDPOINT": ENDPOINT}))
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, ENDPOINT, status=204)
        tel.start()
        tel.submit(_rec(request_id="r1"))
        tel.submit(_rec(request_id="r2", status=500, error_type="api_error", error_message="boom"))
        tel.stop(timeout=5)
        bodies = _bodies(rsps)
        assert rsps.calls[0].request.headers["Content-Type"] == "application/json"
    assert [b["requestId"] for b in bodies] == ["r1", "r2"]
    assert bodies[1]["error"] == "api_error: boom" and bodies[1]["status"] == 500
    assert tel.status() == {"enabled": True, "sent": 2, "failed": 0, "dropped": 0, "queued": 0}


def test_telemetry_retries_then_succeeds():
    tel = _fast(Telemetry(Settings.from_env({"TELEMETRY_ENDPOINT": ENDPOINT})))
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, ENDPOINT, status=503)
        rsps.add(responses.POST, ENDPOINT, body=requests.ConnectionError("refused"))
        rsps.add(responses.POST, ENDPOINT, status=200)
        tel.start()
        tel.submit(_rec())
        tel.stop(timeout=5)
        assert len(rsps.calls) == 3
    assert tel.status()["sent"] == 1 and tel.status()["failed"] == 0


def test_telemetry_failures_counted_and_client_errors_not_retried():
    tel = _fast(Telemetry(Settings.from_env({"TELEMETRY_ENDPOINT": ENDPOINT})))
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, ENDPOINT, status=500)  # responses repeats the last match: 3 x 500
        tel.start()
        tel.submit(_rec(request_id="five-hundred"))
        tel.stop(timeout=5)
        assert len(rsps.calls) == 3  # up to 3 attempts
    assert tel.status()["failed"] == 1 and tel.status()["sent"] == 0

    tel = _fast(Telemetry(Settings.from_env({"TELEMETRY_ENDPOINT": ENDPOINT})))
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, ENDPOINT, status=400)
        tel.start()
        tel.submit(_rec())
        tel.stop(timeout=5)
        assert len(rsps.calls) == 1  # a 400 will not clear by retrying
    assert tel.status()["failed"] == 1


def test_telemetry_queue_full_drops_and_counts():
    tel = Telemetry(Settings.from_env({"TELEMETRY_ENDPOINT": ENDPOINT}), maxsize=5)
    for i in range(8):
        tel.submit(_rec(request_id=f"r{i}"))
    assert tel.status() == {"enabled": True, "sent": 0, "failed": 0, "dropped": 3, "queued": 5}
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, ENDPOINT, status=200)
        tel.start()
        tel.stop(timeout=5)
        assert [b["requestId"] for b in _bodies(rsps)] == ["r0", "r1", "r2", "r3", "r4"]
    assert tel.status() == {"enabled": True, "sent": 5, "failed": 0, "dropped": 3, "queued": 0}


def test_telemetry_disabled_without_endpoint():
    tel = Telemetry(Settings.from_env({}))
    tel.start()
    tel.submit(_rec())
    assert tel._thread is None
    assert tel.status() == {"enabled": False, "sent": 0, "failed": 0, "dropped": 0, "queued": 0}


def _dead_endpoint():
    """A local TCP server that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)
    return srv, f"http://127.0.0.1:{srv.getsockname()[1]}/events"


def test_dead_endpoint_does_not_slow_submit():
    srv, url = _dead_endpoint()
    try:
        tel = Telemetry(Settings.from_env({"TELEMETRY_ENDPOINT": url}))
        tel.timeout = 2.0
        tel.start()
        tel.submit(_rec(request_id="first"))
        deadline = time.monotonic() + 5
        while tel.status()["queued"] and time.monotonic() < deadline:
            time.sleep(0.01)  # the sender has taken the first event and now hangs on the dead endpoint
        t0 = time.perf_counter()
        for i in range(200):
            tel.submit(_rec(request_id=f"r{i}"))
        elapsed = time.perf_counter() - t0
        print(f"200 submits with a dead telemetry endpoint: {elapsed * 1000:.2f} ms")
        assert elapsed < 0.5
        assert tel.status()["queued"] == 200  # still stuck on the first one
        t0 = time.perf_counter()
        tel.stop(timeout=0)
        assert time.perf_counter() - t0 < 3
        tel._thread.join(5)
        assert tel.status() == {"enabled": True, "sent": 0, "failed": 1, "dropped": 200, "queued": 0}
    finally:
        srv.close()


_GEVENT_SCRIPT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import json, socket, sys, time
    import gevent
    sys.path.insert(0, sys.argv[1])
    from app.records import RequestRecord
    from app.services.notifications import Telemetry
    from config.settings import Settings

    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(512)
    tel = Telemetry(Settings.from_env({"TELEMETRY_ENDPOINT": f"http://127.0.0.1:{srv.getsockname()[1]}/e"}))
    tel.timeout = 3.0
    tel.start()
    rec = lambda i: RequestRecord(request_id=str(i), timestamp=time.time(), domain="d", mode="translation")
    tel.submit(rec(-1))
    gevent.sleep(0.3)  # the sender greenlet is now parked on the dead socket
    t0 = time.perf_counter()
    for i in range(200):
        tel.submit(rec(i))
        gevent.sleep(0)  # like a request greenlet yielding: the sender must not hold the hub
    submit_s = time.perf_counter() - t0
    t0 = time.perf_counter(); gevent.sleep(0.05); nap_s = time.perf_counter() - t0
    print(json.dumps({"submit_s": submit_s, "nap_s": nap_s, "status": tel.status()}))
""")


def test_dead_endpoint_under_gevent_does_not_block_other_greenlets():
    """As in the gunicorn gevent worker: monkey-patched, the sender parks on the socket and yields."""
    proc = subprocess.run([sys.executable, "-c", _GEVENT_SCRIPT, ROOT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"gevent: 200 submits {result['submit_s'] * 1000:.2f} ms, 50 ms nap took {result['nap_s'] * 1000:.1f} ms")
    assert result["submit_s"] < 0.5
    assert result["nap_s"] < 0.5  # the hub was free while the sender waited
    assert result["status"]["queued"] == 200 and result["status"]["sent"] == 0


# ---------------------------------------------------------------- Slack

def _slack(**env):
    return _fast(Slack(Settings.from_env({"SLACK_WEBHOOK_URL": WEBHOOK, **env})))


def test_slack_assistant_post_in_product_format():
    rec = _rec(tool_names=["Read", "Bash"])
    assert slack_assistant_text(rec) == (
        "🤖 Assistant | Request abc123-def456\n"
        "Domain: claude-1.example.com | Model: claude-3-opus-20240229\n"
        f"API Key: ...{API_KEY[-10:]} | Tokens: In: 150, Out: 200\n"
        "\n"
        "Here's my response to your question...\n"
        "\n"
        "🔧 Tool calls: Read, Bash"
    )


def test_slack_user_post_and_error_post():
    rec = _rec(model_used="openai/gpt-4.1", assistant_text=None, status=429,
               error_type="rate_limit_error", error_message="Too many requests")
    assert slack_user_text(rec) == (
        "👤 User | Request abc123-def456\n"
        "Domain: claude-1.example.com | Model: claude-3-opus-20240229 → openai/gpt-4.1\n"
        "\n"
        "What is in README.md?"
    )
    assert slack_assistant_text(rec).endswith("Tokens: In: 150, Out: 200\n\n❌ Error: rate_limit_error: Too many requests")
    assert slack_user_text(_rec(user_text=None)) is None


def test_slack_payloads_use_settings():
    slack = _slack(SLACK_CHANNEL="#claude-proxy-logs", SLACK_USERNAME="Claude Monitor", SLACK_ICON_EMOJI=":eyes:")
    posts = slack.payloads(_rec())
    assert [url for url, _ in posts] == [WEBHOOK, WEBHOOK]
    user, assistant = (p for _, p in posts)
    assert user == {"text": slack_user_text(_rec()), "channel": "#claude-proxy-logs",
                    "username": "Claude Monitor", "icon_emoji": ":eyes:"}
    assert assistant["text"].startswith("🤖 Assistant | Request abc123-def456\n")
    # Defaults from the product; no channel key when none is configured (the webhook's own channel).
    default = _slack().payloads(_rec())[1][1]
    assert default == {"text": default["text"], "username": "Claude Code Proxy", "icon_emoji": ":robot_face:"}


def test_slack_long_texts_are_cut():
    rec = _rec(user_text="u" * 50_000, assistant_text="a" * 50_000, tool_names=["Read"])
    user = slack_user_text(rec)
    assistant = slack_assistant_text(rec)
    for text in (user, assistant):
        assert len(text) <= 3000
    assert user.endswith("… (truncated)")
    assert "a… (truncated)\n\n🔧 Tool calls: Read" in assistant  # the tool line survives the cut


def test_slack_sends_through_webhook():
    slack = _slack()
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, WEBHOOK, body="ok")
        slack.start()
        slack.submit(_rec())
        slack.stop(timeout=5)
        texts = [b["text"] for b in _bodies(rsps)]
    assert texts[0].startswith("👤 User | Request abc123-def456") and texts[1].startswith("🤖 Assistant")
    assert slack.status() == {"enabled": True, "sent": 2, "failed": 0, "dropped": 0, "queued": 0}


def test_slack_disabled_by_setting_or_without_webhook():
    for slack in (_slack(SLACK_ENABLED="false"), Slack(Settings.from_env({}))):
        slack.submit(_rec())
        assert slack.status() == {"enabled": False, "sent": 0, "failed": 0, "dropped": 0, "queued": 0}


def test_slack_per_domain_override():
    override = {"webhook_url": TEAM_WEBHOOK, "channel": "#team1", "username": "Team One", "icon_emoji": ":one:"}
    # The domain's own webhook works even with the global one off.
    slack = _slack(SLACK_ENABLED="false")
    posts = slack.payloads(_rec(), override)
    assert {url for url, _ in posts} == {TEAM_WEBHOOK}
    assert posts[1][1]["channel"] == "#team1" and posts[1][1]["username"] == "Team One"
    assert posts[1][1]["icon_emoji"] == ":one:"
    # Partial block: channel only, the global webhook and names fill in.
    posts = _slack().payloads(_rec(), {"channel": "#only-channel"})
    assert posts[0][0] == WEBHOOK and posts[0][1]["channel"] == "#only-channel"
    assert posts[0][1]["username"] == "Claude Code Proxy"
    # enabled: false turns it off for that domain although the global webhook is on.
    slack = _slack()
    slack.submit(_rec(), {"enabled": False})
    assert slack.payloads(_rec(), {"enabled": False}) == []
    assert slack.status()["queued"] == 0
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, TEAM_WEBHOOK, body="ok")
        slack.start()
        slack.submit(_rec(), override)
        slack.stop(timeout=5)
        assert len(rsps.calls) == 2


def test_slack_failures_counted_and_webhook_never_logged(caplog):
    slack = _slack()
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, WEBHOOK, body=requests.ConnectionError(f"cannot reach {WEBHOOK}"))
        slack.start()
        slack.submit(_rec(user_text=None))
        slack.stop(timeout=5)
        assert len(rsps.calls) == 3
    assert slack.status()["failed"] == 1
    assert "GLOBALSECRETPATH1" not in caplog.text
    assert "slack delivery failing (ConnectionError)" in caplog.text


def test_no_secret_in_any_payload():
    register_secret(OPAQUE)  # as the lead does for every credential it loads
    rec = _rec(
        user_text=f"my key is {API_KEY} and my refresh token {OPAQUE}",
        assistant_text=f"Do not share Authorization: Bearer {OAUTH}",
        tool_names=["Bash"], status=401, error_type="authentication_error",
        error_message=f"invalid token {OPAQUE}", api_key_masked=API_KEY,  # careless producer: raw key
    )
    slack = _slack()
    tel = _fast(Telemetry(Settings.from_env({"TELEMETRY_ENDPOINT": ENDPOINT})))
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, WEBHOOK, body="ok")
        rsps.add(responses.POST, ENDPOINT, body="")
        slack.start()
        tel.start()
        slack.submit(rec, {"channel": "#x"})
        tel.submit(rec)
        slack.stop(timeout=5)
        tel.stop(timeout=5)
        sent = [c.request.body.decode() if isinstance(c.request.body, bytes) else c.request.body for c in rsps.calls]
    assert len(sent) == 3
    everything = "\n".join(sent) + json.dumps([json.loads(s) for s in sent], ensure_ascii=False)
    for secret in (API_KEY, OAUTH, OPAQUE, "GLOBALSECRETPATH1"):
        assert secret not in everything
        assert secret[13:30] not in everything
    assert "sk-ant-api03-...12AA" in everything  # still recognisable for a human
