"""The masking rules: what an operator may see of a secret, and that usage data stays readable."""
import json

import pytest

from app.masking import (
    clear_registered_secrets,
    is_masked,
    mask_headers,
    mask_json,
    mask_key_tail,
    mask_secret,
    mask_text,
    register_secret,
)

API_KEY = "sk-ant-api03-" + "Zq8xR2vL9mN4pK7wT1yB6cH3jF5dG0sA" * 3 + "-QwErTy12AA"
OAUTH = "sk-ant-oat01-" + "Pp9Oo8Ii7Uu6Yy5Tt4Rr3Ee2Ww1Qq0" * 3 + "ZZ"
REFRESH = "sk-ant-ort01-" + "Mm1Nn2Bb3Vv4Cc5Xx6Zz7Ll8Kk9Jj0" * 3 + "YY"
GH = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
GH_PAT = "github_pat_11ABCDEFG0" + "x" * 60
OPENROUTER = "sk-or-v1-" + "0123456789abcdef" * 4
OPENAI = "sk-proj-" + "AbCdEfGhIjKlMnOpQrStUvWxYz012345"


@pytest.fixture(autouse=True)
def _fresh_registry():
    clear_registered_secrets()
    yield
    clear_registered_secrets()


def _hidden(secret: str, shown: str) -> None:
    """Nothing of the secret beyond its prefix and a short tail is visible."""
    assert secret not in shown
    # No run of 11+ consecutive secret characters survives (prefixes are at most 13 chars and not secret).
    body = secret[13:]
    for i in range(len(body) - 10):
        assert body[i:i + 11] not in shown, shown


# ---------------------------------------------------------------- mask_secret / mask_key_tail

@pytest.mark.parametrize("value, expected", [
    (API_KEY, "sk-ant-api03-...12AA"),
    (OAUTH, "sk-ant-oat01-...q0ZZ"),
    (REFRESH, "sk-ant-ort01-...j0YY"),
    (OPENROUTER, "sk-or-v1-...cdef"),
    (GH, "ghp_...q7R8"),
    ("sk-ant-api03-team1-key", "sk-ant-api03-****"),  # too short to show a tail
    ("sk-ant-example-not-a-real-key", "sk-ant-...-key"),  # unknown kind: only the generic prefix
    ("sk-ant-example-key", "sk-ant-****"),
    ("short", "****"),
    ("elevenchars", "****"),
    ("Bearer " + OAUTH, "Bearer ****"),
    ("bearer abc", "Bearer ****"),
    ("a-plain-long-opaque-token-value-1234", "...1234"),
    ("", ""),
    (None, ""),
])
def test_mask_secret(value, expected):
    assert mask_secret(value) == expected


def test_mask_secret_reveals_at_most_four_trailing_characters():
    for secret in (API_KEY, OAUTH, REFRESH, GH, GH_PAT, OPENROUTER, OPENAI, "x" * 200):
        shown = mask_secret(secret)
        _hidden(secret, shown)
        tail = shown.split("...")[-1] if "..." in shown else ""
        assert len(tail) <= 4


def test_mask_key_tail_matches_product_last10_for_long_keys():
    assert mask_key_tail(API_KEY) == "..." + API_KEY[-10:]
    # Shorter secrets reveal proportionally less: len // 5.
    assert mask_key_tail("abcdefghijklmnopqrst") == "...qrst"
    assert mask_key_tail("abcdefghijkl") == "...kl"
    assert mask_key_tail("abcdefghijk") == "****"
    assert mask_key_tail(None) == "****"
    assert mask_key_tail("Bearer " + API_KEY) == "..." + API_KEY[-10:]


@pytest.mark.parametrize("secret", [API_KEY, OAUTH, GH, "sk-ant-api03-team1-key", "a-plain-long-opaque-token-value-1234"])
def test_masking_is_idempotent(secret):
    once = mask_secret(secret)
    assert is_masked(once)
    assert mask_secret(once) == once
    assert mask_key_tail(once) == once
    assert mask_text(once) == once
    tail = mask_key_tail(secret)
    assert mask_key_tail(tail) == tail == mask_secret(tail)


# ---------------------------------------------------------------- headers

