"""The dashboard's own access: one key (DASHBOARD_API_KEY, or one made at start-up), a signed session
cookie, CSRF tokens for forms, and slowing down repeated wrong keys.

Kept apart from the proxy's client keys (PROXY_API_KEYS): the dashboard is for operators in a browser.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from typing import Callable, Mapping

from itsdangerous import BadSignature, URLSafeTimedSerializer

# The gunicorn master makes the key once, before forking, and passes it to its workers here, so every
# worker accepts the same key and the same session cookies.
GENERATED_KEY_ENV = "NEXUS_DASHBOARD_GENERATED_KEY"

SESSION_COOKIE = "nexus_dashboard"
LOGIN_CSRF_COOKIE = "nexus_dashboard_login"
SESSION_MAX_AGE = 12 * 3600

# Wrong keys: the first few are answered at once (typos), then each waits longer, up to a cap.
FREE_FAILURES = 3
FAILURE_BASE_DELAY = 0.5
FAILURE_MAX_DELAY = 8.0
FAILURE_MEMORY = 900.0  # seconds after which a client's failures are forgotten
_MAX_TRACKED = 10_000


def dashboard_key(settings, environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """(key, generated). Without DASHBOARD_API_KEY, a random key made once per server and shared by its workers."""
    configured = getattr(settings, "dashboard_api_key", None)
    if configured:
        return configured, False
    env = os.environ if environ is None else environ
    key = env.get(GENERATED_KEY_ENV)
    if not key:
        key = secrets.token_urlsafe(32)
        if isinstance(env, dict) or env is os.environ:
            env[GENERATED_KEY_ENV] = key  # type: ignore[index]
    return key, True


def dashboard_banner_lines(settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """The start-up banner's dashboard line. The full login URL appears here and nowhere else, and only
    for a key the server made itself (an operator's own key is theirs to know)."""
    key, generated = dashboard_key(settings, environ)
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    base = f"http://{host}:{settings.port}/dashboard"
    if generated:
        return [f"Dashboard: {base}?token={key}  (a key made at start-up; set DASHBOARD_API_KEY to choose one)"]
    return [f"Dashboard: {base}  (log in with DASHBOARD_API_KEY)"]


class FailureThrottle:
    """Per-client count of wrong keys; `delay()` is how long the next answer waits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, tuple[int, float]] = {}

    def delay(self, client: str) -> float:
        count, last = self._seen.get(client, (0, 0.0))
        if count < FREE_FAILURES or self._clock() - last > FAILURE_MEMORY:
            return 0.0
        return min(FAILURE_MAX_DELAY, FAILURE_BASE_DELAY * 2 ** (count - FREE_FAILURES))

    def failed(self, client: str) -> None:
        now = self._clock()
        count, last = self._seen.get(client, (0, 0.0))
        if now - last > FAILURE_MEMORY:
            count = 0
        if len(self._seen) >= _MAX_TRACKED and client not in self._seen:
            self._seen.clear()  # a flood of addresses: start over rather than grow without bound
        self._seen[client] = (count + 1, now)

    def succeeded(self, client: str) -> None:
        self._seen.pop(client, None)


class DashboardAuth:
    def __init__(self, key: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._key = key.encode()
        # Derived from the key: every worker signs alike, and a new key ends every old session.
        self._secret = hmac.new(self._key, b"nexus-dashboard-session-v1", hashlib.sha256).digest()
        self._serializer = URLSafeTimedSerializer(self._secret, salt="nexus-dashboard")
        self.throttle = FailureThrottle(clock)

    def key_matches(self, given: str | None) -> bool:
        if not given:
            return False
        return hmac.compare_digest(given.strip().encode(), self._key)

    # --- the session cookie -----------------------------------------------------------------
    def new_session(self) -> str:
        return self._serializer.dumps({"n": secrets.token_hex(16)})

    def session(self, request) -> dict | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = self._serializer.loads(raw, max_age=SESSION_MAX_AGE)
        except (BadSignature, ValueError, TypeError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("n"), str) else None

    def has_session(self, request) -> bool:
        return self.session(request) is not None

    @staticmethod
    def cookie_options(request) -> dict:
        """HttpOnly, SameSite=Strict, and Secure when the request came over HTTPS (gunicorn already turns a
        trusted proxy's X-Forwarded-Proto into the request's scheme: FORWARDED_ALLOW_IPS)."""
        return {"httponly": True, "samesite": "Strict", "secure": request.is_secure, "path": "/"}

    # --- CSRF -------------------------------------------------------------------------------
    def csrf_token(self, session: dict) -> str:
        return hmac.new(self._secret, b"csrf:" + session["n"].encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: dict | None, given: str | None) -> bool:
        if session is None or not given:
            return False
        return hmac.compare_digest(self.csrf_token(session).encode(), given.encode())

    @staticmethod
    def new_login_nonce() -> str:
        """The login form's CSRF token: the same random value in a cookie and in the form (no session yet)."""
        return secrets.token_urlsafe(24)

    @staticmethod
    def login_nonce_ok(request, given: str | None) -> bool:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE)
        return bool(expected and given) and hmac.compare_digest(expected.encode(), given.encode())
