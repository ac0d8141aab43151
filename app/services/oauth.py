"""OAuth plumbing shared by the credential manager and the login command.

The token endpoint (refresh and code exchange), the API-key creation call, the cross-process file
lock and the atomic 0600 write. No secret ever reaches an exception message or a log line: every
`OAuthError` text is built from status codes, error codes and exception class names only.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Iterator

import requests

from app.masking import STARS, mask_text
from app.services.headers import token_endpoint_headers

log = logging.getLogger(__name__)

DEFAULT_TOKEN_URL = "https://console.anthropic.com/v1/oauth/token"
DEFAULT_CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
CREATE_API_KEY_URL = "https://api.anthropic.com/api/oauth/claude_cli/create_api_key"
DEFAULT_SCOPES = ("org:create_api_key", "user:profile", "user:inference")
TIMEOUT = (5.0, 10.0)  # (connect, read) seconds for every OAuth call
LOCK_TIMEOUT = 30.0  # longest wait for another process's refresh (it is bounded by TIMEOUT itself)


class OAuthError(Exception):
    """A refresh, exchange or key-creation failure. `str(exc)` is safe to log and to show a client."""


# ---------------------------------------------------------------- token endpoint


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Endpoint-provided text, cut short, with the secrets we sent (and anything key-like) removed."""
    for s in secrets:
        if s:
            text = text.replace(s, STARS)
    text = mask_text(text)
    text = " ".join(text.split())
    return text[:200]


def _error_detail(resp: requests.Response, secrets: tuple[str, ...]) -> str:
    try:
        data = resp.json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    err = data.get("error")
    parts = []
    if isinstance(err, dict):  # Anthropic API shape
        parts = [err.get("type"), err.get("message")]
    else:  # RFC 6749 shape
        parts = [err, data.get("error_description")]
    text = " - ".join(p for p in parts if isinstance(p, str) and p)
    return _scrub(text, secrets)


def post_json(session: requests.Session, url: str, body: dict, *, what: str,
              bearer: str | None = None, secrets: tuple[str, ...] = ()) -> dict:
    """POST `body` as JSON and return the JSON object answered; `OAuthError` with a safe reason otherwise."""
    headers = token_endpoint_headers(bearer)
    if bearer:
        secrets = secrets + (bearer,)
    try:
        resp = session.post(url, json=body, headers=headers, timeout=TIMEOUT)
    except requests.Timeout:
        raise OAuthError(f"{what} timed out") from None
    except requests.RequestException as exc:
        raise OAuthError(f"{what} unreachable ({type(exc).__name__})") from None
    if resp.status_code != 200:
        detail = _error_detail(resp, secrets)
        raise OAuthError(f"{what} answered HTTP {resp.status_code}" + (f": {detail}" if detail else ""))
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise OAuthError(f"{what} answered HTTP 200 with a body that is not a JSON object")
    return data


def oauth_from_token_response(payload: dict, now_ms: int, previous: dict | None = None) -> dict:
    """The credential file's `oauth` block from a token-endpoint answer (pure).

    A missing `refresh_token` keeps the previous one; other fields of the previous block are kept.
    """
    previous = previous or {}
    access = payload.get("access_token")
    if not isinstance(access, str) or not access:
        raise OAuthError("token endpoint answer has no access_token")
    refresh = payload.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        refresh = previous.get("refreshToken")
    expires_in = payload.get("expires_in")
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool):
        expires_at = now_ms + int(expires_in * 1000)
    else:
        expires_at = None  # unknown: the 401 path will refresh it
    scope = payload.get("scope")
    if isinstance(scope, str) and scope.strip():
        scopes = scope.split()
    else:
        scopes = previous.get("scopes") or list(DEFAULT_SCOPES)
    block = dict(previous)
    block.update({
        "accessToken": access,
        "refreshToken": refresh,
        "expiresAt": expires_at,
        "scopes": scopes,
        "isMax": bool(previous.get("isMax", False)),
    })
    return block


def refresh_oauth(session: requests.Session, token_url: str, client_id: str, oauth: dict,
                  now_ms: int | None = None) -> dict:
    """One refresh_token grant; returns the new `oauth` block (old fields kept)."""
    refresh_token = oauth.get("refreshToken")
    if not isinstance(refresh_token, str) or not refresh_token:
        raise OAuthError("the credential has no refreshToken")
    body = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    payload = post_json(session, token_url, body, what="token endpoint", secrets=(refresh_token,))
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    return oauth_from_token_response(payload, now_ms, oauth)


def exchange_code(session: requests.Session, token_url: str, client_id: str, *, code: str, verifier: str,
                  state: str, redirect_uri: str) -> dict:
    """The authorization_code grant of the login command; returns the raw token answer."""
    body = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": client_id,
        "code_verifier": verifier,
        "state": state,
    }
    return post_json(session, token_url, body, what="token endpoint", secrets=(code, verifier))


def create_api_key(session: requests.Session, url: str, access_token: str) -> str:
    """Ask the API-key creation endpoint for a key with an OAuth access token; returns the key."""
    data = post_json(session, url, {}, what="API-key creation endpoint", bearer=access_token)
    key = data.get("raw_key") or data.get("api_key")
    if not isinstance(key, str) or not key:
        raise OAuthError("API-key creation endpoint answer has no raw_key")
    return key


def refresh_token_hash(token: str | None) -> str | None:
    """A one-way fingerprint of a refresh token: lets the shared store recognise a stale seed file."""
    if not token:
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:32]


# ---------------------------------------------------------------- files


def atomic_write_json(path: str, data: dict) -> os.stat_result:
    """Write `data` to `path` atomically with mode 0600 (temp file in the same folder, fsync, rename).

    A symlinked path is written through to its target. Parent folders are created (0700).
    Returns the new file's stat.
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    payload = (json.dumps(data, indent=2) + "\n").encode()
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o600)  # mkstemp already uses 0600; say it so a changed default cannot widen it
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return os.stat(target)


def lock_path_for(path: str) -> str:
    """`<file>.lock` beside the credential file; a temp-dir file when that folder is not writable."""
    target = os.path.realpath(path)
    folder = os.path.dirname(target) or "."
    if os.access(folder, os.W_OK):
        return target + ".lock"
    digest = hashlib.sha256(target.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"claude-nexus-proxy-{digest}.lock")


def _sleep(seconds: float) -> None:
    # gevent.sleep yields to other greenlets (a blocking flock would freeze the whole worker)
    try:
        import gevent
        gevent.sleep(seconds)
    except ImportError:  # pragma: no cover - gevent is a dependency
        time.sleep(seconds)


@contextlib.contextmanager
def file_lock(path: str, timeout: float = LOCK_TIMEOUT, poll: float = 0.02) -> Iterator[None]:
    """An exclusive `flock` on `lock_path_for(path)`, polled without blocking the gevent hub."""
    lock_path = lock_path_for(path)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise OAuthError("timed out waiting for another process's refresh (credential file lock)") from None
                _sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
