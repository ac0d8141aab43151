"""Upstream profiles: data, `auto` selection by host, per-model quirks."""
import pytest

from app.translation.profiles import PROFILES, profile_for_url, select_profile
from config.settings import Settings, SettingsError


@pytest.mark.parametrize("url, name", [
    ("https://api.openai.com/v1", "openai"),
    ("https://openrouter.ai/api/v1", "openrouter"),
    ("https://api.deepseek.com", "deepseek"),
    ("https://api.deepseek.com/v1", "deepseek"),
    ("https://models.github.ai/inference", "github"),
    ("https://models.inference.ai.azure.com", "github"),
    ("http://localhost:11434/v1", "ollama"),
    ("http://127.0.0.1:8000/v1", "vllm"),
    ("http://localhost:8080/v1", "llamacpp"),
    ("http://127.0.0.1:41234/v1", "generic"),
    ("https://my-gateway.example.com/v1", "generic"),
    ("https://API.OpenAI.com./v1", "openai"),
    ("https://evil-openai.com/v1", "generic"),
    ("not a url", "generic"),
    ("http://[::1", "generic"),
])
def test_auto_picks_by_host(url, name):
    assert profile_for_url(url).name == name
    assert select_profile("auto", url).name == name
    assert select_profile(None, url).name == name


def test_named_profile_overrides_the_host():
    assert select_profile("deepseek", "http://127.0.0.1:1234/v1").name == "deepseek"
    with pytest.raises(ValueError, match="unknown upstream profile"):
        select_profile("bogus", "https://api.openai.com/v1")


def test_every_documented_profile_exists():
    assert set(PROFILES) == {"openai", "openrouter", "deepseek", "github", "vllm", "llamacpp", "ollama", "generic"}


def test_openrouter_keeps_cache_control_only_for_anthropic_and_google():
    p = PROFILES["openrouter"]
    assert p.keeps_cache_control("anthropic/claude-sonnet-4.5")
    assert p.keeps_cache_control("google/gemini-2.5-pro")
    assert not p.keeps_cache_control("openai/gpt-4.1")
    assert not PROFILES["openai"].keeps_cache_control("anthropic/claude-sonnet-4.5")


def test_token_field_per_model():
    assert PROFILES["openai"].token_field("gpt-4.1") == "max_completion_tokens"
    assert PROFILES["github"].token_field("openai/o3-mini") == "max_completion_tokens"
    assert PROFILES["github"].token_field("openai/gpt-4.1") == "max_tokens"
    assert PROFILES["deepseek"].token_field("deepseek-reasoner") == "max_tokens"


def test_deepseek_needs_reasoning_back():
    assert PROFILES["deepseek"].reasoning_round_trip
    assert not PROFILES["openai"].reasoning_round_trip


def test_settings_take_the_profile_case_insensitively():
    assert Settings.from_env({"UPSTREAM_PROFILE": "DeepSeek"}).upstream_profile == "deepseek"
    assert Settings.from_env({}).upstream_profile == "auto"
    with pytest.raises(SettingsError, match="UPSTREAM_PROFILE"):
        Settings.from_env({"UPSTREAM_PROFILE": "azure"})
    assert Settings.from_env({}).server_tools == "error"
    assert Settings.from_env({"SERVER_TOOLS": "DROP"}).server_tools == "drop"
    with pytest.raises(SettingsError, match="SERVER_TOOLS"):
        Settings.from_env({"SERVER_TOOLS": "ignore"})
