"""The real Claude Code CLI through the proxy, in both modes (issue 9).

Each run asks `claude -p` to read a file whose first word is a random token, so the token can only be in
the answer if the Read tool call and its result crossed the proxy both ways. The fake upstream is a tiny
scripted model (tests/fakes/upstream.py); the proxy runs as users run it (gunicorn + gevent). The
environment of every setup comes from the README's "Use with Claude Code" section, so the docs are what is tested.

Without the CLI (`cd tests/cli && npm install`) the module skips with one reason; with CI=true it fails.
"""
from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from app.services.credentials.state import SYNC_INTERVAL
from tests.e2e.cli_helpers import (REPO_ROOT, CliRun, InternetTrap, Project, doc_blocks, doc_env, doc_json, find_claude,
                                   in_ci, run_claude, stats_delta, substitute, token_stats, wait_for_stats)
from tests.fakes.server import FakeUpstream, ProxyServer

CLAUDE, CLAUDE_WHY = find_claude()
if CLAUDE is None and not in_ci():
    pytest.skip(CLAUDE_WHY, allow_module_level=True)

SERVER_KEY = "github_pat_server_e2e_0001"  # stands in for the team's upstream key
USER_KEY = "github_pat_user_e2e_0002"  # a developer's own upstream key
ANTHROPIC_KEY = "sk-ant-api03-e2e-client-key-0003"
OAUTH_TOKEN = "sk-ant-oat01-e2e-client-token-0004"
TEAM_KEY = "sk-ant-api03-e2e-team-a-key-0005"
TEAM_PROXY_KEY = "team-a-proxy-key-e2e-0006"
ADMIN_KEY = "operator-admin-key-e2e-0007"
UPSTREAM_MESSAGE = "Upstream exploded: capacity pool quota-7731 is exhausted"

# Fields of Claude Code's requests with no place in an OpenAI body: never forwarded in translation.
ANTHROPIC_ONLY = {"system", "thinking", "context_management", "output_config", "metadata", "top_k",
                  "container", "mcp_servers", "service_tier"}
# What Claude Code 2.1.197 sends at the top level (shared/fixtures/claude-code-2.1.197/messages-turn*.json).
CLAUDE_CODE_FIELDS = {"model", "messages", "system", "tools", "metadata", "max_tokens", "thinking",
                      "context_management", "output_config", "stream"}


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def claude() -> str:
    if CLAUDE is None:  # only reached with CI=true: the suite must not pass without these tests
        pytest.fail(f"CI=true but {CLAUDE_WHY}", pytrace=False)
    return CLAUDE


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    return fake_upstream


@pytest.fixture(scope="module")
def trap() -> Iterator[InternetTrap]:
    with InternetTrap() as t:
        yield t


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


