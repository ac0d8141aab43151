"""The dashboard app through Flask's test client: access, sessions, CSRF, headers, bad input, and cost in
/token-stats. (The browser test in tests/e2e drives the same pages in chromium.)"""
from __future__ import annotations

import re
import time

import pytest

from app import create_app
from app.blueprints import dashboard as dashboard_bp
from app.records import RequestRecord
from app.services.dashboard_auth import FailureThrottle
from app.settings import Settings

KEY = "dashboard-test-key-0123456789"
PROXY_KEY = "proxy-admin-key-ABCDEFGH"


@pytest.fixture
def app(tmp_path):
    settings = Settings.from_env({"USAGE_DB_PATH": str(tmp_path / "u.sqlite3"), "DASHBOARD_API_KEY": KEY,
                                  "TOKEN_REPORT_INTERVAL": "0", "PROXY_API_KEYS": PROXY_KEY})
    app = create_app(settings, start_background=False)
    services = app.extensions["nexus"]
    now = time.time()
    services.storage.write_batch([
        RequestRecord(request_id="req_1", timestamp=now - 10, domain="a.example", mode="passthrough",
                      model_requested="claude-sonnet-4-5", model_used="claude-sonnet-4-5", input_tokens=1000,
                      output_tokens=100, status=200, cost_usd=0.0045),
        RequestRecord(request_id="req_2", timestamp=now - 5, domain="b.example", mode="translation",
                      model_requested="claude-haiku-4-5", model_used="some/unpriced", input_tokens=10,
                      status=200, cost_usd=None),
    ])
    yield app
    services.stop()


def login(client) -> None:
    resp = client.get(f"/dashboard?token={KEY}")
    assert resp.status_code == 303


@pytest.mark.parametrize("path", ["/dashboard/api/overview", "/dashboard/api/requests", "/dashboard/api/requests/1",
                                  "/dashboard/api/credentials", "/dashboard/api/overview?token=wrong"])
def test_json_endpoints_answer_401_without_a_session(app, path):
    resp = app.test_client().get(path)
    assert resp.status_code == 401
    assert resp.json["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/requests", "/dashboard/requests/1", "/dashboard/credentials"])
def test_pages_send_the_login_page_without_a_session(app, path):
    resp = app.test_client().get(path)
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/dashboard/login?next=")


