"""Logging: masked output whatever the call site does, a one-line access log, DEBUG dumps only at DEBUG."""
import io
import logging

import pytest

from app import logs
from app.masking import clear_registered_secrets, register_secret
from app.settings import Settings

API_KEY = "sk-ant-api03-" + "Zq8xR2vL9mN4pK7wT1yB6cH3jF5dG0sA" * 3 + "-QwErTy12AA"
OAUTH = "sk-ant-oat01-" + "Pp9Oo8Ii7Uu6Yy5Tt4Rr3Ee2Ww1Qq0" * 3 + "ZZ"
OPAQUE = "opaque-refresh-token-value-4242"  # no recognisable shape: only registration can catch it


@pytest.fixture()
def out():
    """Configure logging into a buffer; restore the `nexus` logger afterwards."""
    logger = logging.getLogger("nexus")
    saved = (list(logger.handlers), logger.level)
    buf = io.StringIO()
    yield buf
    for h in list(logger.handlers):
        logger.removeHandler(h)
    for h in saved[0]:
        logger.addHandler(h)
    logger.setLevel(saved[1])
    clear_registered_secrets()


def _configure(buf, **env):
    logs.configure_logging(Settings.from_env(env), stream=buf)


def _our_handlers():
    return [h for h in logging.getLogger("nexus").handlers if getattr(h, "_nexus_handler", False)]


def test_configure_is_idempotent_and_sets_level(out):
    _configure(out)
    _configure(out)
    assert len(_our_handlers()) == 1
    assert logging.getLogger("nexus").level == logging.INFO
    _configure(out, DEBUG="true")
    assert len(_our_handlers()) == 1
    assert logging.getLogger("nexus").level == logging.DEBUG
    _configure(out, LOG_LEVEL="warning")
    assert logging.getLogger("nexus").level == logging.WARNING


def test_format_has_time_level_and_logger_name(out):
    _configure(out)
    logging.getLogger("nexus.upstream").warning("upstream slow")
    line = out.getvalue().strip()
    parts = line.split(" ")
    assert parts[2:] == ["WARNING", "nexus.upstream", "upstream", "slow"]


def test_filter_masks_registered_secret_logged_raw(out):
    _configure(out)
    register_secret(OPAQUE)
    log = logging.getLogger("nexus.credentials")
    log.info("refreshed, new token %s", OPAQUE)
    log.info("key=" + API_KEY)  # a recognisable key needs no registration
    log.info({"accessToken": OAUTH})  # a non-string message
    try:
        raise RuntimeError(f"refresh failed for {OPAQUE}")
    except RuntimeError:
        log.exception("refresh error")
    text = out.getvalue()
    assert OPAQUE not in text and API_KEY not in text and OAUTH not in text
    assert "refreshed, new token ...4242" in text
    assert "RuntimeError: refresh failed for ...4242" in text  # the traceback is kept, masked


def test_access_line_and_log_access(out):
    line = logs.access_line("POST", "/v1/messages", 200, 812.4, "claude-1.example.com", "req_abc",
                            model="openai/gpt-4.1", input_tokens=150, output_tokens=20, stream=True)
    assert line == ("POST /v1/messages 200 812ms domain=claude-1.example.com id=req_abc "
                    "model=openai/gpt-4.1 in=150 out=20 stream")
    assert logs.access_line("GET", "/", 404, 1.0, "", "r1", error_type="not_found_error") == \
        "GET / 404 1ms domain=- id=r1 model=- in=0 out=0 error=not_found_error"
    _configure(out)
    logs.log_access("POST", "/v1/messages", 529, 5, "a.example", "req_x", error_type="overloaded_error")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert " INFO nexus.access POST /v1/messages 529 5ms domain=a.example id=req_x" in lines[0]
    _configure(out, LOG_LEVEL="WARNING")
    logs.log_access("POST", "/v1/messages", 200, 5, "a.example", "req_y")
    assert "req_y" not in out.getvalue()


def test_log_access_record(out):
    from app.records import RequestRecord
    _configure(out)
    rec = RequestRecord(request_id="req_r", timestamp=0, domain="d.example", mode="passthrough",
                        model_requested="claude-sonnet-4", status=200, input_tokens=3, output_tokens=4,
                        duration_ms=9.6, api_key_masked="sk-ant-api03-...12AA")
    logs.log_access_record(rec)
    assert "POST /v1/messages 200 10ms domain=d.example id=req_r model=claude-sonnet-4 in=3 out=4" in out.getvalue()


class _Exploding(dict):
    def items(self):
        raise AssertionError("debug helper did work while DEBUG is off")


