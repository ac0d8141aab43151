"""OAuth refresh: near expiry, after a 401, failures, single-flight, two processes, and the shared store."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gevent
import gevent.lock
import pytest
import requests
import responses

from app.errors import ProxyError
from app.services.credentials import credential as cmod
from app.services.credentials import refresh as refresh_mod
from app.services.credentials import CredentialManager
from app.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN_URL = "https://console.example.test/v1/oauth/token"
DOMAIN = "team.example.com"
ACCESS = "sk-ant-oat01-original-" + "Aa1" * 20 + "kq9Z"
REFRESH = "sk-ant-ort01-original-" + "Bb2" * 20 + "mw8Y"
NEW_ACCESS = "sk-ant-oat01-renewed-" + "Cc3" * 20 + "pe7X"
NEW_REFRESH = "sk-ant-ort01-renewed-" + "Dd4" * 20 + "rt6W"
SECRETS = (ACCESS, REFRESH, NEW_ACCESS, NEW_REFRESH)
LOGGER = "app.services"


class Clock:
    def __init__(self, t: float | None = None) -> None:
        self.t = time.time() if t is None else t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make_settings(path: str, token_url: str = TOKEN_URL) -> Settings:
    return dataclasses.replace(Settings.from_env({}), domain_credential_mapping={DOMAIN: path},
                               oauth_token_url=token_url)


def oauth_file(path, expires_ms, access=ACCESS, refresh=REFRESH, **extra) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {"type": "oauth", "oauth": {"accessToken": access, "refreshToken": refresh, "expiresAt": expires_ms,
                                       "scopes": ["user:inference", "user:profile"], "isMax": True,
                                       "subscriptionType": "max"}, **extra}
    with open(path, "w") as fh:
        json.dump(data, fh)
    os.chmod(path, 0o600)
    return path


def read(path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def assert_no_secret(text: str) -> None:
    for s in SECRETS:
        assert s not in text
        assert s[-8:] not in text


class RotatingTokens:
    """A token endpoint whose refresh tokens rotate: each works exactly once."""

    def __init__(self, refresh: str = REFRESH, delay: float = 0.0, sleep=time.sleep) -> None:
        self.valid = refresh
        self.delay = delay
        self.sleep = sleep
        self.calls = 0
        self.bodies: list[dict] = []
        self.issued: list[str] = []
        self.lock = threading.Lock()

    def handle(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.calls += 1
            self.bodies.append(body)
            ok = body.get("grant_type") == "refresh_token" and body.get("refresh_token") == self.valid
            if ok:
                n = len(self.issued) + 1
                access = f"sk-ant-oat01-rotated{n}-" + "Ee5" * 20 + "ac5V"
                self.valid = f"sk-ant-ort01-rotated{n}-" + "Ff6" * 20 + "re4U"
                self.issued.append(access)
                answer = (200, {"access_token": access, "refresh_token": self.valid, "expires_in": 3600,
                                "token_type": "Bearer"})
            else:
                answer = (400, {"error": "invalid_grant", "error_description": "Refresh token not found or invalid"})
        if self.delay:
            self.sleep(self.delay)
        return answer

    def responses_callback(self, request):
        status, body = self.handle(json.loads(request.body))
        return status, {"content-type": "application/json"}, json.dumps(body)


@contextlib.contextmanager
def token_server(tokens: RotatingTokens):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            status, answer = tokens.handle(body)
            raw = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/oauth/token"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- refresh near expiry


@responses.activate
def test_refresh_near_expiry_rewrites_the_file_atomically(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock = Clock()
    slack = {"channel": "#team"}
    path = oauth_file(tmp_path / "creds" / "team.json", int(clock() * 1000) + 30_000,
                      client_api_key="team-proxy-key-123456", slack=slack)
    inode = os.stat(path).st_ino
    responses.add(responses.POST, TOKEN_URL, json={"access_token": NEW_ACCESS, "expires_in": 3600})
    m = CredentialManager(make_settings(path), clock=clock)

    cred = m.resolve(DOMAIN, {})

    assert (cred.kind, cred.secret, cred.source, cred.domain) == ("oauth", NEW_ACCESS, "domain", DOMAIN)
    assert len(responses.calls) == 1
    assert json.loads(responses.calls[0].request.body) == {
        "grant_type": "refresh_token", "refresh_token": REFRESH, "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e"}
    assert responses.calls[0].request.headers["content-type"] == "application/json"
    data = read(path)
    assert data == {"type": "oauth", "oauth": {
        "accessToken": NEW_ACCESS, "refreshToken": REFRESH,  # absent from the answer: the old one is kept
        "expiresAt": int(clock() * 1000) + 3_600_000, "scopes": ["user:inference", "user:profile"],
        "isMax": True, "subscriptionType": "max"}, "client_api_key": "team-proxy-key-123456", "slack": slack}
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path).st_ino != inode  # replaced by rename, not rewritten in place
    assert sorted(os.listdir(tmp_path / "creds")) == ["team.json", "team.json.lock"]  # no temp file left
    # the new token is used from now on, without another call
    assert m.resolve(DOMAIN, {}).secret == NEW_ACCESS
    assert len(responses.calls) == 1
    assert m.status()[DOMAIN]["lastRefreshError"] is None
    assert_no_secret(caplog.text + json.dumps(m.status()))


@responses.activate
@pytest.mark.parametrize("expires_in_s, calls", [(120, 0), (61, 0), (59, 1), (-5, 1)])
def test_refresh_only_within_60_seconds_of_expiry(tmp_path, expires_in_s, calls):
    clock = Clock()
    path = oauth_file(tmp_path / "t.json", int(clock() * 1000) + expires_in_s * 1000)
    responses.add(responses.POST, TOKEN_URL,
                  json={"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH, "expires_in": 3600})
    m = CredentialManager(make_settings(path), clock=clock)
    cred = m.resolve(DOMAIN, {})
    assert len(responses.calls) == calls
    assert cred.secret == (NEW_ACCESS if calls else ACCESS)
    if calls:
        assert read(path)["oauth"]["refreshToken"] == NEW_REFRESH


# ---------------------------------------------------------------- refresh after a 401


@responses.activate
def test_refresh_after_unauthorized(tmp_path):
    clock = Clock()
    path = oauth_file(tmp_path / "t.json", int(clock() * 1000) + 3_600_000)
    tokens = RotatingTokens()
    responses.add_callback(responses.POST, TOKEN_URL, callback=tokens.responses_callback)
    m = CredentialManager(make_settings(path), clock=clock)
    old = m.resolve(DOMAIN, {})
    assert old.secret == ACCESS and tokens.calls == 0

    new = m.refresh_after_unauthorized(old)
    assert new is not None and new.secret == tokens.issued[0] and tokens.calls == 1
    headers = {"authorization": "Bearer " + old.secret, "anthropic-beta": "x"}
    new.apply(headers)
    assert headers["authorization"] == "Bearer " + tokens.issued[0]
    assert read(path)["oauth"]["accessToken"] == tokens.issued[0]

    # a request still holding the old token: the token was already replaced, no second call
    assert m.refresh_after_unauthorized(old).secret == tokens.issued[0]
    assert tokens.calls == 1
    # a 401 on the brand-new token: not refreshed again right away (no hammering)...
    assert m.refresh_after_unauthorized(new) is None
    assert tokens.calls == 1
    # ...but later it is
    clock.advance(31)
    assert m.refresh_after_unauthorized(new).secret == tokens.issued[1]
    assert tokens.calls == 2


def test_refresh_after_unauthorized_ignores_api_keys_and_client_tokens(tmp_path):
    m = CredentialManager(make_settings(str(tmp_path / "none.json")))
    assert m.refresh_after_unauthorized(cmod.Credential("api_key", "sk-ant-api03-x", "domain", DOMAIN)) is None
    assert m.refresh_after_unauthorized(cmod.Credential("oauth", ACCESS, "client", None)) is None


# ---------------------------------------------------------------- failures


@responses.activate
def test_failed_refresh_is_401_shows_in_status_and_is_not_hammered(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock = Clock()
    path = oauth_file(tmp_path / "t.json", int(clock() * 1000) - 1000)  # already expired
    # an endpoint that echoes the refresh token in its error: it must not reach the client or the logs
    responses.add(responses.POST, TOKEN_URL, status=400,
                  json={"error": "invalid_grant", "error_description": f"Refresh token {REFRESH} is invalid"})
    m = CredentialManager(make_settings(path), clock=clock)

    with pytest.raises(ProxyError) as exc:
        m.resolve(DOMAIN, {})
    err = exc.value
    assert (err.status, err.error_type) == (401, "authentication_error")
    assert err.message.startswith(f"OAuth token refresh failed for {DOMAIN}: token endpoint answered HTTP 400: "
                                  "invalid_grant")
    status = m.status()[DOMAIN]
    assert status["lastRefreshError"].startswith("token endpoint answered HTTP 400: invalid_grant")
    assert status["expired"] is True and status["valid"] is True
    assert_no_secret(err.message + json.dumps(status) + caplog.text)

    for _ in range(20):
        clock.advance(1)
        with pytest.raises(ProxyError):
            m.resolve(DOMAIN, {})
    assert len(responses.calls) == 1  # at most one attempt per 30 s

    clock.advance(10)  # 30 s since the failure: one more attempt
    with pytest.raises(ProxyError):
        m.resolve(DOMAIN, {})
    assert len(responses.calls) == 2

    responses.replace(responses.POST, TOKEN_URL, json={"access_token": NEW_ACCESS, "expires_in": 3600})
    clock.advance(31)
    assert m.resolve(DOMAIN, {}).secret == NEW_ACCESS
    assert m.status()[DOMAIN]["lastRefreshError"] is None
    assert_no_secret(caplog.text)


@responses.activate
def test_failed_refresh_keeps_serving_a_token_that_has_not_expired_yet(tmp_path):
    clock = Clock()
    path = oauth_file(tmp_path / "t.json", int(clock() * 1000) + 30_000)
    responses.add(responses.POST, TOKEN_URL, status=500, body="oops")
    m = CredentialManager(make_settings(path), clock=clock)
    assert m.resolve(DOMAIN, {}).secret == ACCESS
    assert m.status()[DOMAIN]["lastRefreshError"] == "token endpoint answered HTTP 500"
    assert m.resolve(DOMAIN, {}).secret == ACCESS
    assert len(responses.calls) == 1


@responses.activate
def test_unreachable_token_endpoint(tmp_path):
    clock = Clock()
    path = oauth_file(tmp_path / "t.json", int(clock() * 1000) - 1)
    responses.add(responses.POST, TOKEN_URL, body=requests.ConnectionError("connection refused"))
    m = CredentialManager(make_settings(path), clock=clock)
    with pytest.raises(ProxyError) as exc:
        m.resolve(DOMAIN, {})
    assert exc.value.message == f"OAuth token refresh failed for {DOMAIN}: token endpoint unreachable (ConnectionError)"


@responses.activate
def test_replacing_the_file_clears_a_failed_refresh_at_once(tmp_path):
    clock = Clock()
    path = oauth_file(tmp_path / "t.json", int(clock() * 1000) - 1)
    responses.add(responses.POST, TOKEN_URL, status=400, json={"error": "invalid_grant"})
    m = CredentialManager(make_settings(path), clock=clock)
    with pytest.raises(ProxyError):
        m.resolve(DOMAIN, {})
    oauth_file(path, int(clock() * 1000) + 3_600_000, access=NEW_ACCESS, refresh=NEW_REFRESH)  # oauth-login again
    clock.advance(1.1)
    assert m.resolve(DOMAIN, {}).secret == NEW_ACCESS
    assert m.status()[DOMAIN]["lastRefreshError"] is None
    assert len(responses.calls) == 1


@responses.activate
def test_write_back_failure_keeps_the_new_token_in_memory(tmp_path, monkeypatch, caplog):
    clock = Clock()
    path = oauth_file(tmp_path / "t.json", int(clock() * 1000) - 1)
    responses.add(responses.POST, TOKEN_URL, json={"access_token": NEW_ACCESS, "expires_in": 3600})

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(refresh_mod.oauth_mod, "atomic_write_json", read_only)
    m = CredentialManager(make_settings(path), clock=clock)
    assert m.resolve(DOMAIN, {}).secret == NEW_ACCESS
    clock.advance(5)
    assert m.resolve(DOMAIN, {}).secret == NEW_ACCESS  # the unchanged file does not undo it
    assert "could not be written back" in caplog.text
    assert len(responses.calls) == 1


# ---------------------------------------------------------------- single-flight in one worker


@responses.activate
@pytest.mark.parametrize("trigger", ["expiry", "401"])
def test_single_flight_100_greenlets(tmp_path, trigger):
    clock = Clock()
    expires = int(clock() * 1000) + (-1000 if trigger == "expiry" else 3_600_000)
    path = oauth_file(tmp_path / "t.json", expires)
    started = []
    seen_at_call = []

    def slow_endpoint(request):
        seen_at_call.append(len(started))
        gevent.sleep(0.05)  # the other greenlets run meanwhile and pile up behind the refresh
        seen_at_call.append(len(started))
        return 200, {}, json.dumps({"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH, "expires_in": 3600})

    responses.add_callback(responses.POST, TOKEN_URL, callback=slow_endpoint)
    m = CredentialManager(make_settings(path), clock=clock)
    old = cmod.Credential("oauth", ACCESS, "domain", DOMAIN)

    def request():
        started.append(1)
        if trigger == "expiry":
            return m.resolve(DOMAIN, {}).secret
        return m.refresh_after_unauthorized(old).secret

    jobs = [gevent.spawn(request) for _ in range(100)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert [j.value for j in jobs] == [NEW_ACCESS] * 100
    assert len(responses.calls) == 1
    assert seen_at_call[-1] == 100  # all 100 were in flight while the one refresh ran


@responses.activate
def test_token_still_valid_during_refresh_is_used_without_waiting(tmp_path):
    clock = Clock()
    path = oauth_file(tmp_path / "t.json", int(clock() * 1000) + 30_000)

    def slow_endpoint(request):
        gevent.sleep(0.05)
        return 200, {}, json.dumps({"access_token": NEW_ACCESS, "expires_in": 3600})

    responses.add_callback(responses.POST, TOKEN_URL, callback=slow_endpoint)
    m = CredentialManager(make_settings(path), clock=clock)
    jobs = [gevent.spawn(lambda: m.resolve(DOMAIN, {}).secret) for _ in range(50)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert len(responses.calls) == 1
    # the first request refreshes; the others go on with the token that is still valid for 30 s
    assert [j.value for j in jobs] == [NEW_ACCESS] + [ACCESS] * 49
    assert m.resolve(DOMAIN, {}).secret == NEW_ACCESS


# ---------------------------------------------------------------- two worker processes


CHILD = r"""
import gevent.monkey
gevent.monkey.patch_all()
import dataclasses, json, sys
sys.path.insert(0, sys.argv[3])
import gevent
from app.settings import Settings
from app.services.credentials import CredentialManager

