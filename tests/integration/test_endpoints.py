"""Health, client-setup files and the Anthropic shape of every error the app itself produces."""
import json
import os

import pytest

from app import create_app
from config.settings import Settings

SECRETS = {
    "CLAUDE_CODE_PROXY_API_KEY": "ghp_topsecretgithubtoken1234567890",
    "CLAUDE_API_KEY": "sk-ant-api03-envkeysecretvalue-abcdefghijklmnop",
}


def make_client(tmp_path, **env):
    base = {"USAGE_DB_PATH": str(tmp_path / "usage.sqlite3"), "TOKEN_REPORT_INTERVAL": "0",
            "CLIENT_SETUP_DIR": str(tmp_path / "setup")}
    base.update(env)
    os.makedirs(base["CLIENT_SETUP_DIR"], exist_ok=True)
    app = create_app(Settings.from_env(base), start_background=False)
    return app.test_client()


def assert_anthropic_error(resp, status, error_type):
    assert resp.status_code == status
    body = resp.get_json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


def test_health_reports_configuration_without_secrets(tmp_path):
    cred = tmp_path / "team1.json"
    cred.write_text(json.dumps({"type": "api_key", "api_key": "sk-ant-api03-filekeysecret-0123456789abcdef"}))
    client = make_client(tmp_path, PROXY_MODE="passthrough",
                         DOMAIN_CREDENTIAL_MAPPING=json.dumps({"team1.example.com": str(cred),
                                                               "team2.example.com": str(tmp_path / "missing.json")}),
                         **SECRETS)
    resp = client.get("/")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ok" and body["mode"] == "passthrough" and body["version"]
    creds = body["credentials"]
    assert creds["team1.example.com"]["valid"] is True and creds["team1.example.com"]["type"] == "api_key"
    assert creds["team2.example.com"]["found"] is False
    text = resp.get_data(as_text=True)
    for secret in (*SECRETS.values(), "filekeysecret", "0123456789abcdef"):
        assert secret not in text
    # not even a tail of a secret
    for secret in SECRETS.values():
        assert secret[-6:] not in text


def test_health_in_translation_mode_shows_models_and_caps(tmp_path):
    client = make_client(tmp_path, REASONING_MODEL="deepseek/r1", COMPLETION_MAX_TOKENS="2048")
    body = client.get("/").get_json()
    assert body["mode"] == "translation"
    assert body["models"]["reasoning"] == "deepseek/r1"
    assert body["maxTokens"]["completion"] == 2048
    assert body["upstream"] == "https://models.github.ai/inference"
    assert set(body["features"]) >= {"telemetry", "slack", "debug"}


def test_head_root_is_200_without_body(tmp_path):
    resp = make_client(tmp_path).head("/")
    assert resp.status_code == 200 and resp.get_data() == b""


def test_setup_file_is_served_with_caching_headers(tmp_path):
    client = make_client(tmp_path)
    (tmp_path / "setup" / "settings.json").write_text('{"env": {}}')
    resp = client.get("/client-setup/settings.json")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert "max-age=3600" in resp.headers["Cache-Control"] and "public" in resp.headers["Cache-Control"]
    assert resp.headers.get("ETag") and resp.headers.get("Last-Modified")
    again = client.get("/client-setup/settings.json", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status_code == 304
    since = client.get("/client-setup/settings.json", headers={"If-Modified-Since": resp.headers["Last-Modified"]})
    assert since.status_code == 304


def test_shipped_sample_setup_file_is_served(tmp_path):
    repo_setup = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "client-setup")
    client = make_client(tmp_path, CLIENT_SETUP_DIR=repo_setup)
    resp = client.get("/client-setup/claude-code-settings.json")
    assert resp.status_code == 200 and "ANTHROPIC_BASE_URL" in resp.get_data(as_text=True)


@pytest.mark.parametrize("path", [
    "/client-setup/../app/__init__.py",
    "/client-setup/..%2fapp%2f__init__.py",
    "/client-setup/%2e%2e%2fapp%2f__init__.py",
    "/client-setup/%2e%2e/secret.txt",
    "/client-setup/..%5csecret.txt",
    "/client-setup/sub%5c..%5c..%5csecret.txt",
    "/client-setup//etc/passwd",
    "/client-setup/%2fetc%2fpasswd",
    "/client-setup/.hidden",
    "/client-setup/.env",
    "/client-setup/outside-link",
    "/client-setup/",
    "/client-setup/sub",
    "/client-setup/missing.json",
])
def test_traversal_and_hidden_files_are_404(tmp_path, path):
    client = make_client(tmp_path)
    setup = tmp_path / "setup"
    (tmp_path / "secret.txt").write_text("top secret")
    (setup / ".hidden").write_text("hidden")
    (setup / ".env").write_text("CLAUDE_API_KEY=x")
    (setup / "sub").mkdir()
    os.symlink(tmp_path / "secret.txt", setup / "outside-link")
    resp = client.get(path)
    assert resp.status_code == 404
    assert b"top secret" not in resp.get_data() and b"hidden" not in resp.get_data()
    if resp.is_json:
        assert resp.get_json()["error"]["type"] == "not_found_error"


