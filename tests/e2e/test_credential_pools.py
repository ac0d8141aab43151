"""Credential pools in passthrough, as a team sees them: the real server (gunicorn + gevent, 2 workers) against
the fake Anthropic upstream, which sends rate-limit headers per credential and can refuse one credential.

The pool is two OAuth subscriptions and one API key, mapped to the host the clients use (127.0.0.1).
"""
from __future__ import annotations

import json
import time
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import anthropic
import pytest

from tests.fakes.server import FakeUpstream, ProxyServer

A1 = "sk-ant-oat01-pool-max-one-access-0001"
A2 = "sk-ant-oat01-pool-max-two-access-0002"
K3 = "sk-ant-api03-pool-api-key-three-0003"
R1 = "sk-ant-ort01-pool-max-one-refresh-0001"
R2 = "sk-ant-ort01-pool-max-two-refresh-0002"
NAMES = ("a-max-1.json", "a-max-2.json", "a-api-key.json")
FAR = int(time.time() * 1000) + 30 * 86400 * 1000  # expiresAt: no refresh on the way


@pytest.fixture
def slack(recorder) -> ThreadingHTTPServer:
    """The Slack webhook: every JSON POST it got."""
    return recorder


def write_pool(folder: Path, a1: str = A1) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "a-max-1.json": {"type": "oauth", "oauth": {"accessToken": a1, "refreshToken": R1, "expiresAt": FAR}},
        "a-max-2.json": {"type": "oauth", "oauth": {"accessToken": A2, "refreshToken": R2, "expiresAt": FAR}},
        "a-api-key.json": {"type": "api_key", "api_key": K3},
    }
    paths = []
    for name, data in files.items():
        path = folder / name
        path.write_text(json.dumps(data))
        path.chmod(0o600)
        paths.append(str(path))
    return paths


def unified(util_5h: float, status: str = "allowed", reset_in: int = 3600) -> dict:
    now = int(time.time())
    return {"anthropic-ratelimit-unified-status": status,
            "anthropic-ratelimit-unified-5h-utilization": str(util_5h),
            "anthropic-ratelimit-unified-5h-reset": str(now + reset_in),
            "anthropic-ratelimit-unified-7d-utilization": "0.05",
            "anthropic-ratelimit-unified-7d-reset": str(now + 5 * 86400),
            "anthropic-ratelimit-unified-representative-claim": "five_hour",
            "anthropic-ratelimit-unified-fallback-percentage": "0.5",
            "anthropic-ratelimit-unified-reset": str(now + reset_in)}


def rejected(reset_in: int) -> dict:
    return {"status": 429, "headers": dict(unified(1.0, "rejected", reset_in), **{"retry-after": str(reset_in)})}


def pool_proxy(fake: FakeUpstream, folder: Path, workers: int = 2, **env: str) -> ProxyServer:
    fake.oauth(refresh_token=R1, valid_tokens=[A1, A2, K3])
    paths = write_pool(folder)
    base = {"PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": fake.url,
            "OAUTH_TOKEN_URL": fake.url + "/v1/oauth/token",
            "DOMAIN_CREDENTIAL_MAPPING": json.dumps({"127.0.0.1": paths}),
            "UPSTREAM_RETRY_MAX_WAIT": "0.2"}
    base.update(env)
    return ProxyServer(base, workers=workers)


def sdk(proxy: ProxyServer) -> anthropic.Anthropic:
    # no SDK retries: whatever the proxy absorbs must not be hidden by the client
    return anthropic.Anthropic(base_url=proxy.url, api_key="unused", max_retries=0, timeout=30)


def session(sid: str) -> dict:
    return {"user_id": json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": sid})}


def ask(client: anthropic.Anthropic, sid: str, text: str = "hello", **kw):
    """One turn of conversation `sid` through the SDK; returns (served-by credential, tries, message)."""
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=64, metadata=session(sid),
        messages=[{"role": "user", "content": f"{text} ({sid})"}], **kw)
    message = raw.parse()
    return raw.headers.get("x-nexus-credential"), raw.headers.get("x-nexus-tries"), message


def health(proxy: ProxyServer) -> dict:
    with urllib.request.urlopen(proxy.url + "/", timeout=10) as resp:
        return json.loads(resp.read())


def notices(slack) -> list[str]:
    """The credential notices among the Slack posts (the requests' own posts go there too)."""
    texts = [p["json"]["text"] for p in slack.posts]
    return [t for t in texts if t.split(" ", 1)[-1].startswith("Credential ")]


def pool_view(proxy: ProxyServer) -> dict[str, dict]:
    return {c["name"]: c for c in health(proxy)["credentials"]["127.0.0.1"]["pool"]}


