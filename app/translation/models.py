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


def map_model(model_map: Mapping[str, str] | None, model: object) -> str | None:
    """The first MODEL_MAP target whose glob matches `model` (in the map's order), else None."""
    if not model_map or not isinstance(model, str):
        return None
    return _lookup(tuple(model_map.items()), model)


def route(
    body: dict,
    *,
    reasoning_model: str,
    completion_model: str,
    reasoning_max_tokens: int | None,
    completion_max_tokens: int | None,
    model_map: Mapping[str, str] | None,
) -> Route:
    """Choose the upstream model (MODEL_MAP first, then thinking -> reasoning model) and cap max_tokens."""
    reasoning = wants_thinking(body)
    model = map_model(model_map, body.get("model"))
    if model is None:
        model = reasoning_model if reasoning else completion_model
    cap = reasoning_max_tokens if reasoning else completion_max_tokens
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


def model_map_for(upstream_map: Mapping | None, global_map: Mapping | None) -> Mapping | None:
    """The model map for one of several upstreams: its own when it has one (its model names are its own),
    else MODEL_MAP."""
    return upstream_map if upstream_map else global_map