@contextlib.contextmanager
def _proxy(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[ProxyServer]:
    # its own working directory, so a developer's .env in the repo cannot leak into the test
    with ProxyServer(env, cwd=tmp_path_factory.mktemp("proxy-cwd")) as proxy:
        yield proxy
    output = proxy.output()  # kept after stop(), so a traceback while shutting down counts too
    assert "Traceback" not in output, output[-6000:]


def _translation_env(fake_upstream_server: FakeUpstream, doc_block: str, **replace: str) -> dict[str, str]:
    return substitute(doc_env(doc_block), {"ANTHROPIC_PROXY_BASE_URL": fake_upstream_server.url, **replace})


@pytest.fixture(scope="module")
def translation_proxy(fake_upstream_server, tmp_path_factory) -> Iterator[ProxyServer]:
    env = _translation_env(fake_upstream_server, "translation-server-key/proxy", CLAUDE_CODE_PROXY_API_KEY=SERVER_KEY)
    with _proxy(tmp_path_factory, env) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def translation_cli_retry_proxy(fake_upstream_server, tmp_path_factory) -> Iterator[ProxyServer]:
    """As translation_proxy, but the proxy does not retry: a 429 reaches the CLI, which retries."""
    env = _translation_env(fake_upstream_server, "translation-server-key/proxy", CLAUDE_CODE_PROXY_API_KEY=SERVER_KEY)
    with _proxy(tmp_path_factory, dict(env, UPSTREAM_MAX_RETRIES="0")) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def responses_proxy(fake_upstream_server, tmp_path_factory) -> Iterator[ProxyServer]:
    env = _translation_env(fake_upstream_server, "translation-responses/proxy", CLAUDE_CODE_PROXY_API_KEY=SERVER_KEY)
    with _proxy(tmp_path_factory, env) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def own_key_proxy(fake_upstream_server, tmp_path_factory) -> Iterator[ProxyServer]:
    env = _translation_env(fake_upstream_server, "translation-own-key/proxy")
    assert "CLAUDE_CODE_PROXY_API_KEY" not in env
    with _proxy(tmp_path_factory, env) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def passthrough_proxy(fake_upstream_server, tmp_path_factory) -> Iterator[ProxyServer]:
    # CLAUDE_API_BASE_URL only points the proxy at the fake instead of api.anthropic.com
    env = dict(doc_env("passthrough/proxy"), CLAUDE_API_BASE_URL=fake_upstream_server.url)
    with _proxy(tmp_path_factory, env) as proxy:
        yield proxy


def _team_host() -> str:
    """A host name for the team that reaches the proxy (bound to 127.0.0.1) without DNS: `localhost`,
    unless it may resolve to ::1 on this machine."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 80, proto=socket.IPPROTO_TCP)}
    except OSError:
        addresses = set()
    return "localhost" if addresses == {"127.0.0.1"} else "127.0.0.1"


TEAM_HOST = _team_host()


@pytest.fixture(scope="module")
def domain_proxy(fake_upstream_server, tmp_path_factory) -> Iterator[ProxyServer]:
    """The docs' team mapping, with the team's host name replaced by TEAM_HOST (it must resolve here)."""
    doc = doc_env("passthrough-domain/proxy")
    mapping = json.loads(doc["DOMAIN_CREDENTIAL_MAPPING"])
    assert len(mapping) == 1
    file_doc = doc_json("passthrough-domain/credential-file")
    client_doc = doc_env("passthrough-domain/client")
    assert client_doc["ANTHROPIC_AUTH_TOKEN"] == file_doc["client_api_key"], "docs: client token != client_api_key"
    assert next(iter(mapping)) in client_doc["ANTHROPIC_BASE_URL"], "docs: client URL is not the mapped host"
    cred = tmp_path_factory.mktemp("credentials") / "team-a.json"
    cred.write_text(json.dumps(dict(file_doc, api_key=TEAM_KEY, client_api_key=TEAM_PROXY_KEY)))
    cred.chmod(0o600)
    env = substitute(doc, {"DOMAIN_CREDENTIAL_MAPPING": json.dumps({TEAM_HOST: str(cred)}),
                           "PROXY_API_KEYS": ADMIN_KEY})
    with _proxy(tmp_path_factory, dict(env, CLAUDE_API_BASE_URL=fake_upstream_server.url)) as proxy:
        yield proxy


# -- helpers -----------------------------------------------------------------------------------------


def _client(block: str, proxy: ProxyServer, **secrets: str) -> dict[str, str]:
    """The docs' client variables, with the proxy's URL and the given test secrets."""
    env = substitute(doc_env(block), {"ANTHROPIC_BASE_URL": proxy.url, **secrets})
    env.pop("ANTHROPIC_BASE_URL")  # run_claude sets it
    return env


def _run(claude: str, project: Project, proxy: ProxyServer, credentials: dict[str, str], trap: InternetTrap,
         base_url: str | None = None, **kw) -> CliRun:
    trap.attempts.clear()
    run = run_claude(claude, project, base_url or proxy.url, credentials, trap, **kw)
    assert not trap.attempts, f"the CLI tried to reach beyond the machine: {trap.attempts}"
    return run


def assert_read_and_answered(run: CliRun, project: Project) -> None:
    """Exit 0, a success result, a Read of the file in the transcript and the file's token in the answer."""
    info = run.describe()
    assert run.returncode == 0, info
    result = run.result
    assert result is not None, "no result event\n" + info
    assert result.get("subtype") == "success" and result.get("is_error") is False, info
    reads = run.tool_uses("Read")
    assert reads, "no Read tool_use in the transcript\n" + info
    assert reads[0]["input"].get("file_path") == str(project.file), info
    assert any(project.token in json.dumps(r.get("content")) for r in run.tool_results()), info
    assert project.token in result.get("result", ""), info


def assert_same_usage(run: CliRun, counted: dict) -> None:
    """The tokens Claude Code reports for the run are the tokens the proxy accounted."""
    usage = run.result["usage"]
    assert (counted["inputTokens"], counted["outputTokens"]) == (usage["input_tokens"], usage["output_tokens"]), \
        (counted, usage)


def _posts(fake: FakeUpstream, endpoint: str) -> list[dict]:
    return [r for r in fake.requests(endpoint) if r["method"] == "POST"]


def _tool_message_turns(posts: list[dict]) -> tuple[dict, dict]:
    """(the request that got the tool call, the request carrying its result)."""
    first = next(p for p in posts if not any(m.get("role") == "tool" for m in p["body"]["messages"]))
    second = next(p for p in posts if any(m.get("role") == "tool" for m in p["body"]["messages"]))
    return first, second


def _stats_after(proxy: ProxyServer, before: dict, domain: str, requests: int, admin_key: str | None = None) -> dict:
    """/token-stats once it counts `requests` more requests for `domain` than `before` did."""
    return wait_for_stats(proxy.url, lambda s: stats_delta(before, s, "stats", domain).get("requestCount", 0)
                          >= requests, admin_key=admin_key)


# -- 1, 2: translation mode --------------------------------------------------------------------------


def test_translation_default_model(claude, fake, translation_proxy, project, trap):
    before = token_stats(translation_proxy.url)
    run = _run(claude, project, translation_proxy,
               _client("translation-server-key/client", translation_proxy), trap)
    assert_read_and_answered(run, project)

    posts = _posts(fake, "/chat/completions")
    assert len(posts) == 2, [p["body"].get("messages", [])[-1:] for p in posts]
    assert not fake.requests("/v1/messages"), "translation mode called the Anthropic API"
    for post in posts:
        body = post["body"]
        assert post["model"] == "openai/gpt-4.1"
        assert post["headers"].get("authorization") == "Bearer " + SERVER_KEY  # not the client's token
        assert "x-api-key" not in post["headers"]
        assert not ANTHROPIC_ONLY & set(body), sorted(ANTHROPIC_ONLY & set(body))
        assert body.get("stream") is True
        assert len(body.get("user") or "") <= 64  # OpenAI's limit; Claude Code's user_id is a JSON string
        assert body["messages"][0]["role"] == "system"
        tools = body["tools"]
        assert tools and all(t["type"] == "function" and set(t["function"]) >= {"name", "parameters"}
                             for t in tools)
        assert "Read" in {t["function"]["name"] for t in tools}
        for message in body["messages"]:
            content = message.get("content")
            blocks = content if isinstance(content, list) else []
            assert not any(b.get("type") in ("thinking", "redacted_thinking", "tool_use", "tool_result")
                           or "cache_control" in b for b in blocks), message

    first, second = _tool_message_turns(posts)
    roles = [m["role"] for m in first["body"]["messages"]]
    assert "system" in roles[roles.index("user"):], roles  # the CLI's mid-conversation system message, in place
    assert any(m["role"] == "user" and project.prompt in json.dumps(m["content"]) for m in first["body"]["messages"])
    assistant = next(m for m in second["body"]["messages"] if m.get("tool_calls"))
    call = assistant["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "Read"
    assert json.loads(call["function"]["arguments"]) == {"file_path": str(project.file)}
    tool = next(m for m in second["body"]["messages"] if m.get("role") == "tool")
    assert tool["tool_call_id"] == call["id"]
    assert project.token in json.dumps(tool["content"])

    after = _stats_after(translation_proxy, before, "127.0.0.1", 2)
    counted = stats_delta(before, after, "stats", "127.0.0.1")
    assert counted["requestCount"] == 2 and counted["toolCallCount"] == 1, counted
    assert counted["errorCount"] == 0 and counted["inputTokens"] > 0 and counted["outputTokens"] > 0, counted
    assert_same_usage(run, counted)
    by_model = stats_delta(before, after, "models", "openai/gpt-4.1")
    assert by_model["requestCount"] == 2 and by_model["toolCallCount"] == 1, by_model


def test_translation_haiku_uses_model_map(claude, fake, translation_proxy, project, trap):
    mapped = json.loads(doc_env("translation-server-key/proxy")["MODEL_MAP"])["claude-*haiku*"]
    before = token_stats(translation_proxy.url)
    run = _run(claude, project, translation_proxy, _client("translation-server-key/client", translation_proxy),
               trap, args=["--model", "haiku"])
    assert_read_and_answered(run, project)
    init = run.system_events("init")
    assert init and "haiku" in init[0].get("model", ""), init  # the CLI asked for its haiku model
    posts = _posts(fake, "/chat/completions")
    assert len(posts) == 2 and {p["model"] for p in posts} == {mapped}, [p["model"] for p in posts]
    after = _stats_after(translation_proxy, before, "127.0.0.1", 2)
    assert stats_delta(before, after, "models", mapped).get("requestCount") == 2


def test_translation_with_each_users_own_key(claude, fake, own_key_proxy, project, trap):
    run = _run(claude, project, own_key_proxy,
               _client("translation-own-key/client", own_key_proxy, ANTHROPIC_AUTH_TOKEN=USER_KEY), trap)
    assert_read_and_answered(run, project)
    posts = _posts(fake, "/chat/completions")
    assert len(posts) == 2
    assert all(p["headers"].get("authorization") == "Bearer " + USER_KEY for p in posts)


def test_translation_to_the_responses_api_carries_reasoning_across_the_tool_turn(claude, fake, responses_proxy,
                                                                                  project, trap):
    doc = doc_env("translation-responses/proxy")
    before = token_stats(responses_proxy.url)
    run = _run(claude, project, responses_proxy, _client("translation-server-key/client", responses_proxy), trap)
    assert_read_and_answered(run, project)

    posts = _posts(fake, "/responses")
    assert len(posts) == 2, [p["body"].get("input", [])[-1:] for p in posts]
    assert not fake.requests("/chat/completions") and not fake.requests("/v1/messages")
    for post in posts:
        body = post["body"]
        assert post["model"] == doc["REASONING_MODEL"]  # Claude Code asks for (adaptive) thinking
        assert post["headers"].get("authorization") == "Bearer " + SERVER_KEY
        assert body["store"] is False and body["include"] == ["reasoning.encrypted_content"]
        assert body["reasoning"]["summary"] == "auto" and body["reasoning"]["effort"] in ("low", "medium", "high")
        assert body["instructions"] and body["stream"] is True
        assert body["prompt_cache_key"] == run.result["session_id"]  # one conversation, one upstream cache
        assert all(t["strict"] is False for t in body["tools"])
    # the thinking block the CLI got from turn 1 came back in turn 2 as the very reasoning item the fake issued
    state = fake._control("GET", "responses")
    first_items = state["issued"]
    sent_back = [i for i in posts[1]["body"]["input"] if i["type"] == "reasoning"]
    assert len(sent_back) == 1 and state["returned"] == [sent_back[0]["id"]], state
    assert first_items[sent_back[0]["id"]] == sent_back[0]["encrypted_content"]
    kinds = [i["type"] for i in posts[1]["body"]["input"]]
    assert kinds[kinds.index("reasoning"):] == ["reasoning", "message", "function_call", "function_call_output"], kinds
    assert any(b.get("type") == "thinking" and "Planning the read" in b.get("thinking", "")
               for e in run.events if e.get("type") == "assistant" for b in e["message"].get("content") or [])

    after = _stats_after(responses_proxy, before, "127.0.0.1", 2)
    counted = stats_delta(before, after, "stats", "127.0.0.1")
    assert counted["requestCount"] == 2 and counted["toolCallCount"] == 1 and counted["errorCount"] == 0, counted
    assert_same_usage(run, counted)


# -- 3, 4 and the domain mapping: passthrough mode ---------------------------------------------------


def test_passthrough_with_api_key(claude, fake, passthrough_proxy, project, trap):
    before = token_stats(passthrough_proxy.url)
    run = _run(claude, project, passthrough_proxy,
               _client("passthrough-api-key/client", passthrough_proxy, ANTHROPIC_API_KEY=ANTHROPIC_KEY), trap)
    assert_read_and_answered(run, project)

    posts = _posts(fake, "/v1/messages")
    assert len(posts) == 2
    assert not fake.requests("/chat/completions")
    for post in posts:
        headers, body = post["headers"], post["body"]
        assert headers.get("x-api-key") == ANTHROPIC_KEY and "authorization" not in headers
        assert "oauth-2025-04-20" not in headers.get("anthropic-beta", "")
        assert "claude-code-20250219" in headers.get("anthropic-beta", "")  # the client's betas go on
        assert set(body) == CLAUDE_CODE_FIELDS, sorted(set(body) ^ CLAUDE_CODE_FIELDS)
        assert body["thinking"]["type"] == "adaptive" and body["context_management"].get("edits")
        assert body["output_config"].get("effort") and body["max_tokens"] == 64000
        assert isinstance(body["metadata"]["user_id"], str) and len(body["metadata"]["user_id"]) > 64
        assert any(m.get("role") == "system" for m in body["messages"])  # mid-conversation system message
    # turn 2 sends back the fake's thinking block and signature, which went through the proxy twice
    second = next(p for p in posts if any(isinstance(m.get("content"), list) and any(
        b.get("type") == "tool_result" for b in m["content"]) for m in p["body"]["messages"]))
    history = [b for m in second["body"]["messages"] if m["role"] == "assistant" for b in m["content"]]
    assert any(b["type"] == "thinking" and b["signature"].startswith("fakesig_") for b in history), history
    assert any(b["type"] == "tool_use" and b["name"] == "Read" for b in history)

    after = _stats_after(passthrough_proxy, before, "127.0.0.1", 2)
    counted = stats_delta(before, after, "stats", "127.0.0.1")
    assert counted["requestCount"] == 2 and counted["toolCallCount"] == 1, counted
    assert counted["errorCount"] == 0 and counted["inputTokens"] > 0, counted
    assert_same_usage(run, counted)


def test_passthrough_with_oauth_token(claude, fake, passthrough_proxy, project, trap):
    """Also with a gzip-compressing upstream: the CLI still reads the stream, the accounting too."""
    fake.compress(True)
    before = token_stats(passthrough_proxy.url)
    run = _run(claude, project, passthrough_proxy,
               _client("passthrough-oauth/client", passthrough_proxy, ANTHROPIC_AUTH_TOKEN=OAUTH_TOKEN), trap)
    assert_read_and_answered(run, project)
    posts = _posts(fake, "/v1/messages")
    assert len(posts) == 2
    for post in posts:
        headers = post["headers"]
        assert headers.get("authorization") == "Bearer " + OAUTH_TOKEN and "x-api-key" not in headers
        betas = headers.get("anthropic-beta", "").split(",")
        assert "oauth-2025-04-20" in betas and "claude-code-20250219" in betas, betas
        assert "gzip" in headers.get("accept-encoding", "")  # so the fake did compress its answers
    after = _stats_after(passthrough_proxy, before, "127.0.0.1", 2)
    counted = stats_delta(before, after, "stats", "127.0.0.1")
    assert counted["requestCount"] == 2 and counted["toolCallCount"] == 1 and counted["inputTokens"] > 0, counted


def test_passthrough_with_domain_mapping(claude, fake, domain_proxy, project, trap):
    client = _client("passthrough-domain/client", domain_proxy, ANTHROPIC_AUTH_TOKEN=TEAM_PROXY_KEY)
    before = token_stats(domain_proxy.url, ADMIN_KEY)
    run = _run(claude, project, domain_proxy, client, trap, base_url=f"http://{TEAM_HOST}:{domain_proxy.port}")
    assert_read_and_answered(run, project)
    posts = _posts(fake, "/v1/messages")
    assert len(posts) == 2
    for post in posts:
        headers = post["headers"]
        assert headers.get("x-api-key") == TEAM_KEY and "authorization" not in headers  # the team's key
        assert TEAM_PROXY_KEY not in json.dumps(headers)  # the proxy's access key stays at the proxy
    after = _stats_after(domain_proxy, before, TEAM_HOST, 2, ADMIN_KEY)
    counted = stats_delta(before, after, "stats", TEAM_HOST)
    assert counted["requestCount"] == 2 and counted["toolCallCount"] == 1, counted


# -- 5: an upstream 429, then success -----------------------------------------------------------------


def test_rate_limit_is_retried_by_the_cli(claude, fake, translation_cli_retry_proxy, project, trap):
    """UPSTREAM_MAX_RETRIES=0: the 429 and its retry-after reach the CLI, whose own retry succeeds."""
    proxy = translation_cli_retry_proxy
    fake.script("/chat/completions", [{"status": 429, "headers": {"retry-after": "1"}, "json": {"error": {
        "message": "Rate limit reached for gpt-4.1", "type": "rate_limit_exceeded", "code": "rate_limit_exceeded"}}}])
    before = token_stats(proxy.url)
    run = _run(claude, project, proxy, _client("translation-server-key/client", proxy), trap)
    assert_read_and_answered(run, project)
    retries = run.system_events("api_retry")
    assert len(retries) == 1 and retries[0].get("error_status") == 429, run.describe()
    assert retries[0].get("retry_delay_ms") == 1000, retries  # the upstream's retry-after, relayed
    assert len(_posts(fake, "/chat/completions")) == 3  # 429, then the two turns
    after = _stats_after(proxy, before, "127.0.0.1", 3)
    counted = stats_delta(before, after, "stats", "127.0.0.1")
    assert counted["requestCount"] == 3 and counted["errorCount"] == 1, counted


@pytest.fixture
def limited_key_proxy(fake_upstream_server, tmp_path_factory) -> Iterator[tuple[ProxyServer, str]]:
    """The translation setup with one client key allowed 1 request at a time (made with the keys CLI)."""
    import subprocess
    import sys

    env = _translation_env(fake_upstream_server, "translation-server-key/proxy", CLAUDE_CODE_PROXY_API_KEY=SERVER_KEY)
    proxy = ProxyServer(dict(env, UPSTREAM_MAX_RETRIES="0", STREAM_PING_INTERVAL="0"),
                        cwd=tmp_path_factory.mktemp("proxy-cwd"))
    made = subprocess.run([sys.executable, "-m", "app", "keys", "create", "--name", "cli-user", "--concurrency", "1",
                           "--json"], capture_output=True, text=True, cwd=str(proxy.cwd), timeout=60,
                          env={"PATH": proxy.env["PATH"], "PYTHONPATH": str(REPO_ROOT),
                               "USAGE_DB_PATH": proxy.env["USAGE_DB_PATH"]})
    assert made.returncode == 0, made.stderr
    with proxy:
        yield proxy, json.loads(made.stdout)["key"]
    assert "Traceback" not in proxy.output(), proxy.output()[-6000:]


def test_a_limited_key_gets_through_the_clis_own_retries_once_the_429_clears(claude, fake, limited_key_proxy,
                                                                             project, trap):
    """The key's one slot is held by a slow stream: the CLI's first tries get 429 + retry-after, and its own
    retries get through once the stream ends and frees the slot."""
    import http.client
    import threading

    proxy, key = limited_key_proxy
    fake.script("/chat/completions", [{"first_byte_ms": 2500}])  # the holder's answer: slow

    def hold() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        conn.request("POST", "/v1/messages", headers={"x-api-key": key, "content-type": "application/json"},
                     body=json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": True,
                                      "messages": [{"role": "user", "content": "hold the slot"}]}))
        conn.getresponse().read()
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    deadline = time.monotonic() + 10
    while not _posts(fake, "/chat/completions"):
        assert time.monotonic() < deadline, "the holding request never reached the upstream"
        time.sleep(0.05)
    run = _run(claude, project, proxy, _client("translation-server-key/client", proxy, ANTHROPIC_AUTH_TOKEN=key),
               trap)
    holder.join(30)
    assert_read_and_answered(run, project)
    retries = run.system_events("api_retry")
    assert retries and all(r.get("error_status") == 429 for r in retries), run.describe()
    assert len(_posts(fake, "/chat/completions")) == 3  # the holder, then the CLI's two turns: 429s never went up
    assert key not in json.dumps(fake.requests())


