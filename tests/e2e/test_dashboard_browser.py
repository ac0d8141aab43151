"""The dashboard in a real browser (Debian's chromium driven by Playwright), after real traffic through the
proxy with the anthropic SDK: several domains and models, both modes, a failing request and a stream cut
off part-way. Costs are checked against prices written here, independently of app.pricing.

Screenshots of every page are saved in docs/screenshots/ (README "Dashboard").
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import time
from pathlib import Path

import anthropic
import pytest

from tests.conftest_db import in_ci
from tests.fakes.server import REPO_ROOT, ProxyServer

pytestmark = pytest.mark.timeout(240)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"

DASHBOARD_KEY = "dash-key-for-tests-0123456789abcdef"
CLIENT_KEY = "sk-ant-api03-dashboard-client-key-QQQQ"
TEAM_A_FILE_KEY = "sk-ant-api03-team-a-file-key-RRRR"
TRANSLATION_KEY = "github_pat_dashboard_upstream_key_SSSS"
SECRETS = (DASHBOARD_KEY, CLIENT_KEY, TEAM_A_FILE_KEY, TRANSLATION_KEY)

# Dollars per million tokens: input, output, 5-minute cache write, 1-hour cache write, cache read
# (Anthropic's list for the Claude models; MODEL_PRICES for the translation upstream's model).
PRICES = {
    "claude-sonnet-4-5": (3.0, 15.0, 3.75, 6.0, 0.30),
    "claude-opus-4-5": (5.0, 25.0, 6.25, 10.0, 0.50),
    "claude-haiku-4-5": (1.0, 5.0, 1.25, 2.0, 0.10),
    "gpt-test-mini": (2.0, 8.0, 2.5, 4.0, 0.20),
}


def expected_cost(model: str, inp: int, out: int, cw5: int = 0, cw1h: int = 0, cr: int = 0) -> float:
    p = PRICES[model]
    return (inp * p[0] + out * p[1] + cw5 * p[2] + cw1h * p[3] + cr * p[4]) / 1e6


def _chromium():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the machine
        (pytest.fail if in_ci() else pytest.skip)(f"playwright not installed: {exc}")
    if not os.path.exists(CHROMIUM):  # pragma: no cover
        (pytest.fail if in_ci() else pytest.skip)(f"{CHROMIUM} not installed (apt-get install chromium)")
    return sync_playwright


def message(model: str, usage: dict, text: str = "Scripted answer.") -> dict:
    return {"id": "msg_dash_" + model.replace("-", "_"), "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": usage}


def sse(model: str, usage: dict, text: str = "Streamed answer.") -> list[dict]:
    start = message(model, dict(usage, output_tokens=1))
    start.update(content=[], stop_reason=None)
    return [
        {"event": "message_start", "data": {"type": "message_start", "message": start}},
        {"event": "content_block_start", "data": {"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "text", "text": ""}}},
        {"event": "content_block_delta", "data": {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": text}}},
        {"event": "content_block_stop", "data": {"type": "content_block_stop", "index": 0}},
        {"event": "message_delta", "data": {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                             "stop_sequence": None},
                                            "usage": {"output_tokens": usage["output_tokens"]}}},
        {"event": "message_stop", "data": {"type": "message_stop"}},
    ]


def ask(model: str = "claude-sonnet-4-5", **extra) -> dict:
    return dict({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi there"}]}, **extra)


class Traffic:
    """What the test sent, summed the way the dashboard must sum it."""

    def __init__(self) -> None:
        self.requests = self.errors = self.input = self.output = self.cache_write = self.cache_read = 0
        self.cost = 0.0
        self.unpriced = 0
        self.domains: dict[str, int] = {}

    def add(self, domain: str, model: str | None, inp=0, out=0, cw5=0, cw1h=0, cr=0, error=False) -> None:
        self.requests += 1
        self.errors += 1 if error else 0
        self.input, self.output = self.input + inp, self.output + out
        self.cache_write += cw5 + cw1h
        self.cache_read += cr
        if model in PRICES:
            self.cost += expected_cost(model, inp, out, cw5, cw1h, cr)
        elif inp or out:
            self.unpriced += 1
        self.domains[domain] = self.domains.get(domain, 0) + 1

    def add_usage(self, domain: str, model: str, usage, error=False) -> None:
        split = getattr(usage, "cache_creation", None)
        cw1h = (getattr(split, "ephemeral_1h_input_tokens", 0) or 0) if split else 0
        cw_total = usage.cache_creation_input_tokens or 0
        self.add(domain, model, usage.input_tokens, usage.output_tokens, cw_total - cw1h, cw1h,
                 usage.cache_read_input_tokens or 0, error)


def client(proxy: ProxyServer, host: str | None = None, key: str = CLIENT_KEY) -> anthropic.Anthropic:
    headers = {"Host": host} if host else None
    return anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0, default_headers=headers)


@pytest.fixture(scope="module")
def proxies(fake_upstream_server, tmp_path_factory):
    fake = fake_upstream_server
    fake.reset()
    tmp = tmp_path_factory.mktemp("dashboard")
    cred = tmp / "team-a.json"
    cred.write_text(json.dumps({"type": "api_key", "api_key": TEAM_A_FILE_KEY}))
    cred.chmod(0o600)
    db = str(tmp / "usage.sqlite3")
    passthrough = ProxyServer({
        "PROXY_MODE": "passthrough", "CLAUDE_API_BASE_URL": fake.url, "USAGE_DB_PATH": db,
        "DASHBOARD_API_KEY": DASHBOARD_KEY,
        "DOMAIN_CREDENTIAL_MAPPING": json.dumps({"team-a.example": str(cred),
                                                 "team-c.example": str(tmp / "missing.json")}),
    }).start()
    # The other mode on the same store: the dashboard shows both, as it shows a fleet with DATABASE_URL.
    translation = ProxyServer({
        "PROXY_MODE": "translation", "ANTHROPIC_PROXY_BASE_URL": fake.url, "USAGE_DB_PATH": db,
        "CLAUDE_CODE_PROXY_API_KEY": TRANSLATION_KEY, "COMPLETION_MODEL": "gpt-test-mini",
        "MODEL_PRICES": json.dumps({"gpt-test-*": {"input": 2, "output": 8}}),
    }, workers=2).start()
    yield passthrough, translation
    for p in (passthrough, translation):
        p.stop()


def send_traffic(fake, passthrough: ProxyServer, translation: ProxyServer) -> Traffic:
    t = Traffic()
    # team-a: the scripted model's answer, then one with 5-minute and 1-hour cache writes priced apart
    with client(passthrough, "team-a.example") as c:
        msg = c.messages.create(**ask())
        t.add_usage("team-a.example", "claude-sonnet-4-5", msg.usage)
        usage = {"input_tokens": 50, "output_tokens": 20, "cache_creation_input_tokens": 3000,
                 "cache_read_input_tokens": 1000,
                 "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000}}
        fake.script("/v1/messages", [{"json": message("claude-opus-4-5", usage)}])
        msg = c.messages.create(**ask("claude-opus-4-5"))
        assert msg.usage.cache_creation.ephemeral_1h_input_tokens == 2000
        t.add_usage("team-a.example", "claude-opus-4-5", msg.usage)
    # team-b: two streams (one with cache writes in message_start), then one cut off part-way
    with client(passthrough, "team-b.example") as c:
        with c.messages.stream(**ask("claude-haiku-4-5")) as s:
            final = s.get_final_message()
        t.add_usage("team-b.example", "claude-haiku-4-5", final.usage)
        usage = {"input_tokens": 30, "output_tokens": 12, "cache_creation_input_tokens": 500,
                 "cache_read_input_tokens": 0,
                 "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 500}}
        fake.script("/v1/messages", [{"sse": sse("claude-sonnet-4-5", usage)}])
        with c.messages.stream(**ask()) as s:
            final = s.get_final_message()
        t.add_usage("team-b.example", "claude-sonnet-4-5", final.usage)
        cut = sse("claude-sonnet-4-5", {"input_tokens": 40, "output_tokens": 9})
        fake.script("/v1/messages", [{"sse": cut, "drop_after": 3}])
        with pytest.raises(anthropic.APIError):
            with c.messages.stream(**ask()) as s:
                for _ in s:
                    pass
        t.add("team-b.example", "claude-sonnet-4-5", 40, 1, error=True)  # what message_start said
    # 127.0.0.1: a refused request and a model without a price
    with client(passthrough) as c:
        fake.script("/v1/messages", [{"status": 400}])
        with pytest.raises(anthropic.BadRequestError):
            c.messages.create(**ask())
        t.add("127.0.0.1", "claude-sonnet-4-5", error=True)
        msg = c.messages.create(**ask("claude-unreleased-9"))
        t.add_usage("127.0.0.1", "claude-unreleased-9", msg.usage)
    # translation mode: priced by the upstream model, through MODEL_PRICES
    with client(translation, "localhost") as c:
        msg = c.messages.create(**ask())
        t.add_usage("localhost", "gpt-test-mini", msg.usage)
    return t


def _get(proxy: ProxyServer, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_for_requests(page, count: int, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    data: dict = {}
    while time.monotonic() < deadline:
        resp = page.request.get(page.url.split("/dashboard")[0] + "/dashboard/api/overview?range=24h")
        data = resp.json()
        if data["totals"]["requests"] >= count:
            return data
        time.sleep(0.3)
    raise AssertionError(f"the store did not reach {count} requests: {data.get('totals')}")


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_dashboard_in_a_real_browser(proxies, fake_upstream_server):
    sync_playwright = _chromium()
    passthrough, translation = proxies
    sent = send_traffic(fake_upstream_server, passthrough, translation)
    base = passthrough.url
    console_errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            sizes: dict[str, int] = {}
            page.on("response", lambda r: sizes.__setitem__(r.url, len(r.body()) if r.status == 200 else 0))

            # --- log in with the token URL: cookie set, token gone from the address bar
            resp = page.goto(f"{base}/dashboard?token={DASHBOARD_KEY}&range=24h&poll=1000")
            assert page.url == f"{base}/dashboard?range=24h&poll=1000"
            headers = resp.all_headers()
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
            assert headers["x-frame-options"] == "DENY"
            cookie = next(c for c in context.cookies() if c["name"] == "nexus_dashboard")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
            assert sum(sizes.values()) < 300_000, sizes

            # --- overview totals and cost equal what was sent
            wait_for_requests(page, sent.requests)
            page.reload()
            total = lambda key: page.inner_text(f'[data-total="{key}"]')  # noqa: E731
            assert total("requests") == f"{sent.requests:,}"
            assert total("errors") == f"{sent.errors:,}"
            assert total("inputTokens") == f"{sent.input:,}"
            assert total("outputTokens") == f"{sent.output:,}"
            assert total("cacheCreationInputTokens") == f"{sent.cache_write:,}"
            assert total("cacheReadInputTokens") == f"{sent.cache_read:,}"
            shown_cost = float(page.get_attribute('[data-total="costUsd"]', "data-value"))
            assert shown_cost == pytest.approx(sent.cost, abs=1e-9)
            assert total("costUsd") == f"${sent.cost:.4f}" if 0.01 <= sent.cost < 1 else total("costUsd").startswith("$")
            assert total("unpricedRequests") == f"{sent.unpriced} unpriced"
            assert re.fullmatch(r"\d+ ms", total("p50Ms")) and re.fullmatch(r"\d+ ms", total("p95Ms"))
            domains = page.inner_text("#top-domains")
            for domain in sent.domains:
                assert domain in domains
            assert "claude-sonnet-4-5 → gpt-test-mini" in page.inner_text("#top-models")

            # --- the chart: one point per bucket (24 hourly buckets), summing to the requests sent
            for series in ("requests", "tokens", "costUsd"):
                assert page.locator(f'svg.chart[data-series="{series}"] circle.point').count() == 24
            values = page.eval_on_selector_all('svg.chart[data-series="requests"] circle.point',
                                               "els => els.map(e => Number(e.getAttribute('data-value')))")
            assert sum(values) == sent.requests
            shot(page, "overview")

            # --- live: a new request shows up without a reload; a hidden tab stops polling
            page.evaluate("window.__marker = 1")
            with client(passthrough, "team-a.example") as c:
                msg = c.messages.create(**ask())
            sent.add_usage("team-a.example", "claude-sonnet-4-5", msg.usage)
            page.wait_for_function("n => document.querySelector('[data-total=\"requests\"]').textContent === n",
                                   arg=f"{sent.requests:,}", timeout=15000)
            assert page.evaluate("window.__marker") == 1  # same document: updated in place
            polled: list[str] = []
            page.on("request", lambda r: polled.append(r.url) if "/dashboard/api/" in r.url else None)
            page.evaluate("""() => {
                Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
                Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
                document.dispatchEvent(new Event('visibilitychange'));
            }""")
            polled.clear()
            page.wait_for_timeout(3500)
            assert polled == [], "polled while the tab was hidden"
            page.evaluate("""() => {
                Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
                Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'visible'});
                document.dispatchEvent(new Event('visibilitychange'));
            }""")
            page.wait_for_timeout(1500)
            assert polled, "polling did not resume when the tab came back"

            # --- requests: a filter narrows the rows; paging reaches the oldest row
            page.goto(f"{base}/dashboard/requests?limit=3")
            assert page.locator("#request-log tbody tr").count() == 3
            page.fill("input[name=domain]", "team-b.example")
            page.click("#filters button[type=submit]")
            rows = page.locator("#request-log tbody tr")
            domains_shown = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())]
            assert domains_shown and set(domains_shown) == {"team-b.example"}
            shot(page, "requests-filtered")
            page.goto(f"{base}/dashboard/requests?limit=3")
            shot(page, "requests")
            seen: list[str] = []
            for _ in range(10):
                cells = page.eval_on_selector_all("#request-log tbody tr td:first-child",
                                                  "els => els.map(e => e.textContent.trim())")
                seen.extend(cells)
                if page.locator("#older").count() == 0:
                    break
                page.click("#older")
            assert page.locator("#end").count() == 1
            assert len(seen) == sent.requests and seen == sorted(seen, reverse=True)
            oldest_row = page.locator("#request-log tbody tr").last
            assert "team-a.example" in oldest_row.inner_text() and "claude-sonnet-4-5" in oldest_row.inner_text()

            # --- the detail page shows everything stored and no secret
            page.goto(f"{base}/dashboard/requests?status_class=4xx")
            page.locator("#request-log tbody tr").first.click()
            page.wait_for_url(re.compile(r".*/dashboard/requests/\d+$"))
            detail = page.inner_text("#request-detail")
            for field in ("request_id", "domain", "model_used", "status", "cost_usd",
                          "cache_creation_1h_input_tokens"):
                assert field in detail
            assert "400" in detail and "invalid_request_error" in detail
            html = page.content()
            for secret in SECRETS:
                assert secret not in html
            shot(page, "request-detail")

            # --- credentials
            page.goto(f"{base}/dashboard/credentials")
            creds = page.inner_text("#credentials")
            assert re.search(r"team-a\.example\s+api_key\s+\S*team-a\.json\s+valid", creds)
            assert "team-c.example" in creds and "not valid" in creds
            assert TEAM_A_FILE_KEY not in page.content()
            shot(page, "credentials")

            # --- log out, a wrong key is refused, the form logs in
            page.click("header .logout button")
            page.wait_for_url(re.compile(r".*/dashboard/login.*"))
            page.fill("#key", "not-the-key")
            page.click(".login button[type=submit]")
            assert "not the dashboard key" in page.inner_text(".error")
            assert not any(c["name"] == "nexus_dashboard" for c in context.cookies())
            shot(page, "login")
            page.fill("#key", DASHBOARD_KEY)
            page.click(".login button[type=submit]")
            page.wait_for_url(f"{base}/dashboard")
            assert page.inner_text('[data-total="requests"]') == f"{sent.requests:,}"

            # --- the JSON endpoints answer 401 without the cookie
            anonymous = browser.new_context()
            for path in ("/dashboard/api/overview", "/dashboard/api/requests", "/dashboard/api/requests/1",
                         "/dashboard/api/credentials"):
                r = anonymous.request.get(base + path)
                assert r.status == 401 and r.json()["error"]["type"] == "authentication_error", path
            anonymous.close()
        finally:
            browser.close()
    assert console_errors == []


def test_session_cookie_is_secure_behind_a_trusted_https_proxy(proxies):
    passthrough, _ = proxies
    status, headers, _ = _get(passthrough, f"/dashboard?token={DASHBOARD_KEY}", {"X-Forwarded-Proto": "https"})
    assert status == 303 and headers["location"] == "/dashboard"
    cookie = headers["set-cookie"]
    assert cookie.startswith("nexus_dashboard=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
    status, headers, _ = _get(passthrough, f"/dashboard?token={DASHBOARD_KEY}")
    assert "Secure" not in headers["set-cookie"]


def test_generated_key_is_shared_by_every_worker_and_printed_once(proxies):
    _, translation = proxies  # two workers, no DASHBOARD_API_KEY
    output = translation.output()
    urls = re.findall(r"http://\S+/dashboard\?token=(\S+)", output)
    assert len(urls) == 1, output
    key = urls[0]
    status, headers, _ = _get(translation, f"/dashboard?token={key}")
    assert status == 303
    session = headers["set-cookie"].split(";", 1)[0]
    # Both workers answer over separate connections; every one accepts the cookie.
    for _ in range(8):
        status, _, body = _get(translation, "/dashboard/api/overview", {"Cookie": session})
        assert status == 200, body
    status, _, _ = _get(translation, "/dashboard/api/overview")
    assert status == 401
    time.sleep(0.3)
    assert translation.output().count(key) == 1  # the banner only: not in the access log