def test_mask_headers_rules():
    headers = {
        "Authorization": "Bearer " + OAUTH,
        "x-api-key": API_KEY,
        "Proxy-Authorization": "Basic dXNlcjpwYXNzd29yZA==",
        "Cookie": "session=abc123",
        "set-cookie": "sid=zzz; HttpOnly",
        "X-Custom-Token": "opaque-custom-token-value-99887766",
        "X-Client-Secret": "tiny",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "oauth-2025-04-20,thinking-token-count-2026-05-13",
        "content-type": "application/json",
        "x-note": "my key is " + API_KEY,
    }
    out = mask_headers(headers)
    assert out["Authorization"] == "Bearer ****"
    assert out["x-api-key"] == "sk-ant-api03-...12AA"
    assert out["Proxy-Authorization"] == "Basic ****"
    assert out["Cookie"] == "****"
    assert out["set-cookie"] == "****"
    assert out["X-Custom-Token"] == "...7766"
    assert out["X-Client-Secret"] == "****"
    # Non-secret headers unchanged, with their spelling.
    assert out["anthropic-version"] == "2023-06-01"
    assert out["anthropic-beta"] == headers["anthropic-beta"]
    assert out["content-type"] == "application/json"
    assert out["x-note"] == "my key is sk-ant-api03-...12AA"
    blob = json.dumps(out)
    for secret in (OAUTH, API_KEY, "dXNlcjpwYXNzd29yZA", "abc123", "opaque-custom-token"):
        assert secret not in blob


def test_mask_headers_accepts_pairs_and_none():
    assert mask_headers([("x-api-key", API_KEY), ("accept", "*/*")]) == {
        "x-api-key": "sk-ant-api03-...12AA", "accept": "*/*"}
    assert mask_headers(None) == {}


def test_mask_headers_real_claude_code_headers():
    # The captured Claude Code 2.1.197 header set (key replaced by a placeholder in the fixture).
    headers = {
        "accept": "application/json", "user-agent": "claude-cli/2.1.197 (external, sdk-cli)",
        "x-stainless-retry-count": "0", "anthropic-dangerous-direct-browser-access": "true",
        "x-api-key": API_KEY, "connection": "keep-alive", "accept-encoding": "gzip, deflate, br, zstd",
        "x-claude-code-session-id": "f52da381-2caf-4b5c-aead-7dbea19f7434",
    }
    out = mask_headers(headers)
    assert out["x-api-key"] == "sk-ant-api03-...12AA"
    assert {k: v for k, v in out.items() if k != "x-api-key"} == {k: v for k, v in headers.items() if k != "x-api-key"}


# ---------------------------------------------------------------- JSON

def test_mask_json_secret_names_at_any_depth():
    doc = {
        "type": "oauth",
        "api_key": API_KEY,
        "apiKey": "k1-longish-value",
        "x-api-key": "k2-longish-value",
        "oauth": {"accessToken": OAUTH, "refreshToken": REFRESH, "expiresAt": 1705123456789,
                  "scopes": ["user:inference"], "isMax": False},
        "nested": [{"deeper": [{"access_token": "at", "refresh_token": "rt", "id_token": "it"}]}],
        "token": "t0p",
        "Authorization": "Bearer xyz",
        "client_secret": "cs",
        "password": 123456,
        "db_password": "pw",
        "slack": {"webhook_url": "https://hooks.slack.com/services/T0/B0/XXXXXXXX", "channel": "#ops"},
        "secretSauce": {"a": 1},
    }
    out = mask_json(doc)
    assert out["type"] == "oauth"
    for k in ("api_key", "apiKey", "x-api-key", "token", "Authorization", "client_secret", "password",
              "db_password", "secretSauce"):
        assert out[k] == "****", k
    assert out["oauth"] == {"accessToken": "****", "refreshToken": "****", "expiresAt": 1705123456789,
                            "scopes": ["user:inference"], "isMax": False}
    assert out["nested"] == [{"deeper": [{"access_token": "****", "refresh_token": "****", "id_token": "****"}]}]
    assert out["slack"] == {"webhook_url": "****", "channel": "#ops"}
    # A copy: the input is untouched.
    assert doc["api_key"] == API_KEY and doc["oauth"]["accessToken"] == OAUTH


def test_mask_json_keeps_usage_counters():
    usage = {
        "usage": {"input_tokens": 150, "output_tokens": 200, "cache_read_input_tokens": 10,
                  "cache_creation_input_tokens": 5},
        "max_tokens": 64000,
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "inputTokens": 1, "outputTokens": 2, "cacheCreationInputTokens": 3, "toolCallCount": 4,
        "prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 2},
        "max_completion_tokens": 100, "tokenCount": 9, "token_type": "Bearer",
        "token": 42,  # a number under a token name is a count, not a credential
    }
    assert mask_json(usage) == usage