def test_symlink_inside_the_folder_is_served(tmp_path):
    client = make_client(tmp_path)
    (tmp_path / "setup" / "real.txt").write_text("ok")
    os.symlink(tmp_path / "setup" / "real.txt", tmp_path / "setup" / "alias.txt")
    assert client.get("/client-setup/alias.txt").get_data() == b"ok"


def test_unknown_route_and_wrong_method_are_anthropic_errors(tmp_path):
    client = make_client(tmp_path)
    assert_anthropic_error(client.get("/nope"), 404, "not_found_error")
    resp = client.get("/v1/messages")
    assert_anthropic_error(resp, 405, "invalid_request_error")


def test_body_over_the_limit_is_413(tmp_path):
    client = make_client(tmp_path, MAX_REQUEST_BODY_MB="0.01")
    resp = client.post("/v1/messages", data=b"{" + b" " * 20000 + b"}", content_type="application/json")
    assert_anthropic_error(resp, 413, "request_too_large")


@pytest.mark.parametrize("body, fragment", [
    (b"not json", "not valid JSON"),
    (b"", "empty"),
    (b"[1,2]", "JSON object"),
    (b"\xff\xfe", "UTF-8"),
])
def test_bad_json_is_400(tmp_path, body, fragment):
    client = make_client(tmp_path, CLAUDE_CODE_PROXY_API_KEY="k")
    body_json = assert_anthropic_error(client.post("/v1/messages", data=body, content_type="application/json"),
                                       400, "invalid_request_error")
    assert fragment in body_json["error"]["message"]


def test_an_unexpected_exception_is_a_500_api_error_without_traceback(tmp_path, monkeypatch):
    client = make_client(tmp_path, CLAUDE_CODE_PROXY_API_KEY="k")
    services = client.application.extensions["nexus"]

    def boom(*args, **kwargs):
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr(services.translator, "messages", boom)
    resp = client.post("/v1/messages", json={"model": "m", "max_tokens": 1, "messages": []})
    body = assert_anthropic_error(resp, 500, "api_error")
    assert "internal detail" not in json.dumps(body) and "Traceback" not in resp.get_data(as_text=True)


def test_token_stats_shape(tmp_path):
    client = make_client(tmp_path)
    body = client.get("/token-stats").get_json()
    assert body["status"] == "ok" and isinstance(body["stats"], dict)
    assert body["timestamp"].endswith("Z")


def test_token_stats_rejects_a_bad_range(tmp_path):
    client = make_client(tmp_path)
    assert_anthropic_error(client.get("/token-stats?since=yesterday-ish"), 400, "invalid_request_error")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(tmp_path, constant):
    client = make_client(tmp_path, CLAUDE_CODE_PROXY_API_KEY="k")
    body = ('{"model": "m", "max_tokens": 5, "temperature": %s, "messages": [{"role": "user", "content": "hi"}]}'
            % constant).encode()
    resp = client.post("/v1/messages", data=body, content_type="application/json")
    message = assert_anthropic_error(resp, 400, "invalid_request_error")["error"]["message"]
    assert constant in message


def test_a_body_over_the_limit_is_still_accounted(tmp_path):
    client = make_client(tmp_path, MAX_REQUEST_BODY_MB="0.01", CLAUDE_CODE_PROXY_API_KEY="k")
    resp = client.post("/v1/messages", data=b"{" + b" " * 20000 + b"}", content_type="application/json")
    assert resp.status_code == 413
    stats = client.get("/token-stats").get_json()["stats"]["localhost"]
    assert stats["requestCount"] == 1 and stats["errorCount"] == 1


@pytest.mark.parametrize("turn", ["messages-turn1.json", "messages-turn2.json"])
def test_count_tokens_takes_what_claude_code_sends(tmp_path, turn):
    """Same body shape as /v1/messages: system array, mid-conversation system message, tools, thinking."""
    fixtures = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "claude-code-2.1.197")
    with open(os.path.join(fixtures, turn)) as fh:
        body = json.load(fh)
    client = make_client(tmp_path)
    resp = client.post("/v1/messages/count_tokens", json=body)
    assert resp.status_code == 200, resp.get_json()
    tokens = resp.get_json()["input_tokens"]
    # a documented estimate (characters / 4): the fixtures carry ~70 KB of system prompt and tools
    assert 10_000 < tokens < 40_000
