"""Configuration: every variable read once, validated by one marshmallow schema into a frozen `Settings`.

A bad value stops start-up with one line naming the variable (see `SettingsError`); the CLI and
the gunicorn config turn that into exit status 2.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields as dc_fields
from typing import Any, Mapping

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

DEFAULT_UPSTREAM = "https://models.github.ai/inference"
DEFAULT_MODEL = "openai/gpt-4.1"
UPSTREAM_APIS = ("chat", "responses")
UPSTREAM_PROFILES = ("auto", "openai", "openrouter", "deepseek", "github", "vllm", "llamacpp", "ollama", "generic")


class SettingsError(ValueError):
    """One bad variable: `str(err)` is the line printed at start-up."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"Configuration error: {variable}: {problem}")
        self.variable = variable
        self.problem = problem


class _Bool(fields.Field):
    _TRUE = {"1", "true", "yes", "on"}
    _FALSE = {"0", "false", "no", "off", ""}

    def _deserialize(self, value: Any, attr, data, **kwargs) -> bool:
        text = str(value).strip().lower()
        if text in self._TRUE:
            return True
        if text in self._FALSE:
            return False
        raise ValidationError("must be true or false")


def _json_object(value: Any) -> dict:
    """A variable's JSON object (a mapping passes as it is; blank is {}), else a ValidationError."""
    if isinstance(value, Mapping):
        obj = value
    else:
        text = str(value).strip()
        if not text:
            return {}
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ValidationError(f"must be a JSON object ({exc.msg} at position {exc.pos})")
    if not isinstance(obj, dict):
        raise ValidationError("must be a JSON object of strings")
    return obj


class _JsonObject(fields.Field):
    """A JSON object of string -> string (DOMAIN_CREDENTIAL_MAPPING, MODEL_MAP)."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> dict:
        obj = _json_object(value)
        bad = [k for k, v in obj.items() if not isinstance(v, str) or not v]
        if bad:
            raise ValidationError(f"must be a JSON object of strings; the value for {bad[0]!r} is not a non-empty string")
        return dict(obj)


class _ModelMap(fields.Field):
    """MODEL_MAP: glob -> upstream model, or glob -> {"model": ..., "api": "chat"|"responses"}.

    Deserialises to (pattern -> model, pattern -> api for the entries that name one), in the map's order.
    """

    def _deserialize(self, value: Any, attr, data, **kwargs) -> tuple[dict, dict]:
        try:
            obj = json.loads(str(value).strip() or "{}") if not isinstance(value, Mapping) else value
        except ValueError as exc:
            raise ValidationError(f"must be a JSON object ({exc.msg} at position {exc.pos})")
        if not isinstance(obj, dict):
            raise ValidationError("must be a JSON object")
        models: dict[str, str] = {}
        apis: dict[str, str] = {}
        for pattern, target in obj.items():
            if isinstance(target, dict):
                unknown = set(target) - {"model", "api"}
                if unknown:
                    raise ValidationError(f"the entry for {pattern!r} has an unknown key {sorted(unknown)[0]!r}")
                api = target.get("api")
                if api is not None and api not in UPSTREAM_APIS:
                    raise ValidationError(f"the api for {pattern!r} must be 'chat' or 'responses'")
                if api is not None:
                    apis[pattern] = api
                target = target.get("model")
            if not isinstance(target, str) or not target:
                raise ValidationError(f"the value for {pattern!r} must be a model name or "
                                      '{"model": ..., "api": "chat"|"responses"}')
            models[pattern] = target
        return models, apis


class _CredentialMapping(_JsonObject):
    """DOMAIN_CREDENTIAL_MAPPING: host -> a credential file, or a list of them in order of preference (a pool)."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> dict:
        obj = _json_object(value)
        out = {}
        for k, v in obj.items():
            if isinstance(v, list) and v and all(isinstance(p, str) and p for p in v):
                out[k] = list(v)
            elif isinstance(v, str) and v:
                out[k] = v
            else:
                raise ValidationError(f"must be a JSON object of strings; the value for {k!r} is not a non-empty "
                                      "string or list of strings")
        return out