def test_rate_limit_is_retried_by_the_proxy(claude, fake, passthrough_proxy, project, trap):
    """Default UPSTREAM_MAX_RETRIES: the proxy retries the 429 itself and the CLI never sees it."""
    fake.script("/v1/messages", [{"status": 429, "headers": {"retry-after": "1"}}])
    before = token_stats(passthrough_proxy.url)
    run = _run(claude, project, passthrough_proxy,
               _client("passthrough-api-key/client", passthrough_proxy, ANTHROPIC_API_KEY=ANTHROPIC_KEY), trap)
    assert_read_and_answered(run, project)
    assert not run.system_events("api_retry"), run.describe()
    assert len(_posts(fake, "/v1/messages")) == 3  # 429 + retry, then turn 2
    after = _stats_after(passthrough_proxy, before, "127.0.0.1", 2)
    counted = stats_delta(before, after, "stats", "127.0.0.1")
    assert counted["requestCount"] == 2 and counted["errorCount"] == 0, counted


# -- 5b: a credential pool absorbs a 429 and a 529 ------------------------------------------------------

POOL_TOKENS = ("sk-ant-oat01-e2e-pool-one-0007", "sk-ant-oat01-e2e-pool-two-0008", "sk-ant-api03-e2e-pool-key-0009")


