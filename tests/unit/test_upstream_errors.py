"""An upstream's error names the upstream, so a user does not take it for the proxy's refusal."""
import json

import pytest

from app.errors import from_upstream, upstream_error_message, upstream_host


@pytest.mark.parametrize("url, host", [
    ("https://models.github.ai/inference/chat/completions", "models.github.ai"),
    ("http://127.0.0.1:11434/v1/chat/completions", "127.0.0.1:11434"),
    ("https://user:secret@llm.internal/v1", "llm.internal"),
])
def test_upstream_host_is_the_name_a_user_configured_without_credentials(url, host):
    assert upstream_host(url) == host


def test_a_rejected_key_says_the_upstream_rejected_it_in_its_own_words():
    body = json.dumps({"error": {"code": "unauthorized", "message": "Bad credentials"}}).encode()
    assert upstream_error_message(401, body, "models.github.ai") == \
        "upstream models.github.ai rejected the key (401): Bad credentials"


@pytest.mark.parametrize("status, body, expected", [
    (429, b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}',
     "upstream api.anthropic.com is rate limiting (429): slow down"),
    (500, b"oops", "upstream api.anthropic.com failed (500): oops"),
    (502, b"<html><body>Bad gateway</body></html>", "upstream api.anthropic.com failed (502): no error message"),
    (400, b'{"detail": "model not supported"}', "upstream api.anthropic.com refused the request (400): model not supported"),
])
def test_other_statuses(status, body, expected):
    assert upstream_error_message(status, body, "api.anthropic.com") == expected


def test_connection_failures_name_the_upstream():
    assert from_upstream("models.github.ai", "is unreachable: connection refused") == \
        "upstream models.github.ai is unreachable: connection refused"