class _Upstreams(fields.Field):
    """UPSTREAMS: a JSON list of {"name", "base_url", "api_key" | "api_key_env", "model_map", "api", "profile"}."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> tuple:
        text = str(value).strip()
        try:
            items = json.loads(text) if text else []
        except ValueError as exc:
            raise ValidationError(f"must be a JSON list ({exc.msg} at position {exc.pos})")
        if not isinstance(items, list):
            raise ValidationError("must be a JSON list of upstream objects")
        out, names = [], set()
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValidationError(f"entry {i} is not an object")
            unknown = set(item) - _UPSTREAM_KEYS
            if unknown:
                raise ValidationError(f"entry {i} has an unknown key {sorted(unknown)[0]!r}")
            url = item.get("base_url")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValidationError(f"entry {i}: base_url must be an http(s) URL")
            name = item.get("name") or f"upstream-{i + 1}"
            if not isinstance(name, str) or name in names:
                raise ValidationError(f"entry {i}: name must be a unique string")
            names.add(name)
            key = item.get("api_key")
            env_name = item.get("api_key_env")
            if key is not None and not isinstance(key, str):
                raise ValidationError(f"entry {i}: api_key must be a string")
            if env_name is not None and (not isinstance(env_name, str) or not env_name):
                raise ValidationError(f"entry {i}: api_key_env must be a variable name")
            api = item.get("api")
            if api is not None and api not in UPSTREAM_APIS:
                raise ValidationError(f"entry {i}: api must be 'chat' or 'responses'")
            profile = item.get("profile")
            if profile is not None and (not isinstance(profile, str) or profile.lower() not in UPSTREAM_PROFILES):
                raise ValidationError(f"entry {i}: profile must be one of {', '.join(UPSTREAM_PROFILES)}")
            model_map = item.get("model_map")
            if model_map is not None and not isinstance(model_map, dict):
                raise ValidationError(f"entry {i}: model_map must be a JSON object")
            models, apis = {}, {}
            if model_map:
                # the same rules as MODEL_MAP, whatever values those allow
                try:
                    models, apis = _ModelMap().deserialize(model_map)
                except ValidationError as exc:
                    raise ValidationError(f"entry {i}: model_map {exc.messages[0] if exc.messages else 'is invalid'}")
            out.append({"name": name, "base_url": url.rstrip("/"), "api_key": key or None, "api_key_env": env_name,
                        "model_map": models, "model_apis": apis, "api": api,
                        "profile": profile.lower() if profile else None})
        return tuple(out)


_UPSTREAM_KEYS = frozenset({"name", "base_url", "api_key", "api_key_env", "model_map", "api", "profile"})


class _KeyList(fields.Field):
    def _deserialize(self, value: Any, attr, data, **kwargs) -> tuple:
        return tuple(k.strip() for k in str(value).split(",") if k.strip())


def _url(**kw) -> fields.Url:
    return fields.Url(require_tld=False, schemes={"http", "https"}, error_messages={"invalid": "must be an http(s) URL"}, **kw)


def _positive_int(**kw) -> fields.Integer:
    return fields.Integer(strict=False, validate=validate.Range(min=1, error="must be a positive integer"),
                          error_messages={"invalid": "must be a whole number"}, **kw)


def _non_negative_float(**kw) -> fields.Float:
    return fields.Float(validate=validate.Range(min=0, error="must be zero or more"),
                        error_messages={"invalid": "must be a number"}, **kw)


# --- cost and dashboard: prices per model, the dashboard's access key
class _ModelPrices(fields.Field):
    """MODEL_PRICES: inline JSON or a JSON file of model glob -> dollars per million tokens."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> dict:
        from .pricing import PriceTableError, parse_model_prices

        try:
            return parse_model_prices(value)
        except PriceTableError as exc:
            raise ValidationError(str(exc)) from None