@pytest.fixture(scope="module")
def pool_proxy(fake_upstream_server, tmp_path_factory) -> Iterator[ProxyServer]:
    """Two subscriptions and an API key behind the team's host, 2 workers."""
    folder = tmp_path_factory.mktemp("credentials")
    far = 4102444800000  # expiresAt in 2100: no refresh on the way
    paths = []
    for name, secret in zip(("a-max-1.json", "a-max-2.json", "a-api-key.json"), POOL_TOKENS):
        data = {"type": "api_key", "api_key": secret} if "api03" in secret else \
            {"type": "oauth", "oauth": {"accessToken": secret, "refreshToken": "sk-ant-ort01-unused", "expiresAt": far}}
        (folder / name).write_text(json.dumps(data))
        (folder / name).chmod(0o600)
        paths.append(str(folder / name))
    env = dict(doc_env("passthrough/proxy"), CLAUDE_API_BASE_URL=fake_upstream_server.url, WEB_CONCURRENCY="2",
               DOMAIN_CREDENTIAL_MAPPING=json.dumps({TEAM_HOST: paths}))
    with _proxy(tmp_path_factory, env) as proxy:
        yield proxy


def test_pool_fails_over_without_the_cli_seeing_it(claude, fake, pool_proxy, project, trap):
    """a-max-1 answers 429 (rejected), then the API key 529: Claude Code never sees either, and each
    conversation stays on the credential that served it."""
    one, two, key = POOL_TOKENS
    now = int(time.time())
    fake.oauth(valid_tokens=list(POOL_TOKENS))
    fake.credentials({one: {"faults": [{"status": 429, "headers": {
        "anthropic-ratelimit-unified-status": "rejected", "anthropic-ratelimit-unified-reset": str(now + 600),
        "retry-after": "600"}}]}})
    run = _run(claude, project, pool_proxy, {"ANTHROPIC_AUTH_TOKEN": "unused"}, trap,
               base_url=f"http://{TEAM_HOST}:{pool_proxy.port}")
    assert_read_and_answered(run, project)
    assert not run.system_events("api_retry"), run.describe()
    used = [p["headers"].get("x-api-key") or p["headers"].get("authorization", "")[7:] for p in _posts(fake, "/v1/messages")]
    assert used == [one, two, two], used  # refused once; both turns then on a-max-2 (sticky)
    # the cooling reached this worker at once; the other worker learns it at its next sync with the store
    time.sleep(SYNC_INTERVAL + 0.5)
    # the next conversation goes to the least used credential (the API key, never used yet), which is
    # overloaded once: a-max-2 serves it
    fake.reset()
    fake.oauth(valid_tokens=list(POOL_TOKENS))
    fake.credentials({key: {"faults": [{"status": 529}]}})
    second = Project(project.root / "second")
    run = _run(claude, second, pool_proxy, {"ANTHROPIC_AUTH_TOKEN": "unused"}, trap,
               base_url=f"http://{TEAM_HOST}:{pool_proxy.port}")
    assert_read_and_answered(run, second)
    assert not run.system_events("api_retry"), run.describe()
    used = [p["headers"].get("x-api-key") or p["headers"].get("authorization", "")[7:] for p in _posts(fake, "/v1/messages")]
    assert used == [key, two, two], used