def used_tokens(fake: FakeUpstream) -> list[str]:
    out = []
    for r in fake.requests("/v1/messages"):
        h = r["headers"]
        out.append(h.get("x-api-key") or h.get("authorization", "")[7:])
    return out


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_conversation_stays_on_its_credential_and_new_ones_take_the_least_used(fake_upstream, tmp_path):
    fake = fake_upstream
    fake.credentials({A1: {"headers": unified(0.30)}, A2: {"headers": unified(0.10)}})
    with pool_proxy(fake, tmp_path / "credentials") as proxy:
        client = sdk(proxy)
        served, tries, message = ask(client, "session-one")
        assert served == "a-max-1.json" and tries is None  # nothing known yet: list order
        assert message.content[0].text
        time.sleep(1.5)  # both workers have read what a-max-1's answer said (30 % used)
        served_two, _, _ = ask(client, "session-two")
        assert served_two == "a-max-2.json"
        time.sleep(1.5)
        # every later turn of the first conversation stays on a-max-1 although a-max-2 is now less used
        for turn in range(6):
            assert ask(client, "session-one", text=f"turn {turn}")[0] == "a-max-1.json"
        tokens = used_tokens(fake)
        assert tokens.count(A1) == 7 and tokens.count(A2) == 1
        view = pool_view(proxy)
        assert view["a-max-1.json"]["fiveHour"]["utilization"] == 0.30
        assert view["a-max-1.json"]["status"] == "ok" and view["a-max-1.json"]["representativeClaim"] == "five_hour"
        assert view["a-max-2.json"]["fiveHour"]["utilization"] == 0.10
        # each worker writes its usage within a second
        view = wait_until(lambda: (lambda v: v if v["a-max-1.json"]["requests"] == 7 else None)(pool_view(proxy)),
                          what="7 requests counted for a-max-1")
        assert view["a-max-2.json"]["requests"] == 1 and view["a-max-1.json"]["tokens"]["output"] > 0
        with urllib.request.urlopen(proxy.url + "/token-stats?group_by=credential", timeout=10) as resp:
            stats = json.loads(resp.read())["stats"]
        assert stats["a-max-1.json"]["requestCount"] == 7 and stats["a-max-2.json"]["requestCount"] == 1
        text = json.dumps(health(proxy)) + json.dumps(stats)
        for secret in (A1, A2, K3, R1, R2):
            assert secret not in text and secret[-8:] not in text