class SettingsSchema(Schema):
    """Environment variable names (data_key) -> Settings attributes."""

    class Meta:
        unknown = EXCLUDE

    proxy_mode = fields.String(data_key="PROXY_MODE", validate=validate.OneOf(
        ["translation", "passthrough"], error="must be 'translation' or 'passthrough'"))
    host = fields.String(data_key="HOST")
    port = fields.Integer(data_key="PORT", validate=validate.Range(min=1, max=65535, error="must be a port number (1-65535)"),
                          error_messages={"invalid": "must be a port number (1-65535)"})
    workers = _positive_int(data_key="WEB_CONCURRENCY")
    worker_connections = _positive_int(data_key="WORKER_CONNECTIONS")
    shutdown_timeout = _non_negative_float(data_key="GRACEFUL_TIMEOUT")
    claude_code_proxy_api_key = fields.String(data_key="CLAUDE_CODE_PROXY_API_KEY")
    anthropic_proxy_base_url = _url(data_key="ANTHROPIC_PROXY_BASE_URL")
    reasoning_model = fields.String(data_key="REASONING_MODEL", validate=validate.Length(min=1))
    completion_model = fields.String(data_key="COMPLETION_MODEL", validate=validate.Length(min=1))
    reasoning_max_tokens = _positive_int(data_key="REASONING_MAX_TOKENS")
    completion_max_tokens = _positive_int(data_key="COMPLETION_MAX_TOKENS")
    model_map = _ModelMap(data_key="MODEL_MAP")
    claude_api_key = fields.String(data_key="CLAUDE_API_KEY")
    domain_credential_mapping = _CredentialMapping(data_key="DOMAIN_CREDENTIAL_MAPPING")
    strict_domain_mapping = _Bool(data_key="STRICT_DOMAIN_MAPPING")
    anthropic_base_url = _url(data_key="CLAUDE_API_BASE_URL")
    oauth_token_url = _url(data_key="OAUTH_TOKEN_URL")
    oauth_client_id = fields.String(data_key="OAUTH_CLIENT_ID", validate=validate.Length(min=1))
    telemetry_endpoint = _url(data_key="TELEMETRY_ENDPOINT")
    debug = _Bool(data_key="DEBUG")
    log_level = fields.String(data_key="LOG_LEVEL", validate=validate.OneOf(
        ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], error="must be DEBUG, INFO, WARNING, ERROR or CRITICAL"))
    slack_webhook_url = _url(data_key="SLACK_WEBHOOK_URL")
    slack_channel = fields.String(data_key="SLACK_CHANNEL")
    slack_username = fields.String(data_key="SLACK_USERNAME")
    slack_icon_emoji = fields.String(data_key="SLACK_ICON_EMOJI")
    slack_enabled = _Bool(data_key="SLACK_ENABLED")
    database_url = fields.String(data_key="DATABASE_URL", validate=validate.Regexp(
        r"^(postgres|postgresql)://", error="must be a postgresql:// URL"))
    usage_db_path = fields.String(data_key="USAGE_DB_PATH", validate=validate.Length(min=1))
    usage_retention_rows = _positive_int(data_key="USAGE_RETENTION_ROWS")
    report_interval = _non_negative_float(data_key="TOKEN_REPORT_INTERVAL")
    proxy_api_keys = _KeyList(data_key="PROXY_API_KEYS")
    connect_timeout = _non_negative_float(data_key="UPSTREAM_CONNECT_TIMEOUT")
    read_timeout = _non_negative_float(data_key="UPSTREAM_READ_TIMEOUT")
    max_retries = fields.Integer(data_key="UPSTREAM_MAX_RETRIES", validate=validate.Range(min=0, max=10, error="must be 0-10"),
                                 error_messages={"invalid": "must be a whole number"})
    retry_max_wait = _non_negative_float(data_key="UPSTREAM_RETRY_MAX_WAIT")
    ping_interval = _non_negative_float(data_key="STREAM_PING_INTERVAL")
    max_body_mb = fields.Float(data_key="MAX_REQUEST_BODY_MB", validate=validate.Range(min=0.001, error="must be a positive number"),
                               error_messages={"invalid": "must be a number"})
    client_setup_dir = fields.String(data_key="CLIENT_SETUP_DIR", validate=validate.Length(min=1))
    # Bounded work and storage: one SSE event's size, the unmapped hosts accounting tracks
    max_sse_event_mb = fields.Float(data_key="MAX_SSE_EVENT_MB", validate=validate.Range(
        min=0.001, error="must be a positive number"), error_messages={"invalid": "must be a number"})
    usage_max_unmapped_hosts = fields.Integer(data_key="USAGE_MAX_UNMAPPED_HOSTS", validate=validate.Range(
        min=0, error="must be zero or more"), error_messages={"invalid": "must be a whole number"})
    # cost and dashboard
    model_prices = _ModelPrices(data_key="MODEL_PRICES")
    dashboard_api_key = fields.String(data_key="DASHBOARD_API_KEY", validate=validate.Length(
        min=16, error="must be at least 16 characters"))
    # Client keys with limits: shared rate-limit state (Redis across hosts, a local file on one host)
    redis_url = fields.String(data_key="REDIS_URL", validate=validate.Regexp(
        r"^(redis|rediss|unix)://", error="must be a redis://, rediss:// or unix:// URL"))
    redis_key_prefix = fields.String(data_key="REDIS_KEY_PREFIX", validate=validate.Length(min=1))
    rate_limit_fail = fields.String(data_key="RATE_LIMIT_FAIL", validate=validate.OneOf(
        ["open", "closed"], error="must be 'open' or 'closed'"))
    rate_limit_state_path = fields.String(data_key="RATE_LIMIT_STATE_PATH", validate=validate.Length(min=1))
    keys_refresh_interval = fields.Float(data_key="KEYS_REFRESH_INTERVAL", validate=validate.Range(
        min=0.1, max=5, error="must be between 0.1 and 5 seconds"), error_messages={"invalid": "must be a number"})
    # The OpenAI upstream API in translation mode (Chat Completions or Responses)
    upstream_api = fields.String(data_key="UPSTREAM_API", validate=validate.OneOf(
        UPSTREAM_APIS, error="must be 'chat' or 'responses'"))
    # Translation fidelity: upstream profile, server-tool policy, the key that signs proxy-made thinking.
    upstream_profile = fields.String(data_key="UPSTREAM_PROFILE", validate=validate.OneOf(
        UPSTREAM_PROFILES, error="must be " + ", ".join(UPSTREAM_PROFILES[:-1]) + " or " + UPSTREAM_PROFILES[-1]))
    server_tools = fields.String(data_key="SERVER_TOOLS", validate=validate.OneOf(
        ["error", "drop"], error="must be 'error' or 'drop'"))
    thinking_signing_key = fields.String(data_key="THINKING_SIGNING_KEY", validate=validate.Length(
        min=16, error="must be at least 16 characters"))
    # Prometheus metrics (/metrics) and the usage journal that survives a killed worker
    metrics_enabled = _Bool(data_key="METRICS_ENABLED")
    metrics_token = fields.String(data_key="METRICS_TOKEN")
    metrics_max_domains = _positive_int(data_key="METRICS_MAX_DOMAINS")
    metrics_max_models = _positive_int(data_key="METRICS_MAX_MODELS")
    usage_journal = _Bool(data_key="USAGE_JOURNAL")
    usage_journal_dir = fields.String(data_key="USAGE_JOURNAL_DIR", validate=validate.Length(min=1))
    # Credential pools (passthrough) and fallback upstreams (translation)
    pool_switch_at = fields.Float(data_key="POOL_SWITCH_AT_UTILIZATION", validate=validate.Range(
        min=0, max=1, error="must be a number from 0 to 1"), error_messages={"invalid": "must be a number"})
    upstreams = _Upstreams(data_key="UPSTREAMS")


