"""Model routing in translation mode: thinking -> reasoning model, MODEL_MAP first, max_tokens caps."""
import dataclasses
import json
from pathlib import Path

import pytest

from app.translation.models import Route, route, wants_thinking

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "claude-code-2.1.197"

SETTINGS = dict(
    reasoning_model="deepseek-r1",
    completion_model="gpt-4.1",
    reasoning_max_tokens=32000,
    completion_max_tokens=8192,
    model_map={},
)


def body(**extra):
    return {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize(
    "thinking, expected",
    [
        ({"type": "enabled", "budget_tokens": 2048}, True),
        ({"type": "adaptive"}, True),
        ({"type": "disabled"}, False),
        ({"type": "something-new"}, False),
        ({}, False),
        ("enabled", False),
        (None, False),
    ],
)
def test_wants_thinking(thinking, expected):
    assert wants_thinking(body(thinking=thinking)) is expected


def test_wants_thinking_absent():
    assert wants_thinking(body()) is False


def test_thinking_enabled_goes_to_reasoning_model_with_its_cap():
    r = route(body(max_tokens=64000, thinking={"type": "enabled", "budget_tokens": 31999}), **SETTINGS)
    assert r == Route(model="deepseek-r1", max_tokens=32000, reasoning=True)


def test_adaptive_thinking_goes_to_reasoning_model():
    r = route(body(thinking={"type": "adaptive"}), **SETTINGS)
    assert (r.model, r.reasoning) == ("deepseek-r1", True)


@pytest.mark.parametrize("thinking", [None, {"type": "disabled"}])
def test_no_thinking_goes_to_completion_model(thinking):
    b = body() if thinking is None else body(thinking=thinking)
    r = route(b, **SETTINGS)
    assert (r.model, r.reasoning) == ("gpt-4.1", False)


def test_max_tokens_under_cap_is_kept():
    assert route(body(max_tokens=512), **SETTINGS).max_tokens == 512


def test_max_tokens_over_cap_is_lowered_to_cap():
    assert route(body(max_tokens=64000), **SETTINGS).max_tokens == 8192


def test_max_tokens_equal_to_cap_is_kept():
    assert route(body(max_tokens=8192), **SETTINGS).max_tokens == 8192


def test_no_cap_leaves_max_tokens_unchanged():
    settings = {**SETTINGS, "completion_max_tokens": None}
    assert route(body(max_tokens=64000), **settings).max_tokens == 64000


def test_missing_max_tokens_gets_the_cap():
    b = body()
    del b["max_tokens"]
    assert route(b, **SETTINGS).max_tokens == 8192
    assert route(b, **{**SETTINGS, "completion_max_tokens": None}).max_tokens is None


def test_model_map_is_consulted_first_case_insensitively():
    settings = {**SETTINGS, "model_map": {"claude-*haiku*": "openai/gpt-4.1-mini"}}
    r = route(body(model="Claude-Haiku-4-5-20251001", thinking={"type": "enabled", "budget_tokens": 1024}), **settings)
    assert r.model == "openai/gpt-4.1-mini"
    # The cap still follows the thinking request.
    assert r.reasoning is True and r.max_tokens == 1000


def test_model_map_first_matching_pattern_wins_in_order():
    settings = {**SETTINGS, "model_map": {"claude-opus-*": "big", "claude-*": "default", "*": "never"}}
    assert route(body(model="claude-opus-4-8"), **settings).model == "big"
    assert route(body(model="claude-sonnet-4-5"), **settings).model == "default"


def test_model_map_without_match_falls_back_to_thinking_rule():
    settings = {**SETTINGS, "model_map": {"*haiku*": "small"}}
    assert route(body(model="claude-opus-4-8"), **settings).model == "gpt-4.1"
    assert route(body(model="claude-opus-4-8", thinking={"type": "adaptive"}), **settings).model == "deepseek-r1"


def test_model_map_glob_is_whole_name_not_substring():
    settings = {**SETTINGS, "model_map": {"haiku": "small"}}
    assert route(body(model="claude-haiku-4-5"), **settings).model == "gpt-4.1"


def test_model_map_ignores_non_string_model():
    settings = {**SETTINGS, "model_map": {"*": "any"}}
    assert route(body(model=None), **settings).model == "gpt-4.1"


def test_model_map_none_is_allowed():
    assert route(body(), **{**SETTINGS, "model_map": None}).model == "gpt-4.1"


def test_route_is_frozen():
    r = route(body(), **SETTINGS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.model = "x"  # type: ignore[misc]


def test_claude_code_fixture_routes_to_reasoning_model():
    b = json.loads((FIXTURES / "messages-turn1.json").read_text())
    r = route(b, **SETTINGS)
    assert r == Route(model="deepseek-r1", max_tokens=32000, reasoning=True)


def test_upstream_api_the_routing_map_entry_decides_then_the_upstream_then_the_default():
    from app.translation.models import upstream_api

    model_map = {"claude-opus-*": "gpt-5", "claude-*": "gpt-4.1"}
    apis = {"claude-opus-*": "responses"}
    kw = dict(model_map=model_map, model_apis=apis, default="chat")
    assert upstream_api("Claude-Opus-4-1", **kw) == "responses"  # case-insensitive, like the model match
    assert upstream_api("claude-sonnet-4-5", **kw) == "chat"  # the entry that routes it names no api
    assert upstream_api("gpt-x", **kw) == "chat"
    assert upstream_api("claude-sonnet-4-5", **kw, upstream={"api": "responses"}) == "responses"
    assert upstream_api("claude-opus-4-1", model_map=model_map, model_apis=apis, default="chat",
                        upstream={"api": "chat"}) == "responses"
    assert upstream_api(None, model_map=None, model_apis=None, default="responses") == "responses"
