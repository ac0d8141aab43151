"""The real Claude Code CLI through the proxy to an emulated DeepSeek and OpenRouter (tests/fakes/profiles.py).

Each run asks `claude -p` to read a file and report its first word: a tool turn. DeepSeek's thinking mode
refuses the second request unless the first answer's reasoning comes back with the tool call, so a passing
run proves the proxy's signed thinking made the round trip through the CLI. The proxies run the README's
"Upstream profiles" blocks, so the docs are what is tested.

Without the CLI (`cd tests/cli && npm install`) the module skips with one reason; with CI=true it fails.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.cli_helpers import (InternetTrap, Project, doc_env, find_claude, in_ci, run_claude, stats_delta,
                                   substitute, token_stats, wait_for_stats)
from tests.fakes.profiles import THINKING_TEXT
from tests.fakes.server import FakeUpstream, ProxyServer

CLAUDE, CLAUDE_WHY = find_claude()
if CLAUDE is None and not in_ci():
    pytest.skip(CLAUDE_WHY, allow_module_level=True)

pytestmark = pytest.mark.timeout(240)

KEY = "sk-profile-cli-upstream-key-0001"


@pytest.fixture(scope="module")
def claude() -> str:
    if CLAUDE is None:
        pytest.fail(f"CI=true but {CLAUDE_WHY}", pytrace=False)
    return CLAUDE


@pytest.fixture(scope="module")
def trap() -> Iterator[InternetTrap]:
    with InternetTrap() as t:
        yield t


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    return fake_upstream


def _proxy(fake: FakeUpstream, block: str, profile: str, tmp: Path) -> ProxyServer:
    env = substitute(doc_env(block), {"ANTHROPIC_PROXY_BASE_URL": f"{fake.url}/profile/{profile}",
                                      "CLAUDE_CODE_PROXY_API_KEY": KEY})
    return ProxyServer(env, cwd=tmp)


@pytest.fixture(scope="module")
def deepseek_proxy(fake_upstream_server, tmp_path_factory) -> Iterator[ProxyServer]:
    with _proxy(fake_upstream_server, "translation-deepseek/proxy", "deepseek",
                tmp_path_factory.mktemp("deepseek")) as proxy:
        yield proxy
    assert "Traceback" not in proxy.output(), proxy.output()[-6000:]


@pytest.fixture(scope="module")
def openrouter_proxy(fake_upstream_server, tmp_path_factory) -> Iterator[ProxyServer]:
    with _proxy(fake_upstream_server, "translation-openrouter/proxy", "openrouter",
                tmp_path_factory.mktemp("openrouter")) as proxy:
        yield proxy
    assert "Traceback" not in proxy.output(), proxy.output()[-6000:]


def _run(claude: str, tmp_path: Path, proxy: ProxyServer, trap: InternetTrap):
    project = Project(tmp_path)
    trap.attempts.clear()
    run = run_claude(claude, project, proxy.url, {"ANTHROPIC_AUTH_TOKEN": "client-side-placeholder"}, trap)
    assert not trap.attempts, f"the CLI tried to reach beyond the machine: {trap.attempts}"
    info = run.describe()
    assert run.returncode == 0, info
    assert run.result and run.result.get("subtype") == "success" and run.result.get("is_error") is False, info
    assert run.tool_uses("Read"), info
    assert project.token in run.result.get("result", ""), info
    return run


def _posts(fake: FakeUpstream, profile: str) -> list[dict]:
    return [r for r in fake.requests() if r["method"] == "POST" and r["path"] == f"/profile/{profile}/chat/completions"]


def _turns(posts: list[dict]) -> tuple[dict, dict]:
    first = next(p for p in posts if not any(m.get("role") == "tool" for m in p["body"]["messages"]))
    second = next(p for p in posts if any(m.get("role") == "tool" for m in p["body"]["messages"]))
    return first["body"], second["body"]


def test_claude_code_tool_turn_through_deepseek(claude, fake, deepseek_proxy, tmp_path, trap):
    before = token_stats(deepseek_proxy.url)
    run = _run(claude, tmp_path, deepseek_proxy, trap)
    posts = _posts(fake, "deepseek")
    assert len(posts) >= 2, [p["path"] for p in fake.requests()]
    first, second = _turns(posts)
    assert first["model"] == "deepseek-reasoner"
    assert first["reasoning_effort"] == "high"  # Claude Code's output_config.effort
    calls = [m for m in second["messages"] if m["role"] == "assistant" and m.get("tool_calls")]
    assert calls and calls[-1]["reasoning_content"] == THINKING_TEXT, calls
    # the CLI kept the proxy's thinking block, signature included, and the proxy recognised it
    transcript = [e for e in run.events if e.get("type") == "assistant"]
    thinking = [b for e in transcript for b in e["message"]["content"] if b.get("type") == "thinking"]
    assert thinking and thinking[0]["signature"].startswith("nxp1."), transcript
    after = wait_for_stats(deepseek_proxy.url,
                           lambda s: stats_delta(before, s, "stats", "127.0.0.1").get("requestCount", 0) >= 2)
    delta = stats_delta(before, after, "stats", "127.0.0.1")
    # the emulated DeepSeek reports prompt_cache_hit_tokens on the second turn: accounted as cache reads
    assert delta.get("cacheReadInputTokens", 0) > 0, delta


def test_claude_code_tool_turn_through_openrouter(claude, fake, openrouter_proxy, tmp_path, trap):
    _run(claude, tmp_path, openrouter_proxy, trap)
    posts = _posts(fake, "openrouter")
    assert len(posts) >= 2
    first, second = _turns(posts)
    assert first["model"].startswith("anthropic/")
    # Claude Code's cache_control markers survive on the system prompt and on the tool result
    system = first["messages"][0]
    assert isinstance(system["content"], list) and any("cache_control" in p for p in system["content"])
    marked = [m for m in second["messages"] if isinstance(m.get("content"), list)
              and any("cache_control" in p for p in m["content"])]
    assert len(marked) >= 2, json.dumps(second["messages"])[:2000]
    assert sum(1 for m in second["messages"] for p in (m["content"] if isinstance(m.get("content"), list) else ())
               if "cache_control" in p) <= 4  # Anthropic's limit of four breakpoints