def test_mask_json_lists_and_strings_inside():
    body = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": f"here is my key {API_KEY}, use it"}]},
        {"role": "user", "content": f"and a GitHub token {GH}"},
    ], "tools": [{"name": "Read", "input_schema": {"properties": {"file_path": {"type": "string"}}}}]}
    out = mask_json(body)
    text = json.dumps(out)
    assert API_KEY not in text and GH not in text
    assert out["messages"][0]["content"][0]["text"] == "here is my key sk-ant-api03-...12AA, use it"
    assert out["tools"] == body["tools"]


def test_mask_json_cuts_long_strings_after_masking():
    out = mask_json({"text": "a" * 5000 + API_KEY, "short": "ok"}, max_str=1000)
    assert out["text"].startswith("a" * 1000) and out["text"].endswith("chars)")
    assert len(out["text"]) < 1100
    assert out["short"] == "ok"


def test_mask_json_leaves_a_real_claude_code_body_unchanged():
    # A real Claude Code body has no secret-named keys: masking must not change its structure or counters.
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "claude-code-2.1.197" / "messages-turn1.json"
    if not path.exists():
        pytest.skip("shared Claude Code fixture not available")
    body = json.loads(path.read_text())
    assert mask_json(body) == body


# ---------------------------------------------------------------- free text

def test_mask_text_several_key_styles():
    text = (
        f"anthropic {API_KEY}; oauth Authorization: Bearer {OAUTH}\n"
        f"github {GH} and {GH_PAT}, openrouter {OPENROUTER}, openai {OPENAI}; "
        "webhook https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX done"
    )
    out = mask_text(text)
    for secret in (API_KEY, OAUTH, GH, GH_PAT, OPENROUTER, OPENAI, "XXXXXXXXXXXXXXXX"):
        _hidden(secret, out)
    assert "sk-ant-api03-...12AA" in out
    assert "Authorization: Bearer ****" in out
    assert "hooks.slack.com/services/****" in out
    assert out.startswith("anthropic ") and out.endswith(" done")


def test_mask_text_key_value_pairs():
    out = mask_text('refresh_token=abcdef123456&grant_type=refresh_token {"password": "hunter two", '
                    '"api_key": "plainvalue"} {\\"access_token\\": \\"esc-aped\\"} secret: s3cr3tv4lue')
    for secret in ("abcdef123456", "hunter two", "plainvalue", "esc-aped", "s3cr3tv4lue"):
        assert secret not in out
    assert "grant_type=refresh_token" in out


def test_mask_text_leaves_usage_and_ordinary_text_alone():
    text = ('{"usage": {"input_tokens": 150, "output_tokens": 200}, "max_tokens": 64000} '
            "POST /v1/messages 200 12ms domain=a.example id=req_1 model=claude-sonnet-4 in=1 out=2 "
            "anthropic-beta: thinking-token-count-2026-05-13, the key insight is tokens")
    assert mask_text(text) == text


def test_mask_text_ellipsis_after_key_does_not_leak():
    out = mask_text(f"my key: {API_KEY}...")
    _hidden(API_KEY, out)


def test_registered_secret_masked_wherever_it_appears():
    opaque = "your-access-token-7f3a9c"  # matches no pattern on its own
    assert mask_text(f"token {opaque}!") == f"token {opaque}!"  # unregistered: prose with no key shape
    register_secret(opaque)
    out = mask_text(f"got {opaque} and again{opaque}")
    assert opaque not in out
    assert out == "got ...3a9c and again...3a9c"


def test_registered_secrets_longest_first_and_ignored_when_short():
    register_secret("abcdefgh12345678")
    register_secret("abcdefgh12345678-and-more-0000")
    register_secret("short")  # too short to register: would mask ordinary words
    register_secret(None)
    out = mask_text("x abcdefgh12345678-and-more-0000 y short")
    assert "abcdefgh" not in out and "and-more" not in out
    assert out.endswith(" y short")


@pytest.mark.parametrize("text, secret", [
    ("connection to postgresql://nexus:s3cretpw@db.example.com:5432/nexus failed", "s3cretpw"),
    ("proxy https://alice:hunter2pass@proxy.internal:8080 refused", "hunter2pass"),
])
def test_passwords_in_urls_are_masked(text, secret):
    masked = mask_text(text)
    assert secret not in masked and "****@" in masked
    assert masked.split("://")[0] == text.split("://")[0]  # the rest of the line stays readable


def test_urls_without_a_password_are_left_alone():
    text = "see https://example.com/a@b and user@host"
    assert mask_text(text) == text
