"""Model routing for translation mode: which upstream model a request goes to, and its max_tokens cap."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

_THINKING_TYPES = frozenset({"enabled", "adaptive"})


@dataclass(frozen=True)
class Route:
    model: str  # the upstream model to call
    max_tokens: int | None  # what to send upstream; None = send none
    reasoning: bool  # the request asked for extended thinking


def wants_thinking(body: dict) -> bool:
    """True when `thinking.type` is "enabled" or "adaptive" (Claude Code sends both)."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in _THINKING_TYPES


@lru_cache(maxsize=64)
def _compiled(items: tuple[tuple[str, str], ...]) -> tuple[tuple[re.Pattern[str], str], ...]:
    # Case-insensitive fnmatch: both sides lower-cased, pattern translated once.
    return tuple((re.compile(fnmatch.translate(p.lower())), m) for p, m in items)


@lru_cache(maxsize=1024)
def _lookup(items: tuple[tuple[str, str], ...], model: str) -> str | None:
    name = model.lower()
    for pattern, target in _compiled(items):
        if pattern.match(name):
            return target
    return None


@lru_cache(maxsize=1024)
def _matched_pattern(patterns: tuple[str, ...], model: str) -> str | None:
    name = model.lower()
    for pattern in patterns:
        if re.match(fnmatch.translate(pattern.lower()), name):
            return pattern
    return None


def upstream_api(
    model: object,
    *,
    model_map: Mapping[str, str] | None,
    model_apis: Mapping[str, str] | None,
    default: str,
    upstream: Mapping[str, object] | None = None,
) -> str:
    """Which OpenAI API a request goes to: "chat" or "responses".

    The MODEL_MAP entry that routes the model decides when it names an api, then the upstream entry
    (its "api"), then the default (UPSTREAM_API).
    """
    if model_apis and model_map and isinstance(model, str):
        pattern = _matched_pattern(tuple(model_map), model)
        if pattern is not None and pattern in model_apis:
            return model_apis[pattern]
    if upstream is not None and upstream.get("api") in ("chat", "responses"):
        return upstream["api"]  # type: ignore[return-value]
    return default


class ModelRouter:
    """The model choice and max_tokens cap, built once from the settings."""

    __slots__ = ("reasoning_model", "completion_model", "reasoning_max_tokens", "completion_max_tokens", "_map")

    def __init__(self, reasoning_model: str, completion_model: str, reasoning_max_tokens: int | None,
                 completion_max_tokens: int | None, model_map: Mapping[str, str] | None) -> None:
        self.reasoning_model = reasoning_model
        self.completion_model = completion_model
        self.reasoning_max_tokens = reasoning_max_tokens
        self.completion_max_tokens = completion_max_tokens
        self._map = tuple((model_map or {}).items())

    def route(self, body: dict) -> Route:
        """Choose the upstream model (MODEL_MAP first, then thinking -> reasoning model) and cap max_tokens."""
        reasoning = wants_thinking(body)
        model = body.get("model")
        model = _lookup(self._map, model) if self._map and isinstance(model, str) else None
        if model is None:
            model = self.reasoning_model if reasoning else self.completion_model
        cap = self.reasoning_max_tokens if reasoning else self.completion_max_tokens
        requested = body.get("max_tokens")
        if type(requested) is not int or requested < 1:
            requested = None
        if requested is None:
            max_tokens = cap
        elif cap is None:
            max_tokens = requested
        else:
            max_tokens = min(requested, cap)
        return Route(model=model, max_tokens=max_tokens, reasoning=reasoning)


def route(
    body: dict,
    *,
    reasoning_model: str,
    completion_model: str,
    reasoning_max_tokens: int | None,
    completion_max_tokens: int | None,
    model_map: Mapping[str, str] | None,
) -> Route:
    """One request's route without a router at hand (tests, the benchmark's profile)."""
    return ModelRouter(reasoning_model, completion_model, reasoning_max_tokens, completion_max_tokens,
                       model_map).route(body)


def model_map_for(upstream_map: Mapping | None, global_map: Mapping | None) -> Mapping | None:
    """The model map for one of several upstreams: its own when it has one (its model names are its own),
    else MODEL_MAP."""
    return upstream_map if upstream_map else global_map
