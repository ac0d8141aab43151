"""`claude-nexus-proxy oauth-login FILE [--create-api-key] [--no-browser] [--code CODE] [--timeout S]`.

Creates an OAuth credential file for passthrough mode with the PKCE (S256) authorization-code flow:
prints the authorize URL (and opens a browser when there is one), then takes the code from whichever
comes first: the browser's redirect to http://localhost:54545/callback, or a code pasted on stdin
(claude.ai shows it as `code#state`). The PKCE verifier and state wait in `FILE.login-pending` (0600)
so that a headless login can also be finished later with `--code`. Prints no secret.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import queue
import secrets
import sys
import threading
import time
import webbrowser
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable, TextIO
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from .services import oauth

AUTHORIZE_URL = "https://claude.ai/oauth/authorize"
REDIRECT_URI = "http://localhost:54545/callback"
CALLBACK_HOST = "127.0.0.1"
CALLBACK_PORT = 54545
SCOPES = "org:create_api_key user:profile user:inference"
PENDING_SUFFIX = ".login-pending"
PENDING_MAX_AGE = 15 * 60  # authorization codes and their verifier are short-lived
DEFAULT_TIMEOUT = 600.0


class LoginError(Exception):
    """A login failure with a message fit for the terminal (no secrets)."""


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge): 86 URL-safe characters and base64url(sha256(verifier)) unpadded."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_url(client_id: str, challenge: str, state: str, base: str = AUTHORIZE_URL) -> str:
    params = {
        "code": "true",
        "client_id": client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": SCOPES,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": state,
    }
    return base + "?" + urlencode(params)


def parse_pasted(text: str, state: str) -> str:
    """The code from a pasted `code`, `code#state` or full callback URL; LoginError on a state mismatch."""
    text = text.strip()
    if "?" in text and "code=" in text:
        query = parse_qs(urlsplit(text).query)
        code, got_state = query.get("code", [""])[0], query.get("state", [""])[0]
    else:
        code, _, got_state = text.partition("#")
    code = code.strip()
    if not code:
        raise LoginError("no authorization code in what was pasted")
    if got_state and not hmac.compare_digest(got_state.strip().encode(), state.encode()):
        raise LoginError("state mismatch: that code belongs to another login attempt")
    return code


def apikey_path(path: str) -> str:
    """`credentials/team2.json` -> `credentials/team2-apikey.json`."""
    root, ext = os.path.splitext(path)
    return f"{root}-apikey{ext or '.json'}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="claude-nexus-proxy oauth-login",
        description="Log in to Claude with OAuth and write a credential file for DOMAIN_CREDENTIAL_MAPPING.")
    p.add_argument("file", help="credential file to write (e.g. credentials/team2.json); written with mode 0600")
    p.add_argument("--create-api-key", action="store_true",
                   help="also create an API key with the new token and write it to FILE-apikey.json")
    p.add_argument("--no-browser", action="store_true", help="only print the URL; do not open a browser")
    p.add_argument("--code", metavar="CODE",
                   help="finish a login started earlier with the code shown after authorising (code#state)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"how long to wait for the code (default {DEFAULT_TIMEOUT:g})")
    return p


def _endpoints(settings) -> dict:
    env = os.environ
    if settings is None:
        try:
            from .settings import Settings
            settings = Settings.from_env()
        except Exception:  # a bad unrelated variable must not block a login
            settings = None
    return {
        "token": getattr(settings, "oauth_token_url", None) or env.get("OAUTH_TOKEN_URL") or oauth.DEFAULT_TOKEN_URL,
        "client_id": getattr(settings, "oauth_client_id", None) or env.get("OAUTH_CLIENT_ID") or oauth.DEFAULT_CLIENT_ID,
        "authorize": env.get("OAUTH_AUTHORIZE_URL") or AUTHORIZE_URL,
        "create_api_key": env.get("OAUTH_CREATE_API_KEY_URL") or oauth.CREATE_API_KEY_URL,
    }


def _browser_available() -> bool:
    return sys.platform == "darwin" or os.name == "nt" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _callback_handler(state: str, results: queue.Queue):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urlsplit(self.path)
            if url.path != "/callback":
                return self._reply(404, "Not found.")
            query = parse_qs(url.query)
            if "error" in query:
                reason = " ".join(query["error"][0].split())[:100]
                results.put(("error", f"authorization was refused ({reason})"))
                return self._reply(400, "Authorization was refused. You can close this tab.")
            code, got_state = query.get("code", [""])[0], query.get("state", [""])[0]
            if not code or not hmac.compare_digest(got_state.encode(), state.encode()):
                return self._reply(400, "This login link is not the one the command is waiting for (state "
                                        "mismatch). Start again from the URL it printed.")
            self._reply(200, "Login complete. You can close this tab and return to the terminal.")
            results.put(("code", code))  # after the reply: the command shuts this server down next

        def _reply(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass  # the request line carries the authorization code

    return Handler


def _read_pastes(stdin: TextIO, results: queue.Queue) -> None:
    try:
        for line in iter(stdin.readline, ""):
            if line.strip():
                results.put(("paste", line))
    except (OSError, ValueError):
        pass


def _wait_for_code(url: str, state: str, args, out: TextIO, stdin: TextIO, open_browser, port: int) -> str:
    results: queue.Queue = queue.Queue()
    server = None
    try:
        server = HTTPServer((CALLBACK_HOST, port), _callback_handler(state, results))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    except OSError as exc:
        print(f"(The local callback port {port} is unavailable: {exc.strerror}; paste the code instead.)", file=out)
    try:
        print("Open this URL in a browser and authorise access:\n\n  " + url + "\n", file=out)
        if not args.no_browser:
            opener = open_browser or (webbrowser.open if _browser_available() else None)
            if opener is not None:
                try:
                    opener(url)
                except Exception:
                    pass
        if server is not None:
            print("Waiting for the browser to return to " + REDIRECT_URI + " ...", file=out)
        print("On a headless server, paste the code the page shows (code#state) here and press Enter:", file=out)
        out.flush()
        threading.Thread(target=_read_pastes, args=(stdin, results), daemon=True).start()
        deadline = time.monotonic() + args.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoginError(f"no authorization code within {args.timeout:g} s; finish later with "
                                 f"--code CODE (within {PENDING_MAX_AGE // 60} minutes)")
            try:
                kind, value = results.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if kind == "code":
                return value
            if kind == "error":
                raise LoginError(value)
            try:
                return parse_pasted(value, state)
            except LoginError as exc:
                print(f"{exc}; paste the code again:", file=out)
                out.flush()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def _read_pending(path: str, now: float) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            pending = json.load(fh)
    except (OSError, ValueError):
        raise LoginError("no login is waiting for a code: run oauth-login without --code first") from None
    if not isinstance(pending, dict) or not all(isinstance(pending.get(k), str) for k in ("verifier", "state")):
        raise LoginError("the pending login is unreadable: run oauth-login without --code again")
    if now - float(pending.get("created", 0)) > PENDING_MAX_AGE:
        raise LoginError("the pending login has expired: run oauth-login without --code again")
    return pending


def _write_credential(path: str, block: dict) -> None:
    """Write the product's OAuth file format, keeping other fields (client_api_key, slack) of an existing file."""
    existing: dict = {}
    try:
        with open(path, encoding="utf-8") as fh:
            loaded = json.load(fh)
        if isinstance(loaded, dict):
            existing = loaded
    except (OSError, ValueError):
        pass
    data = {"type": "oauth", "oauth": block}
    data.update({k: v for k, v in existing.items() if k not in ("type", "oauth", "api_key")})
    oauth.atomic_write_json(path, data)


