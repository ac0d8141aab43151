"""Upstream profiles: what each OpenAI-compatible upstream takes and sends back, as data (pure).

`UPSTREAM_PROFILE=auto` (the default) picks a profile from the base URL's host; any other value names
one. Every field below is documented, with its source, in docs/upstreams.md; the conversion
(`app/translation/request.py`, `response.py`, `stream.py`) reads these fields and nothing else, so a new
upstream is a new entry here, not new code.
"""
from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

TokenField = Literal["max_tokens", "max_completion_tokens"]
StructuredOutput = Literal["json_schema", "json_object"]
# When `reasoning_effort` is sent: never; always; only to `reasoning_models`; only when the request asks
# for thinking (servers that refuse it for models that cannot think).
EffortPolicy = Literal["never", "always", "reasoning_models", "thinking"]


@dataclass(frozen=True)
class Profile:
    name: str
    # Which field carries the output cap. OpenAI's reasoning models refuse `max_tokens`.
    max_tokens_field: TokenField = "max_tokens"
    # Models (globs, case-insensitive) that take `max_completion_tokens` even where the profile default
    # is `max_tokens`, and refuse `temperature`/`top_p` other than the default (OpenAI reasoning models).
    reasoning_models: tuple[str, ...] = ()
    stream_usage: bool = True  # takes stream_options.include_usage (usage in the last chunk)
    parallel_tool_calls: bool = True  # takes the `parallel_tool_calls` flag
    # Models (globs) for which `cache_control` is kept on content parts (the upstream honours it there).
    cache_control_models: tuple[str, ...] = ()
    prompt_cache_key: bool = False  # takes `prompt_cache_key` (route one conversation to one cache)
    user: bool = True  # takes the `user` field
    images: bool = True  # takes image_url content parts
    # Which Anthropic PDF `document` sources become `file` content parts: "base64" (file_data as a data URL),
    # "url" (file_data as the URL), "file" (file_id). Any other source is refused with a 400.
    pdf_sources: tuple[str, ...] = ()
    reasoning_effort: EffortPolicy = "never"
    # The field reasoning comes back in (message / delta); both names are read anyway.
    reasoning_field: str | None = None
    # The assistant's reasoning must go back as `reasoning_content` on assistant messages with tool calls
    # (DeepSeek thinking mode refuses the next turn otherwise).
    reasoning_round_trip: bool = False
    # Cache usage dialect(s) the upstream reports, for the docs and the fake upstream:
    # "openai" prompt_tokens_details.cached_tokens, "deepseek" prompt_cache_hit/miss_tokens,
    # "openrouter" prompt_tokens_details.cached_tokens + cache_write_tokens.
    cache_usage: tuple[str, ...] = ()
    structured_output: StructuredOutput = "json_schema"
    web_search_plugin: bool = False  # server-side web search via `plugins: [{"id": "web"}]`
    strict: bool = False  # refuses unknown request fields (400), so only documented ones are sent

    def keeps_cache_control(self, model: str) -> bool:
        return _matches(self.cache_control_models, model)

    def is_reasoning_model(self, model: str) -> bool:
        return _matches(self.reasoning_models, model)

    def sends_effort(self, model: str, thinking: bool) -> bool:
        policy = self.reasoning_effort
        return (policy == "always" or (policy == "reasoning_models" and self.is_reasoning_model(model))
                or (policy == "thinking" and thinking))

    def token_field(self, model: str) -> TokenField:
        return "max_completion_tokens" if self.is_reasoning_model(model) else self.max_tokens_field


def _matches(patterns: tuple[str, ...], model: str) -> bool:
    return _name_matches(patterns, model.lower() if isinstance(model, str) else "")


@functools.lru_cache(maxsize=1024)  # asked several times per request, for the few models an upstream serves
def _name_matches(patterns: tuple[str, ...], name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


_OPENAI_REASONING = ("o1*", "o3*", "o4*", "gpt-5*", "openai/o1*", "openai/o3*", "openai/o4*", "openai/gpt-5*")

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile(
        name="openai",
        max_tokens_field="max_completion_tokens",  # max_tokens is deprecated and refused by reasoning models
        reasoning_models=_OPENAI_REASONING,
        prompt_cache_key=True,
        pdf_sources=("base64", "file"),
        reasoning_effort="reasoning_models",
        cache_usage=("openai",),
        strict=True,
    ),
    Profile(
        name="openrouter",
        reasoning_models=_OPENAI_REASONING,
        cache_control_models=("anthropic/*", "google/*"),
        prompt_cache_key=True,
        pdf_sources=("base64", "url"),
        reasoning_effort="always",
        reasoning_field="reasoning",
        cache_usage=("openrouter",),
        web_search_plugin=True,
    ),
    Profile(
        name="deepseek",
        parallel_tool_calls=False,
        images=False,
        reasoning_effort="always",
        reasoning_field="reasoning_content",
        reasoning_round_trip=True,
        cache_usage=("deepseek",),
        structured_output="json_object",
        user=False,
    ),
    Profile(
        name="github",
        reasoning_models=_OPENAI_REASONING,
        parallel_tool_calls=False,  # not among the documented body parameters
        cache_usage=("openai",),
        user=False,
        strict=True,
    ),
    Profile(
        name="vllm",
        reasoning_field="reasoning_content",
        cache_usage=("openai",),
    ),
    Profile(
        name="llamacpp",
        reasoning_field="reasoning_content",
        cache_usage=("openai",),
    ),
    Profile(
        name="ollama",
        parallel_tool_calls=False,
        reasoning_field="reasoning",
        reasoning_effort="thinking",
    ),
    Profile(name="generic"),
)}

# Exact hosts, then host suffixes; anything else is "generic".
_HOSTS = {
    "api.openai.com": "openai",
    "openrouter.ai": "openrouter",
    "api.deepseek.com": "deepseek",
    "models.github.ai": "github",
    "models.inference.ai.azure.com": "github",
}
# Default ports of the self-hosted servers, used only for local hosts (documented defaults).
_LOCAL_PORTS = {11434: "ollama", 8000: "vllm", 8080: "llamacpp"}
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "host.docker.internal"})

NAMES = ("auto", *PROFILES)


def profile_for_url(base_url: str) -> Profile:
    """The `auto` choice for a base URL."""
    try:
        parts = urlsplit(base_url)
        host = (parts.hostname or "").lower().rstrip(".")
        port = parts.port
    except ValueError:
        return PROFILES["generic"]
    if host in _HOSTS:
        return PROFILES[_HOSTS[host]]
    for known, name in _HOSTS.items():
        if host.endswith("." + known):
            return PROFILES[name]
    if host in _LOCAL_HOSTS and port in _LOCAL_PORTS:
        return PROFILES[_LOCAL_PORTS[port]]
    return PROFILES["generic"]


def select_profile(name: str | None, base_url: str) -> Profile:
    """The profile `UPSTREAM_PROFILE` names; `auto` (or empty) chooses by the base URL's host."""
    key = (name or "auto").strip().lower()
    if key == "auto":
        return profile_for_url(base_url)
    try:
        return PROFILES[key]
    except KeyError:
        raise ValueError(f"unknown upstream profile {name!r}; one of: {', '.join(NAMES)}") from None
