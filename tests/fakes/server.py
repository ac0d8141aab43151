"""Process helpers for end-to-end tests: the fake upstream and the proxy, each in its own process.

- `FakeUpstream`: runs `python -m tests.fakes.upstream` on a free port and drives its control API.
- `ProxyServer`: runs the proxy as users run it (`python -m gunicorn -c config/gunicorn.conf.py wsgi:app`).
- pytest fixtures: `fake_upstream_server` (session-scoped) and `fake_upstream` (the same process, reset
  before each test). Re-export them from tests/conftest.py.
"""
from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _http(method: str, url_host: str, port: int, path: str, body: Any = None,
          timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(url_host, port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _tail(path: Path, limit: int = 20000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


class CountingListener:
    """A TCP listener that accepts and closes every connection at once, counting them.

    `reset=True` closes with RST (an upstream that resets connections); otherwise a plain close.
    """

    def __init__(self, reset: bool = False) -> None:
        self.reset = reset
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.count += 1
            if self.reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


class FakeUpstream:
    """The fake upstream in a subprocess. `url` is its base URL (no trailing slash).

    Use as a context manager, or call `start()` / `stop()`.
    """

    def __init__(self, host: str = "127.0.0.1", python: str = sys.executable, timeout: float = 15.0) -> None:
        self.host = host
        self.python = python
        self.timeout = timeout
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-upstream-"))
        self._stderr = self._tmp / "stderr.log"

    @property
    def url(self) -> str:
        assert self.port is not None, "FakeUpstream not started"
        return "http://%s:%d" % (self.host, self.port)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> "FakeUpstream":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(self._stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [self.python, "-m", "tests.fakes.upstream", "--port", "0", "--host", self.host],
                cwd=str(REPO_ROOT), env=env, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.timeout
        line = b""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        if not line.startswith(b"PORT "):
            self.stop()
            raise RuntimeError("fake upstream did not start: %r\n%s" % (line, _tail(self._stderr)))
        self.port = int(line.split()[1])
        return self

    def output(self) -> str:
        """What the fake wrote on stderr so far (tracebacks, if any)."""
        return _tail(self._stderr)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "FakeUpstream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control API --------------------------------------------------------------------------------

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        assert self.port is not None
        status, data = _http(method, self.host, self.port, "/_fake/" + path, body)
        if status != 200:
            raise RuntimeError("fake control %s %s -> %d %r" % (method, path, status, data[:500]))
        return json.loads(data)

    def requests(self, path: str | None = None) -> list[dict]:
        """Every request received since the last reset (bench-prefixed ones are only counted).

        Each: {"method", "path", "query", "endpoint", "headers" (lower-case), "body" (JSON or text),
        "model", "time"}. `path` filters on the endpoint ("/v1/messages", "/chat/completions", ...).
        """
        entries = self._control("GET", "requests")
        if path is not None:
            entries = [e for e in entries if e["endpoint"] == path or e["path"] == path]
        return entries

    def reset(self) -> None:
        """Forget requests, scripts, OAuth state and compression; release hung requests."""
        self._control("POST", "reset")

    def script(self, path: str, responses: list[dict]) -> None:
        """Queue scripted responses (FIFO) for an endpoint, e.g. "/v1/messages" or "/chat/completions".

        A response with "path_prefix" (e.g. "/primary") answers only a request whose path starts with it;
        others pass it by while it waits at the head of the queue."""
        self._control("POST", "script", {"path": path, "responses": responses})

    def oauth(self, refresh_token: str | None = None, valid_tokens: list[str] | None = None) -> dict:
        """Set the currently valid refresh token and/or the accepted access tokens / API keys."""
        body: dict[str, Any] = {}
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        if valid_tokens is not None:
            body["valid_tokens"] = list(valid_tokens)
        return self._control("POST", "oauth", body)

    def oauth_state(self) -> dict:
        """{"calls": n, "refresh_token": current, "valid_tokens": [...]}."""
        return self._control("GET", "oauth")

    def oauth_calls(self) -> int:
        return int(self.oauth_state()["calls"])

    def credentials(self, per_credential: dict[str, dict | None] | None = None) -> dict:
        """Per credential (API key or access token): `headers` sent with each of its answers, `status` answered
        to every request it makes, `faults` (a list of {"status", "headers"}) answered first, one each; None
        forgets one. Returns, per credential (by its last 6 characters), how many requests it made and was refused."""
        if per_credential is None:
            return self._control("GET", "credentials")
        return self._control("POST", "credentials", {"credentials": per_credential})

    def compress(self, enabled: bool = True) -> None:
        """Gzip bodies (SSE flushed per event) for requests whose accept-encoding allows gzip."""
        self._control("POST", "compress", {"enabled": bool(enabled)})

    def stats(self) -> dict:
        return self._control("GET", "stats")


class ProxyServer:
    """The proxy as users run it: gunicorn with the project's config, in a subprocess.

    `env` adds to a clean environment (PATH, LANG, HOME=<tmp>, PYTHONPATH=<repo>) with defaults PORT=<free>,
    HOST=127.0.0.1, WEB_CONCURRENCY=<workers>, TOKEN_REPORT_INTERVAL=0, USAGE_DB_PATH=<tmp>/usage.sqlite3 and
    NEXUS_ENV_LOADED=1 (so no `.env` file is read; pass NEXUS_ENV_LOADED="" to allow it). `args` go to gunicorn
    before the app; `config` replaces config/gunicorn.conf.py (bench/profile.py wraps it to profile a worker).
    """

    def __init__(self, env: Mapping[str, str] | None = None, workers: int = 1, cwd: str | os.PathLike | None = None,
                 timeout: float = 20.0, python: str = sys.executable, host: str = "127.0.0.1",
                 port: int | None = None, args: list[str] | None = None,
                 config: str | os.PathLike | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="proxy-server-"))
        self.host = host
        self.port = port or free_port(host)
        self.timeout = timeout
        self.cwd = Path(cwd) if cwd is not None else REPO_ROOT
        self.python = python
        self.proc: subprocess.Popen | None = None
        self._log = self.tmp / "output.log"
        self._final_output: str | None = None
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(self.tmp),
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "PORT": str(self.port),
            "HOST": host,
            "WEB_CONCURRENCY": str(workers),
            "TOKEN_REPORT_INTERVAL": "0",
            "USAGE_DB_PATH": str(self.tmp / "usage.sqlite3"),
            # a developer's .env in the repo root must not leak into tests; pass NEXUS_ENV_LOADED="" to load it
            "NEXUS_ENV_LOADED": "1",
        }
        base.update({k: str(v) for k, v in (env or {}).items()})
        self.env = base
        config = str(config or REPO_ROOT / "config" / "gunicorn.conf.py")
        self.argv = [python, "-m", "gunicorn", "-c", config, *(args or []), "wsgi:app"]

    @property
    def url(self) -> str:
        return "http://%s:%d" % (self.host, self.port)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "ProxyServer not started"
        return self.proc.pid

    def start(self) -> "ProxyServer":
        with open(self._log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=str(self.cwd), env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.output()
                self.stop()
                raise RuntimeError("proxy exited with %s before answering:\n%s" % (self.proc.returncode, output))
            try:
                status, _ = _http("GET", self.host, self.port, "/", timeout=2.0)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        output = self.output()
        self.stop()
        raise RuntimeError("proxy did not answer GET / with 200 within %.0f s:\n%s" % (self.timeout, output))

    def output(self) -> str:
        """Captured stdout + stderr so far (kept after stop())."""
        if self._final_output is not None:
            return self._final_output
        return _tail(self._log, 200000)

    def terminate(self, timeout: float = 45.0) -> int | None:
        """SIGTERM the master, wait for it, return its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.proc.wait(5)
        return self.proc.returncode

    def _kill_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # own session: only the master and its workers
        except (ProcessLookupError, PermissionError):
            self.proc.kill()

    def stop(self) -> None:
        """Terminate (SIGKILL after a while) and remove the temporary directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.terminate(timeout=10.0)
        if self._final_output is None:
            self._final_output = self.output()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "ProxyServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    """One fake upstream process for the whole session."""
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeUpstream) -> FakeUpstream:
    """The session's fake upstream, reset (no requests, scripts, OAuth state or compression) for this test."""
    fake_upstream_server.reset()
    return fake_upstream_server