def _iso(ms: int | None) -> str:
    if ms is None:
        return "unknown"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def main(argv: list[str], *, settings=None, stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, open_browser: Callable[[str], object] | None = None,
         session: requests.Session | None = None, callback_port: int = CALLBACK_PORT,
         clock: Callable[[], float] = time.time) -> int:
    """Run the login. `argv` is what follows `oauth-login`. Returns the exit status."""
    if argv and argv[0] == "oauth-login":
        argv = argv[1:]
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error (argparse already printed it)
        return int(exc.code or 0)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    stdin = stdin if stdin is not None else sys.stdin
    ends = _endpoints(settings)
    session = session or requests.Session()
    path = os.path.abspath(os.path.expanduser(args.file))
    pending_path = path + PENDING_SUFFIX
    try:
        if args.code:
            pending = _read_pending(pending_path, clock())
            verifier, state = pending["verifier"], pending["state"]
            code = parse_pasted(args.code, state)
        else:
            verifier, challenge = pkce_pair()
            state = secrets.token_urlsafe(32)
            oauth.atomic_write_json(pending_path, {"verifier": verifier, "state": state, "created": clock()})
            url = authorize_url(ends["client_id"], challenge, state, ends["authorize"])
            code = _wait_for_code(url, state, args, out, stdin, open_browser, callback_port)
        payload = oauth.exchange_code(session, ends["token"], ends["client_id"], code=code, verifier=verifier,
                                      state=state, redirect_uri=REDIRECT_URI)
        block = oauth.oauth_from_token_response(payload, int(clock() * 1000), {"isMax": False})
        _write_credential(path, block)
        _remove(pending_path)
        print(f"Saved the OAuth credential to {args.file} (mode 0600; the access token expires "
              f"{_iso(block.get('expiresAt'))} and is refreshed automatically).", file=out)
        if args.create_api_key:
            key = oauth.create_api_key(session, ends["create_api_key"], block["accessToken"])
            key_file = apikey_path(args.file)
            oauth.atomic_write_json(apikey_path(path), {"type": "api_key", "api_key": key})
            print(f"Saved an API key credential to {key_file} (mode 0600).", file=out)
        print('Map it with DOMAIN_CREDENTIAL_MAPPING=\'{"your.host.example": "' + args.file + '"}\'', file=out)
        return 0
    except (LoginError, oauth.OAuthError) as exc:
        print(f"oauth-login: {exc}", file=err)
        return 1
    except OSError as exc:
        print(f"oauth-login: cannot write the credential file: {exc.strerror or type(exc).__name__}", file=err)
        return 1
    except KeyboardInterrupt:
        print(f"\noauth-login: interrupted; finish later with --code CODE (within {PENDING_MAX_AGE // 60} minutes)",
              file=err)
        return 130


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