def test_token_url_sets_a_strict_httponly_cookie_and_drops_the_token(app):
    client = app.test_client()
    resp = client.get(f"/dashboard/requests?domain=a.example&token={KEY}")
    assert resp.status_code == 303 and resp.headers["Location"] == "/dashboard/requests?domain=a.example"
    cookie = resp.headers["Set-Cookie"]
    assert cookie.startswith("nexus_dashboard=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie
    assert client.get("/dashboard/api/overview").status_code == 200
    secure = app.test_client().get(f"/dashboard?token={KEY}", base_url="https://proxy.example")
    assert "Secure" in secure.headers["Set-Cookie"]


def test_a_wrong_key_shows_the_login_page_again_and_sets_no_session(app):
    client = app.test_client()
    resp = client.get("/dashboard?token=not-the-key")
    assert resp.status_code == 200 and b"not the dashboard key" in resp.data
    assert not any(c.startswith("nexus_dashboard=") for c in resp.headers.getlist("Set-Cookie"))
    assert client.get("/dashboard/api/overview").status_code == 401


def test_the_login_form_needs_its_csrf_token(app):
    client = app.test_client()
    page = client.get("/dashboard/login")
    token = re.search(rb'name="csrf" value="([^"]+)"', page.data).group(1).decode()
    other = app.test_client()  # a form posted from elsewhere has no matching cookie
    assert other.post("/dashboard/login", data={"key": KEY, "csrf": token}).status_code == 400
    assert other.get("/dashboard/api/overview").status_code == 401
    assert app.test_client().post("/dashboard/login", data={"key": KEY}).status_code == 400
    resp = client.post("/dashboard/login", data={"key": KEY, "csrf": token, "next": "/dashboard/credentials"})
    assert resp.status_code == 303 and resp.headers["Location"] == "/dashboard/credentials"
    assert client.get("/dashboard/api/overview").status_code == 200
    fresh = app.test_client()
    page = fresh.get("/dashboard/login")
    token = re.search(rb'name="csrf" value="([^"]+)"', page.data).group(1).decode()
    evil = fresh.post("/dashboard/login", data={"key": KEY, "csrf": token, "next": "//evil.example/"})
    assert evil.status_code == 303 and evil.headers["Location"] == "/dashboard"  # never off the dashboard


def test_logout_needs_the_session_csrf_token(app):
    client = app.test_client()
    login(client)
    page = client.get("/dashboard")
    token = re.search(rb'name="csrf" value="([^"]+)"', page.data).group(1).decode()
    assert client.post("/dashboard/logout", data={"csrf": "forged"}).status_code == 400
    assert client.get("/dashboard/api/overview").status_code == 200
    assert client.post("/dashboard/logout", data={"csrf": token}).status_code == 303
    assert client.get("/dashboard/api/overview").status_code == 401


def test_repeated_failures_are_slowed_down(app, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(dashboard_bp.gevent, "sleep", waits.append)
    client = app.test_client()
    for _ in range(6):
        client.get("/dashboard?token=wrong-key")
    assert waits == [0.5, 1.0, 2.0]  # three free tries, then longer and longer
    login(client)  # the right key still works at once, and clears the count
    client.get("/dashboard?token=wrong-key")
    assert waits == [0.5, 1.0, 2.0]


def test_failure_throttle_caps_and_forgets():
    now = [0.0]
    t = FailureThrottle(clock=lambda: now[0])
    for _ in range(20):
        t.failed("1.2.3.4")
    assert t.delay("1.2.3.4") == 8.0 and t.delay("5.6.7.8") == 0.0
    now[0] += 3600
    assert t.delay("1.2.3.4") == 0.0


def test_every_page_has_a_strict_csp_and_refuses_frames(app):
    client = app.test_client()
    pages = [client.get("/dashboard/login")]
    login(client)
    pages += [client.get(p) for p in ("/dashboard", "/dashboard/requests", "/dashboard/requests/1",
                                      "/dashboard/credentials", "/dashboard/api/overview")]
    for resp in pages:
        assert resp.status_code == 200
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert b"<script>" not in resp.data and b" style=" not in resp.data and b"onclick" not in resp.data
        assert KEY.encode() not in resp.data and PROXY_KEY.encode() not in resp.data


def test_the_page_and_its_assets_stay_under_300_kb(app):
    client = app.test_client()
    login(client)
    page = client.get("/dashboard")
    assets = re.findall(rb'(?:src|href)="(/dashboard/static/[^"]+)"', page.data)
    assert len(assets) == 3
    total = len(page.data) + sum(len(client.get(a.decode()).data) for a in assets)
    assert total < 300_000


@pytest.mark.parametrize("path", [
    "/dashboard?range=2y", "/dashboard?from=yesterday", "/dashboard?from=2026-01-02&to=2026-01-01",
    "/dashboard?from=1e400", "/dashboard/requests?limit=abc", "/dashboard/requests?before=nan_1",
    "/dashboard/requests?before=12", "/dashboard/requests?status_class=7xx", "/dashboard/requests?nope=1",
    "/dashboard/api/requests?from=-5", "/dashboard/api/overview?to=9" * 1,
])
def test_bad_input_is_a_400_never_a_500(app, path):
    client = app.test_client()
    login(client)
    assert client.get(path).status_code == 400


def test_token_stats_shows_cost_and_accepts_a_dashboard_session(app):
    client = app.test_client()
    assert client.get("/token-stats").status_code == 401
    body = client.get("/token-stats", headers={"x-api-key": PROXY_KEY}).json
    assert body["stats"]["a.example"]["costUsd"] == 0.0045 and body["stats"]["a.example"]["unpricedRequests"] == 0
    assert body["stats"]["b.example"]["unpricedRequests"] == 1
    assert body["models"]["claude-sonnet-4-5"]["costUsd"] == 0.0045
    assert body["totals"]["costUsd"] == 0.0045 and body["totals"]["unpricedRequests"] == 1
    assert body["totals"]["requestCount"] == 2
    login(client)
    assert client.get("/token-stats").status_code == 200


def test_overview_marks_unpriced_rows_instead_of_showing_zero(app):
    client = app.test_client()
    login(client)
    html = client.get("/dashboard").data.decode()
    row = re.search(r"<tr><td>b\.example</td>.*?</tr>", html, re.S).group(0)
    assert "unpriced" in row and "$0.00" not in row
    assert 'data-total="unpricedRequests" data-value="1"' in html


def test_credentials_page_shows_each_pooled_credential_with_its_windows_cooling_and_usage(tmp_path):
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in ("max-1", "max-2"):
        path = creds / f"{name}.json"
        path.write_text('{"type": "api_key", "api_key": "sk-ant-api03-%s-0123456789abcdef"}' % name)
        path.chmod(0o600)
    mapping = '{"pool.example": ["%s", "%s"]}' % (creds / "max-1.json", creds / "max-2.json")
    settings = Settings.from_env({"USAGE_DB_PATH": str(tmp_path / "u.sqlite3"), "DASHBOARD_API_KEY": KEY,
                                  "TOKEN_REPORT_INTERVAL": "0", "PROXY_MODE": "passthrough",
                                  "DOMAIN_CREDENTIAL_MAPPING": mapping})
    app = create_app(settings, start_background=False)
    services = app.extensions["nexus"]
    try:
        services.storage.write_batch([RequestRecord(
            request_id="req_p", timestamp=time.time(), domain="pool.example", mode="passthrough",
            model_requested="claude-sonnet-4-5", input_tokens=1200, output_tokens=34, status=200,
            credential="max-1.json")])
        pool = services.credentials.domain_config("pool.example").pool
        first, second = pool.files
        now = time.time()
        pool.learn(first, {"anthropic-ratelimit-unified-status": "allowed",
                           "anthropic-ratelimit-unified-5h-utilization": "0.42",
                           "anthropic-ratelimit-unified-5h-reset": str(int(now) + 3600)}, now)
        pool.learn(second, {"retry-after": "120"}, now)
        pool.judge(second, 429, now)
        client = app.test_client()
        login(client)
        rows = client.get("/dashboard/api/credentials").json["credentials"]
        assert [(r["domain"], r["name"]) for r in rows] == [("pool.example", "max-1.json"),
                                                            ("pool.example", "max-2.json")]
        assert rows[0]["fiveHour"]["utilization"] == 0.42 and rows[0]["state"] == "ok"
        assert rows[0]["requests"] == 1 and rows[0]["tokens"] == 1234
        assert rows[1]["state"] == "cooling" and rows[1]["coolingUntil"] and rows[1]["requests"] == 0
        page = client.get("/dashboard/credentials").get_data(as_text=True)
        assert "42%" in page and "cooling" in page and "rate limited (429)" in page
        assert "0123456789abcdef" not in page  # never a secret, not even partly
    finally:
        services.stop()