settings = dataclasses.replace(Settings.from_env({}), domain_credential_mapping={"team.example.com": sys.argv[1]},
                               oauth_token_url=sys.argv[2])
manager = CredentialManager(settings)
manager.validate_all()
print("ready", flush=True)
sys.stdin.readline()

def one():
    try:
        return manager.resolve("team.example.com", {}).secret
    except Exception as exc:
        return "error: " + str(exc)

jobs = [gevent.spawn(one) for _ in range(50)]
gevent.joinall(jobs)
print(json.dumps(sorted(set(j.value for j in jobs))), flush=True)
"""


@pytest.mark.timeout(60)
def test_two_processes_refresh_once_against_a_rotating_token_server(tmp_path):
    # expired, so every greenlet of both workers must wait for the one refresh
    path = oauth_file(tmp_path / "creds" / "team.json", int(time.time() * 1000) - 1000)
    tokens = RotatingTokens(delay=0.3)
    with token_server(tokens) as url:
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, path, url, ROOT], cwd=str(tmp_path),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            for p in procs:
                assert p.stdout.readline().strip() == "ready"
            for p in procs:  # release both workers at once, 50 greenlets each
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [json.loads(p.stdout.readline()) for p in procs]
        finally:
            for p in procs:
                p.stdin.close()
                p.wait(timeout=30)
    assert tokens.calls == 1, tokens.bodies
    assert results == [[tokens.issued[0]], [tokens.issued[0]]]
    data = read(path)
    assert data["oauth"]["accessToken"] == tokens.issued[0]
    assert data["oauth"]["refreshToken"] == tokens.valid  # the rotated one, so the next refresh works
    assert os.stat(path).st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- shared store (several hosts)


class FakeStore:
    """The storage interface's credential part, in memory; its lock stands for a PostgreSQL advisory lock."""

    supports_credentials = True

    def __init__(self) -> None:
        self.rows: dict[str, tuple[dict, float]] = {}
        self.locks: dict[str, gevent.lock.Semaphore] = {}
        self.saves: list[str] = []
        self.down = False

    def _check(self):
        if self.down:
            raise ConnectionError("database is down")

    def load_credential(self, key):
        self._check()
        row = self.rows.get(key)
        return (json.loads(json.dumps(row[0])), row[1]) if row else None

    def save_credential(self, key, data):
        self._check()
        self.rows[key] = (json.loads(json.dumps(data)), time.time())
        self.saves.append(key)

    @contextlib.contextmanager
    def credential_lock(self, key):
        self._check()
        lock = self.locks.setdefault(key, gevent.lock.Semaphore())
        with lock:
            yield