# -- 6: an upstream error that does not clear ----------------------------------------------------------

CLI_RETRIES = 2  # CLAUDE_CODE_MAX_RETRIES: the CLI's own retries of a 5xx (default 10, with back-off)


def _assert_error_carried(run: CliRun, status: int) -> None:
    info = run.describe()
    assert run.returncode != 0, info
    result = run.result
    assert result is not None and result.get("is_error") is True, info
    assert result.get("api_error_status") == status, info
    assert UPSTREAM_MESSAGE in result.get("result", ""), info
    assert not run.tool_uses(), info


@pytest.mark.parametrize("mode", ["translation", "passthrough"])
def test_persistent_upstream_error(claude, fake, mode, request, project, trap):
    """A 500 that never clears: the CLI retries CLI_RETRIES times, then ends with the upstream's message.

    (Not 529: after repeated 529s the CLI prints its own "Repeated 529 Overloaded errors" text whatever
    the upstream said.)
    """
    if mode == "translation":
        proxy = request.getfixturevalue("translation_proxy")
        endpoint, error = "/chat/completions", {"error": {"message": UPSTREAM_MESSAGE, "type": "server_error",
                                                          "code": None}}
        client = _client("translation-server-key/client", proxy)
    else:
        proxy = request.getfixturevalue("passthrough_proxy")
        endpoint, error = "/v1/messages", {"type": "error", "error": {"type": "api_error",
                                                                       "message": UPSTREAM_MESSAGE}}
        client = _client("passthrough-api-key/client", proxy, ANTHROPIC_API_KEY=ANTHROPIC_KEY)
    fake.script(endpoint, [{"status": 500, "json": error}] * 10)
    before = token_stats(proxy.url)
    run = _run(claude, project, proxy, client, trap, extra_env={"CLAUDE_CODE_MAX_RETRIES": str(CLI_RETRIES)},
               timeout=60)
    _assert_error_carried(run, 500)
    assert len(_posts(fake, endpoint)) == CLI_RETRIES + 1  # the proxy does not retry a 500
    assert len(run.system_events("api_retry")) == CLI_RETRIES
    after = _stats_after(proxy, before, "127.0.0.1", CLI_RETRIES + 1)
    counted = stats_delta(before, after, "stats", "127.0.0.1")
    assert counted["requestCount"] == CLI_RETRIES + 1 and counted["errorCount"] == CLI_RETRIES + 1, counted


# -- the README ---------------------------------------------------------------------------------------


def test_readme_carries_the_checked_section():
    """The README's "Use with Claude Code" section has a checked block for every set-up these tests run."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "## Use with Claude Code" in readme
    names = set(doc_blocks())
    for setup in ("translation-server-key", "translation-own-key"):
        assert {f"{setup}/proxy", f"{setup}/client"} <= names, setup
    assert any(n.startswith("passthrough") for n in names), names


def test_the_served_client_settings_file_is_enough_for_claude_code(claude, fake, translation_proxy, project, trap):
    """client-setup/claude-code-settings.json as a user downloads it, host replaced, and no variable set."""
    import urllib.request

    with urllib.request.urlopen(translation_proxy.url + "/client-setup/claude-code-settings.json", timeout=10) as r:
        settings = json.loads(r.read())
    settings["env"]["ANTHROPIC_BASE_URL"] = translation_proxy.url
    (project.home / ".claude").mkdir(exist_ok=True)
    (project.home / ".claude" / "settings.json").write_text(json.dumps(settings))
    run = _run(claude, project, translation_proxy, {}, trap)  # no ANTHROPIC_AUTH_TOKEN / _API_KEY in the env
    assert_read_and_answered(run, project)
