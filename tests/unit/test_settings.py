"""Configuration: defaults, validation errors that name the variable, .env loading."""
import os

import pytest

from app.settings import DEFAULT_MODEL, DEFAULT_UPSTREAM, Settings, SettingsError, load_env_files


def test_defaults_match_the_product():
    s = Settings.from_env({})
    assert s.proxy_mode == "translation"
    assert s.anthropic_proxy_base_url == DEFAULT_UPSTREAM == "https://models.github.ai/inference"
    assert s.reasoning_model == s.completion_model == DEFAULT_MODEL == "openai/gpt-4.1"
    assert (s.host, s.port) == ("0.0.0.0", 3000)
    assert s.slack_username == "Claude Code Proxy" and s.slack_icon_emoji == ":robot_face:"
    assert s.anthropic_base_url == "https://api.anthropic.com"
    assert s.oauth_token_url == "https://console.anthropic.com/v1/oauth/token"
    assert s.max_body_bytes == 32 * 1024 * 1024


def test_values_are_typed():
    s = Settings.from_env({
        "PROXY_MODE": "passthrough", "PORT": "8080", "DEBUG": "true", "SLACK_ENABLED": "false",
        "REASONING_MAX_TOKENS": "4096", "DOMAIN_CREDENTIAL_MAPPING": '{"a.example.com": "credentials/a.json"}',
        "MODEL_MAP": '{"claude-*haiku*": "openai/gpt-4.1-mini"}', "PROXY_API_KEYS": "k1, k2,,",
        "TELEMETRY_ENDPOINT": "http://127.0.0.1:9/events",
    })
    assert s.proxy_mode == "passthrough" and s.port == 8080 and s.debug is True and s.slack_enabled is False
    assert s.reasoning_max_tokens == 4096
    assert s.domain_credential_mapping == {"a.example.com": "credentials/a.json"}
    assert s.model_map == {"claude-*haiku*": "openai/gpt-4.1-mini"}
    assert s.proxy_api_keys == ("k1", "k2")
    assert s.log_level == "DEBUG"  # DEBUG=true implies debug logs unless LOG_LEVEL says otherwise


def test_empty_values_count_as_unset():
    s = Settings.from_env({"PORT": "", "PROXY_MODE": "  ", "CLAUDE_API_KEY": ""})
    assert s.port == 3000 and s.proxy_mode == "translation" and s.claude_api_key is None


@pytest.mark.parametrize("env, variable, fragment", [
    ({"PROXY_MODE": "mirror"}, "PROXY_MODE", "translation"),
    ({"PORT": "abc"}, "PORT", "port number"),
    ({"PORT": "70000"}, "PORT", "port number"),
    ({"DOMAIN_CREDENTIAL_MAPPING": "not json"}, "DOMAIN_CREDENTIAL_MAPPING", "JSON object"),
    ({"DOMAIN_CREDENTIAL_MAPPING": '["a"]'}, "DOMAIN_CREDENTIAL_MAPPING", "JSON object"),
    ({"DOMAIN_CREDENTIAL_MAPPING": '{"a.com": 3}'}, "DOMAIN_CREDENTIAL_MAPPING", "'a.com'"),
    ({"TELEMETRY_ENDPOINT": "metrics-server"}, "TELEMETRY_ENDPOINT", "URL"),
    ({"ANTHROPIC_PROXY_BASE_URL": "ftp://x"}, "ANTHROPIC_PROXY_BASE_URL", "URL"),
    ({"REASONING_MAX_TOKENS": "0"}, "REASONING_MAX_TOKENS", "positive"),
    ({"DEBUG": "sometimes"}, "DEBUG", "true or false"),
    ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL", "postgresql"),
])
def test_bad_values_name_the_variable(env, variable, fragment):
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    message = str(info.value)
    assert message.startswith(f"Configuration error: {variable}: ")
    assert fragment in message and "\n" not in message


def test_secrets_are_not_in_the_repr():
    s = Settings.from_env({"CLAUDE_API_KEY": "sk-ant-api03-secretvalue", "CLAUDE_CODE_PROXY_API_KEY": "ghp_secret",
                           "PROXY_API_KEYS": "proxykey", "DATABASE_URL": "postgresql://u:pw@h/db"})
    text = repr(s)
    for secret in ("secretvalue", "ghp_secret", "proxykey", "pw@h"):
        assert secret not in text


def test_env_file_loading_real_env_wins(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("PORT=4111\nCOMPLETION_MODEL=from-dotenv\n")
    monkeypatch.setenv("PORT", "4222")
    monkeypatch.delenv("COMPLETION_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    load_env_files(None)
    try:
        s = Settings.from_env()
        assert s.port == 4222 and s.completion_model == "from-dotenv"
    finally:
        os.environ.pop("COMPLETION_MODEL", None)


def test_named_env_file_must_exist(tmp_path):
    with pytest.raises(SettingsError) as info:
        load_env_files(str(tmp_path / "missing.env"))
    assert info.value.variable == "--env-file"


def test_model_map_values_may_name_their_upstream_api():
    s = Settings.from_env({"MODEL_MAP": '{"claude-*haiku*": "gpt-4.1-mini", '
                                        '"claude-opus-*": {"model": "gpt-5", "api": "responses"}, '
                                        '"claude-sonnet-*": {"model": "gpt-5-mini"}}',
                           "UPSTREAM_API": "chat"})
    assert s.model_map == {"claude-*haiku*": "gpt-4.1-mini", "claude-opus-*": "gpt-5", "claude-sonnet-*": "gpt-5-mini"}
    assert list(s.model_map) == ["claude-*haiku*", "claude-opus-*", "claude-sonnet-*"]  # order kept: first match wins
    assert s.model_apis == {"claude-opus-*": "responses"}
    assert s.upstream_api == "chat" and Settings.from_env({}).upstream_api == "chat"
    assert s.public_dict()["models"]["api"] == {
        "reasoning": "chat", "completion": "chat",
        "map": {"claude-*haiku*": "chat", "claude-opus-*": "responses", "claude-sonnet-*": "chat"}}


@pytest.mark.parametrize("env, fragment", [
    ({"UPSTREAM_API": "completions"}, "'chat' or 'responses'"),
    ({"MODEL_MAP": '{"x": {"model": "gpt-5", "api": "assistants"}}'}, "'chat' or 'responses'"),
    ({"MODEL_MAP": '{"x": {"api": "responses"}}'}, "'x'"),
    ({"MODEL_MAP": '{"x": {"model": "gpt-5", "effort": "high"}}'}, "unknown key 'effort'"),
    ({"MODEL_MAP": '{"x": 5}'}, "'x'"),
    ({"MODEL_MAP": '["x"]'}, "JSON object"),
])
def test_bad_upstream_api_settings_name_the_variable(env, fragment):
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert info.value.variable == next(iter(env)) and fragment in str(info.value)
