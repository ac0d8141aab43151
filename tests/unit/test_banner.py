"""The start-up banner tells a user what they started, and never shows a secret."""
import json

from app.banner import banner_lines, is_loopback, listen_url
from app.settings import Settings

UPSTREAM_KEY = "github_pat_11ABCDEFG0123456789abcdefghijklmnopqrstuvwxyz"


def _text(**env) -> str:
    return "\n".join(banner_lines(Settings.from_env({k: str(v) for k, v in env.items()})))


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("WARNING")]


def test_defaults_name_mode_upstream_key_access_storage_and_the_claude_code_line():
    text = _text(PORT=3000, USAGE_DB_PATH="/srv/nexus/usage.sqlite3")
    assert "listening on http://localhost:3000" in text
    assert "mode:           translation, upstream https://models.github.ai/inference" in text
    assert "upstream key:   not set" in text
    assert "access control: off" in text
    assert "usage stored:   SQLite /srv/nexus/usage.sqlite3" in text
    assert "ANTHROPIC_BASE_URL=http://localhost:3000 ANTHROPIC_AUTH_TOKEN=<your upstream key> claude" in text
    assert _warnings(text) == []  # no credential of the proxy's own to spend


def test_a_shared_key_on_a_public_address_without_client_keys_warns_once_and_says_how_to_fix_it():
    text = _text(HOST="0.0.0.0", PORT=8080, CLAUDE_CODE_PROXY_API_KEY=UPSTREAM_KEY)
    warnings = _warnings(text)
    assert len(warnings) == 1
    assert "port 8080" in warnings[0] and "PROXY_API_KEYS" in warnings[0]
    assert "upstream key:   set (CLAUDE_CODE_PROXY_API_KEY)" in text
    assert UPSTREAM_KEY not in text and UPSTREAM_KEY[-8:] not in text
    assert "ANTHROPIC_AUTH_TOKEN=unused" in text


def test_no_warning_on_loopback_or_with_client_keys():
    assert _warnings(_text(HOST="127.0.0.1", CLAUDE_CODE_PROXY_API_KEY=UPSTREAM_KEY)) == []
    assert _warnings(_text(HOST="::1", CLAUDE_CODE_PROXY_API_KEY=UPSTREAM_KEY)) == []
    text = _text(HOST="0.0.0.0", CLAUDE_CODE_PROXY_API_KEY=UPSTREAM_KEY, PROXY_API_KEYS="client-key-one-abcdef,k2")
    assert _warnings(text) == []
    assert "access control: on (2 key(s) in PROXY_API_KEYS)" in text
    assert "client-key-one-abcdef" not in text


def test_domain_mapping_counts_as_a_credential_and_client_api_key_files_as_access_control(tmp_path):
    open_file = tmp_path / "team-a.json"
    open_file.write_text(json.dumps({"type": "api_key", "api_key": "sk-ant-api03-" + "x" * 90}))
    mapping = json.dumps({"team-a.example.com": str(open_file)})
    text = _text(PROXY_MODE="passthrough", DOMAIN_CREDENTIAL_MAPPING=mapping, HOST="10.0.0.5")
    assert len(_warnings(text)) == 1
    assert "upstream key:   set (DOMAIN_CREDENTIAL_MAPPING)" in text
    assert "mode:           passthrough, upstream https://api.anthropic.com" in text

    guarded = tmp_path / "team-b.json"
    guarded.write_text(json.dumps({"type": "api_key", "api_key": "sk-ant-api03-" + "y" * 90,
                                   "client_api_key": "team-b-proxy-key"}))
    text = _text(PROXY_MODE="passthrough", HOST="10.0.0.5",
                 DOMAIN_CREDENTIAL_MAPPING=json.dumps({"team-b.example.com": str(guarded)}))
    assert _warnings(text) == []
    assert "access control: on for the 1 credential file(s) with a client_api_key" in text
    assert "team-b-proxy-key" not in text and "yyyy" not in text


def test_credentials_in_urls_are_masked():
    text = _text(ANTHROPIC_PROXY_BASE_URL="https://user:s3cr3t-password@llm.internal:8443/v1?api_key=qwerty123456789",
                 DATABASE_URL="postgresql://nexus:db-pass-word@db.internal:5432/nexus")
    for secret in ("s3cr3t-password", "qwerty123456789", "db-pass-word"):
        assert secret not in text
    assert "llm.internal:8443/v1" in text
    assert "usage stored:   PostgreSQL postgresql://****@db.internal:5432/nexus" in text


def test_listen_url_and_loopback():
    assert listen_url("0.0.0.0", 3000) == "http://localhost:3000"
    assert listen_url("::", 3000) == "http://localhost:3000"
    assert listen_url("::1", 3000) == "http://[::1]:3000"
    assert listen_url("10.1.2.3", 80) == "http://10.1.2.3:80"
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("proxy.example.com")