def test_429_and_529_fail_over_without_the_client_seeing_an_error(fake_upstream, tmp_path, slack):
    fake = fake_upstream
    fake.credentials({A1: {"faults": [rejected(300)]}, A2: {"faults": [{"status": 529}]}})
    with pool_proxy(fake, tmp_path / "credentials", SLACK_WEBHOOK_URL=f"http://127.0.0.1:{slack.server_port}/hook") \
            as proxy:
        client = sdk(proxy)
        served, tries, message = ask(client, "failover-create")
        assert (served, tries) == ("a-max-2.json", "2") or (served, tries) == ("a-api-key.json", "3")
        assert message.type == "message" and message.content[0].text
        # a stream too: a-max-1 is cooling now, a-max-2 answers 529 (if it did not above), the key serves it
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, metadata=session("failover-stream"),
                                    messages=[{"role": "user", "content": "stream please"}]) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text and final.stop_reason == "end_turn"
        tokens = used_tokens(fake)
        assert tokens[0] == A1 and tokens.count(A1) == 1  # refused once, then left alone while cooling
        assert tokens.count(A2) == 2 and tokens.count(K3) >= 1
        view = wait_until(lambda: (lambda v: v if v["a-max-1.json"]["status"] == "cooling" else None)(pool_view(proxy)),
                          what="a-max-1 cooling in GET /")
        until = view["a-max-1.json"]["coolingUntil"]
        assert abs(time.mktime(time.strptime(until, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone - (time.time() + 300)) < 5
        # Slack hears of the change once, though two workers and more requests saw the credential cooling
        for i in range(4):
            assert ask(client, f"after-{i}")[0] != "a-max-1.json"
        wait_until(lambda: any("a-max-1.json" in n for n in notices(slack)), what="the Slack notice")
        time.sleep(1.5)
        about = [n for n in notices(slack) if "a-max-1.json" in n]
        assert len(about) == 1 and "cooling down" in about[0], about
        assert not any(s in json.dumps(slack.posts) for s in (A1, A2, K3))


def test_all_cooling_gives_anthropics_429_with_the_earliest_reset(fake_upstream, tmp_path, slack):
    fake = fake_upstream
    api_429 = {"status": 429, "headers": {"retry-after": "500", "anthropic-ratelimit-requests-limit": "50",
                                          "anthropic-ratelimit-requests-remaining": "0"}}
    fake.credentials({A1: {"faults": [rejected(400)]}, A2: {"faults": [rejected(120)]}, K3: {"faults": [api_429]}})
    with pool_proxy(fake, tmp_path / "credentials", SLACK_WEBHOOK_URL=f"http://127.0.0.1:{slack.server_port}/hook") \
            as proxy:
        client = sdk(proxy)
        with pytest.raises(anthropic.RateLimitError) as info:
            ask(client, "everyone-limited")
        retry_after = int(info.value.response.headers["retry-after"])
        assert 115 <= retry_after <= 120  # a-max-2's reset, the earliest of the three
        assert info.value.body["error"]["type"] == "rate_limit_error"
        assert used_tokens(fake) == [A1, A2, K3]
        time.sleep(1.5)  # the other worker knows too: nobody is asked again
        for i in range(4):
            with pytest.raises(anthropic.RateLimitError):
                ask(client, f"again-{i}")
        assert len(used_tokens(fake)) == 3
        wait_until(lambda: len(notices(slack)) >= 3, what="three Slack notices")
        time.sleep(1.0)
        assert sorted(n for n in NAMES if any(n in text for text in notices(slack))) == sorted(NAMES)
        assert len(notices(slack)) == 3, notices(slack)


def test_a_401_that_survives_a_refresh_breaks_the_credential_until_its_file_changes(fake_upstream, tmp_path, slack):
    fake = fake_upstream
    # a-max-1 is refused, and so is the token its refresh brings (the fake's first: sk-ant-oat01-fake-1)
    fake.credentials({A1: {"status": 401}, "sk-ant-oat01-fake-1": {"status": 401}})
    folder = tmp_path / "credentials"
    with pool_proxy(fake, folder, SLACK_WEBHOOK_URL=f"http://127.0.0.1:{slack.server_port}/hook") as proxy:
        client = sdk(proxy)
        served, tries, _ = ask(client, "broken-one")
        assert served == "a-max-2.json" and tries == "2"
        assert used_tokens(fake) == [A1, "sk-ant-oat01-fake-1", A2]
        assert fake.oauth_calls() == 1
        view = wait_until(lambda: (lambda v: v if v["a-max-1.json"]["status"] == "broken" else None)(pool_view(proxy)),
                          what="a-max-1 broken in GET /")
        assert "401" in view["a-max-1.json"]["broken"]
        time.sleep(1.5)
        for i in range(4):
            assert ask(client, f"later-{i}")[0] in ("a-max-2.json", "a-api-key.json")
        assert len(used_tokens(fake)) == 7
        # the operator logs in again: a new file, a new token; the credential is used again
        fresh = "sk-ant-oat01-pool-max-one-fresh-0009"
        fake.oauth(valid_tokens=[A2, K3, fresh])
        write_pool(folder, a1=fresh)
        time.sleep(1.5)
        fake.credentials({A2: {"headers": unified(0.6)}, K3: {"headers": {"anthropic-ratelimit-requests-limit": "100",
                                                                          "anthropic-ratelimit-requests-remaining": "10"}}})
        ask(client, "warm-a2")
        ask(client, "warm-k3")
        time.sleep(1.5)
        assert wait_until(lambda: ask(client, f"new-{time.monotonic()}")[0] == "a-max-1.json", what="a-max-1 again")
        assert pool_view(proxy)["a-max-1.json"]["status"] == "ok"
        wait_until(lambda: sum("a-max-1.json" in n for n in notices(slack)) >= 2, what="the recovery notice")
        time.sleep(1.0)
        about = [n for n in notices(slack) if "a-max-1.json" in n]
        assert len(about) == 2 and "broken" in about[0] and "recovered" in about[1], about


def test_state_and_stickiness_are_shared_by_two_instances_with_postgresql(fake_upstream, tmp_path, pg_url):
    fake = fake_upstream
    fake.credentials({A1: {"faults": [rejected(600)]}})
    env = {"DATABASE_URL": pg_url}
    folder = tmp_path / "credentials"
    one = pool_proxy(fake, folder, workers=1, **env)
    two = pool_proxy(fake, folder, workers=1, **env)
    with one, two:
        first, second = sdk(one), sdk(two)
        served, tries, _ = ask(first, "fleet-one")
        assert (served, tries) == ("a-max-2.json", "2")
        wait_until(lambda: pool_view(two)["a-max-1.json"]["status"] == "cooling", what="instance two sees cooling")
        # the conversation's next turn reaches the other instance and stays where it was
        assert ask(second, "fleet-one", text="turn two")[0] == "a-max-2.json"
        for i in range(3):
            assert ask(second, f"fleet-new-{i}")[0] != "a-max-1.json"
        assert used_tokens(fake).count(A1) == 1


def test_a_stream_that_started_is_never_sent_again(fake_upstream, tmp_path):
    fake = fake_upstream
    fake.script("/v1/messages", [{"drop_after": 4}])  # the upstream drops the connection mid-stream
    with pool_proxy(fake, tmp_path / "credentials") as proxy:
        client = sdk(proxy)
        with pytest.raises(anthropic.APIError):
            with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, metadata=session("cut"),
                                        messages=[{"role": "user", "content": "a long answer"}]) as stream:
                for _ in stream.text_stream:
                    pass
        time.sleep(0.5)
        assert used_tokens(fake) == [A1]  # the cut stream was not re-sent on another credential
        assert pool_view(proxy)["a-max-1.json"]["status"] == "ok"