@dataclass(frozen=True)
class Settings:
    proxy_mode: str = "translation"
    host: str = "0.0.0.0"
    port: int = 3000
    workers: int = 1
    worker_connections: int = 2000
    shutdown_timeout: float = 30.0
    claude_code_proxy_api_key: str | None = field(default=None, repr=False)
    anthropic_proxy_base_url: str = DEFAULT_UPSTREAM
    reasoning_model: str = DEFAULT_MODEL
    completion_model: str = DEFAULT_MODEL
    reasoning_max_tokens: int | None = None
    completion_max_tokens: int | None = None
    model_map: dict = field(default_factory=dict)
    claude_api_key: str | None = field(default=None, repr=False)
    domain_credential_mapping: dict = field(default_factory=dict)
    strict_domain_mapping: bool = False
    anthropic_base_url: str = "https://api.anthropic.com"
    oauth_token_url: str = "https://console.anthropic.com/v1/oauth/token"
    oauth_client_id: str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
    telemetry_endpoint: str | None = None
    debug: bool = False
    log_level: str = "INFO"
    slack_webhook_url: str | None = field(default=None, repr=False)
    slack_channel: str | None = None
    slack_username: str = "Claude Code Proxy"
    slack_icon_emoji: str = ":robot_face:"
    slack_enabled: bool = True
    database_url: str | None = field(default=None, repr=False)
    usage_db_path: str = "data/usage.sqlite3"
    usage_retention_rows: int = 100_000
    report_interval: float = 10.0
    proxy_api_keys: tuple = field(default=(), repr=False)
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    max_retries: int = 2
    retry_max_wait: float = 20.0
    ping_interval: float = 15.0
    max_body_mb: float = 32.0
    client_setup_dir: str | None = None  # unset: the client-setup/ folder shipped with the proxy
    # Bounded work and storage: one SSE event's size, the unmapped hosts accounting tracks
    max_sse_event_mb: float = 16.0
    usage_max_unmapped_hosts: int = 100
    # cost and dashboard
    model_prices: dict = field(default_factory=dict)
    dashboard_api_key: str | None = field(default=None, repr=False)
    # Client keys with limits
    redis_url: str | None = field(default=None, repr=False)
    redis_key_prefix: str = "nexus:"
    rate_limit_fail: str = "open"
    rate_limit_state_path: str | None = None  # default: limits.sqlite3 beside USAGE_DB_PATH
    keys_refresh_interval: float = 2.0
    # The OpenAI upstream API in translation mode; MODEL_MAP entries may name their own
    upstream_api: str = "chat"
    model_apis: dict = field(default_factory=dict)
    # Translation fidelity: upstream profile, server-tool policy, the key that signs proxy-made thinking.
    upstream_profile: str = "auto"
    server_tools: str = "error"
    thinking_signing_key: str | None = field(default=None, repr=False)
    # Prometheus metrics (/metrics) and the usage journal that survives a killed worker
    metrics_enabled: bool = True
    metrics_token: str | None = field(default=None, repr=False)
    metrics_max_domains: int = 200
    metrics_max_models: int = 200
    usage_journal: bool = True
    usage_journal_dir: str | None = None  # default: usage-journal/ next to USAGE_DB_PATH
    # Credential pools (passthrough) and fallback upstreams (translation)
    pool_switch_at: float | None = None
    upstreams: tuple = field(default=(), repr=False)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_sse_event_bytes(self) -> int:
        return int(self.max_sse_event_mb * 1024 * 1024)

    @property
    def credential_files(self) -> list[tuple[str, str]]:
        """(domain, file) for every mapped credential file, a pool's in its order."""
        return [(domain, path) for domain, entry in self.domain_credential_mapping.items()
                for path in (entry if isinstance(entry, list) else (entry,))]

    @property
    def translation(self) -> bool:
        return self.proxy_mode == "translation"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Validate a mapping of environment variables (default `os.environ`); empty values count as unset."""
        environ = os.environ if environ is None else environ
        schema = SettingsSchema()
        raw = {}
        for f in schema.fields.values():
            value = environ.get(f.data_key)
            if value is not None and value.strip() != "":
                raw[f.data_key] = value.strip()
        if "LOG_LEVEL" in raw:
            raw["LOG_LEVEL"] = raw["LOG_LEVEL"].upper()
        for name in ("UPSTREAM_PROFILE", "SERVER_TOOLS"):
            if name in raw:
                raw[name] = raw[name].lower()
        try:
            loaded = schema.load(raw)
        except ValidationError as exc:
            variable, problems = sorted(exc.messages.items())[0]
            problem = problems[0] if isinstance(problems, list) else str(problems)
            raise SettingsError(variable, problem) from None
        if "model_map" in loaded:
            loaded["model_map"], loaded["model_apis"] = loaded["model_map"]
        if loaded.get("upstreams"):
            loaded["upstreams"] = tuple(
                dict(u, api_key=(environ.get(u["api_key_env"]) or "").strip() or u["api_key"]) if u["api_key_env"] else u
                for u in loaded["upstreams"])
        if loaded.get("debug") and "log_level" not in loaded:
            loaded["log_level"] = "DEBUG"
        return cls(**loaded)

    def public_dict(self) -> dict:
        """Non-secret configuration for `GET /` (secrets are reported as set/unset only)."""
        return {
            "mode": self.proxy_mode,
            "upstream": self.anthropic_proxy_base_url if self.translation else self.anthropic_base_url,
            "models": {"reasoning": self.reasoning_model, "completion": self.completion_model,
                       "map": dict(self.model_map),
                       # which upstream API each of those models is called through
                       "api": {"reasoning": self.upstream_api, "completion": self.upstream_api,
                               "map": {p: self.model_apis.get(p, self.upstream_api) for p in self.model_map}}}
            if self.translation else None,
            "maxTokens": {"reasoning": self.reasoning_max_tokens, "completion": self.completion_max_tokens}
            if self.translation else None,
        }


SETTINGS_FIELDS = {f.name for f in dc_fields(Settings)}


def load_env_files(env_file: str | None = None, cwd: str | None = None) -> None:
    """Load `--env-file FILE`, else `.env` in the working directory; real environment variables win."""
    from dotenv import load_dotenv

    if env_file:
        if not os.path.isfile(env_file):
            raise SettingsError("--env-file", f"file not found: {env_file}")
        load_dotenv(env_file, override=False)
        return
    path = os.path.join(cwd or os.getcwd(), ".env")
    if os.path.isfile(path):
        load_dotenv(path, override=False)