def host_file(tmp_path, host: str, expires_ms: int, **kw) -> str:
    """The same credential file as deployed on one host (its own working directory)."""
    return oauth_file(tmp_path / host / "credentials" / "team.json", expires_ms, **kw)


@pytest.fixture
def fleet():
    tokens = RotatingTokens()
    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, TOKEN_URL, callback=tokens.responses_callback)
        yield tokens, FakeStore()


def test_store_refresh_once_then_every_host_uses_the_stored_copy(tmp_path, fleet, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    tokens, store = fleet
    soon = int(time.time() * 1000) + 20_000
    a = CredentialManager(make_settings(host_file(tmp_path, "a", soon)), store=store)
    b = CredentialManager(make_settings(host_file(tmp_path, "b", soon)), store=store)
    a.validate_all()
    b.validate_all()

    assert a.resolve(DOMAIN, {}).secret == tokens.issued[0]
    assert tokens.calls == 1
    stored, _ = store.rows[DOMAIN]
    assert stored["oauth"]["accessToken"] == tokens.issued[0]
    assert REFRESH not in json.dumps(stored)  # only a one-way fingerprint of the rotated token

    # host b's file still holds the seed: under the lock it finds the stored copy and does not refresh
    assert b.resolve(DOMAIN, {}).secret == tokens.issued[0]
    assert tokens.calls == 1
    assert b.status()[DOMAIN]["source"] == "store"

    # host b restarts: the stored token is used, not the file's stale one
    b2 = CredentialManager(make_settings(str(tmp_path / "b" / "credentials" / "team.json")), store=store)
    assert b2.validate_all() == []
    assert b2.resolve(DOMAIN, {}).secret == tokens.issued[0]
    assert tokens.calls == 1
    assert_no_secret(caplog.text)


def test_store_stale_seed_with_a_newer_mtime_does_not_win(tmp_path, fleet):
    tokens, store = fleet
    soon = int(time.time() * 1000) + 20_000
    CredentialManager(make_settings(host_file(tmp_path, "a", soon)), store=store).resolve(DOMAIN, {})
    # a redeploy that checks the seed file out again gives it a fresh mtime
    seed = host_file(tmp_path, "c", soon)
    os.utime(seed, (time.time() + 60, time.time() + 60))
    c = CredentialManager(make_settings(seed), store=store)
    assert c.resolve(DOMAIN, {}).secret == tokens.issued[0]
    assert tokens.calls == 1


def test_store_operator_replaced_file_wins_and_is_shared(tmp_path, fleet, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    tokens, store = fleet
    soon = int(time.time() * 1000) + 20_000
    CredentialManager(make_settings(host_file(tmp_path, "a", soon)), store=store).resolve(DOMAIN, {})
    later = int(time.time() * 1000) + 3_600_000
    replaced = host_file(tmp_path, "b", later, access=NEW_ACCESS, refresh=NEW_REFRESH)  # a fresh oauth-login
    os.utime(replaced, (time.time() + 5, time.time() + 5))
    b = CredentialManager(make_settings(replaced), store=store)
    assert b.resolve(DOMAIN, {}).secret == NEW_ACCESS
    assert f"credential file for {DOMAIN} is newer than the stored copy; using the file" in caplog.text
    assert store.rows[DOMAIN][0]["oauth"]["accessToken"] == NEW_ACCESS
    # another host picks it up when it next looks at the store (here: after a 401 on its old token)
    a2 = CredentialManager(make_settings(str(tmp_path / "a" / "credentials" / "team.json")), store=store)
    old = a2.resolve(DOMAIN, {})
    assert old.secret == NEW_ACCESS
    assert tokens.calls == 1


def test_store_401_on_another_hosts_rotated_token_adopts_the_stored_copy(tmp_path, fleet):
    tokens, store = fleet
    later = int(time.time() * 1000) + 3_600_000
    a = CredentialManager(make_settings(host_file(tmp_path, "a", later)), store=store)
    b = CredentialManager(make_settings(host_file(tmp_path, "b", later)), store=store)
    a_old, b_old = a.resolve(DOMAIN, {}), b.resolve(DOMAIN, {})
    assert a.refresh_after_unauthorized(a_old).secret == tokens.issued[0]
    assert b.refresh_after_unauthorized(b_old).secret == tokens.issued[0]
    assert tokens.calls == 1


def test_store_concurrent_hosts_refresh_once(tmp_path):
    soon = int(time.time() * 1000) - 1
    store = FakeStore()
    tokens = RotatingTokens(delay=0.05, sleep=gevent.sleep)
    managers = [CredentialManager(make_settings(host_file(tmp_path, h, soon)), store=store) for h in "abc"]
    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, TOKEN_URL, callback=tokens.responses_callback)
        jobs = [gevent.spawn(lambda m=m: m.resolve(DOMAIN, {}).secret) for m in managers for _ in range(20)]
        gevent.joinall(jobs, timeout=30, raise_error=True)
    assert tokens.calls == 1
    assert {j.value for j in jobs} == {tokens.issued[0]}


def test_store_down_falls_back_to_the_file_lock(tmp_path, fleet, caplog):
    tokens, store = fleet
    store.down = True
    m = CredentialManager(make_settings(host_file(tmp_path, "a", int(time.time() * 1000) - 1)), store=store)
    assert m.validate_all() == []
    assert m.resolve(DOMAIN, {}).secret == tokens.issued[0]
    assert read(str(tmp_path / "a" / "credentials" / "team.json"))["oauth"]["accessToken"] == tokens.issued[0]
    assert "Shared credential store unavailable" in caplog.text
    assert_no_secret(caplog.text)


def test_store_is_not_used_for_api_keys_or_without_support(tmp_path, fleet):
    tokens, store = fleet
    path = str(tmp_path / "k.json")
    with open(path, "w") as fh:
        json.dump({"type": "api_key", "api_key": "sk-ant-api03-" + "k" * 40}, fh)
    CredentialManager(make_settings(path), store=store).resolve(DOMAIN, {})
    assert store.rows == {} and store.saves == []
    store.supports_credentials = False
    m = CredentialManager(make_settings(host_file(tmp_path, "z", int(time.time() * 1000) - 1)), store=store)
    assert m.resolve(DOMAIN, {}).secret == tokens.issued[0]
    assert store.saves == []


def test_a_refresh_made_while_the_store_was_down_reaches_it_when_it_is_back(tmp_path):
    """Otherwise the store keeps a refresh token already rotated away, and every other host fails."""
    store, tokens = FakeStore(), RotatingTokens()
    later = int(time.time() * 1000) + 3_600_000
    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, TOKEN_URL, callback=tokens.responses_callback)
        a = CredentialManager(make_settings(host_file(tmp_path, "a", later)), store=store)
        b = CredentialManager(make_settings(host_file(tmp_path, "b", later)), store=store)
        a.validate_all()
        b.validate_all()
        first = a.refresh_after_unauthorized(a.resolve(DOMAIN, {}))
        assert b.refresh_after_unauthorized(b.resolve(DOMAIN, {})).secret == first.secret
        store.down = True
        a.files[0].refreshed_at -= 60  # past the guard against refreshing twice in 30 s
        second = a.refresh_after_unauthorized(a.resolve(DOMAIN, {}))  # falls back to the file lock
        assert second is not None and tokens.calls == 2
        store.down = False
        time.sleep(1.1)  # files are re-checked at most once a second
        a.resolve(DOMAIN, {})
        assert store.rows[DOMAIN][0]["oauth"]["accessToken"] == second.secret
        b.files[0].refreshed_at -= 60
        renewed = b.refresh_after_unauthorized(b.resolve(DOMAIN, {}))
        assert renewed is not None and renewed.secret == second.secret
        assert tokens.calls == 2  # b took the stored copy; nothing refreshed with a rotated-away token