def test_debug_helpers_silent_and_free_at_info(out):
    _configure(out)  # INFO
    logs.debug_incoming("r1", "POST", "http://x/v1/messages", _Exploding(), b"{}")
    logs.debug_outgoing("r1", "http://up/v1/messages", _Exploding(), {"a": 1}, "oauth")
    logs.debug_response("r1", 200, _Exploding(), b"{}")
    logs.debug_chunk("r1", b"data: {}\n\n")
    logs.debug_usage("r1", "a.example", _Exploding())
    assert out.getvalue() == ""
    assert not logs.debug_enabled()


def test_debug_incoming_masked_and_formatted(out):
    _configure(out, DEBUG="true")
    register_secret(OPAQUE)
    body = (b'{"model": "claude-3-opus-20240229", "api_key": "' + API_KEY.encode() + b'", '
            b'"messages": [{"role": "user", "content": "use ' + OPAQUE.encode() + b' please ' + b"z" * 3000 + b'"}],'
            b' "max_tokens": 1024}')
    logs.debug_incoming("abc123-def456", "POST", "http://localhost:3000/v1/messages?key=" + OPAQUE,
                        {"authorization": "Bearer " + OAUTH, "content-type": "application/json"}, body)
    text = out.getvalue()
    for secret in (API_KEY, OAUTH, OPAQUE):
        assert secret not in text
    assert "=== Incoming Request ===\nRequest ID: abc123-def456\nMethod: POST\n" in text
    assert "URL: http://localhost:3000/v1/messages?key=****" in text
    assert '"authorization": "Bearer ****"' in text
    assert '"api_key": "****"' in text
    assert '"max_tokens": 1024' in text  # counters stay readable
    assert '"model": "claude-3-opus-20240229"' in text
    assert "zzz... (3019 chars)" in text  # the long message text is cut, after masking
    assert "z" * 1100 not in text
    assert text.rstrip().endswith("=" * 22)


def test_debug_incoming_non_json_body(out):
    _configure(out, DEBUG="true")
    logs.debug_incoming("r2", "POST", "http://h/v1/messages", {}, b"not json, key " + API_KEY.encode())
    text = out.getvalue()
    assert API_KEY not in text
    assert "Request Body: not json, key sk-ant-api03-...12AA" in text


@pytest.mark.parametrize("auth_type, label", [("oauth", "OAuth"), ("api_key", "API Key"), (None, "none")])
def test_debug_outgoing_auth_type(out, auth_type, label):
    _configure(out, DEBUG="true")
    headers = {"x-api-key": API_KEY} if auth_type == "api_key" else {
        "authorization": "Bearer " + OAUTH, "anthropic-beta": "oauth-2025-04-20"}
    logs.debug_outgoing("r3", "https://api.anthropic.com/v1/messages", headers,
                        {"model": "m", "max_tokens": 5, "metadata": {"user_id": "u"}}, auth_type)
    text = out.getvalue()
    assert "=== Outgoing Request ===" in text
    assert f"Authentication type: {label}\n" in text
    assert API_KEY not in text and OAUTH not in text
    if auth_type == "api_key":
        assert '"x-api-key": "sk-ant-api03-...12AA"' in text
    else:
        assert '"authorization": "Bearer ****"' in text
        assert '"anthropic-beta": "oauth-2025-04-20"' in text


def test_debug_response_chunk_and_usage(out):
    _configure(out, DEBUG="true")
    register_secret(OPAQUE)
    logs.debug_response("r4", 401, {"content-type": "application/json", "set-cookie": "s=1"},
                        b'{"type":"error","error":{"type":"authentication_error","message":"bad key ' + API_KEY.encode() + b'"}}')
    logs.debug_chunk("r4", b'event: content_block_delta\ndata: {"delta":{"text":"' + OPAQUE.encode() + b'"}}\n\n')
    logs.debug_usage("r4", "a.example", {"input_tokens": 150, "output_tokens": 200},
                     {"inputTokens": 1150, "outputTokens": 1200, "requestCount": 3})
    text = out.getvalue()
    assert API_KEY not in text and OPAQUE not in text
    assert "=== Response ===\nRequest ID: r4\nStatus: 401\n" in text
    assert '"set-cookie": "****"' in text
    assert "[r4] SSE chunk: event: content_block_delta\\ndata: " in text
    assert "=== Token Usage ===\nRequest ID: r4\nDomain: a.example\n" in text
    assert '"input_tokens": 150' in text and '"inputTokens": 1150' in text and '"requestCount": 3' in text
