"""Helpers for driving the real Claude Code CLI in end-to-end tests (tests/e2e/test_claude_code_cli.py).

- `find_claude()`: the pinned CLI from tests/cli (or `claude` on PATH) and whether it runs.
- `Project`: a throwaway working directory and HOME with a file whose first word is a random token.
- `run_claude()`: `claude -p … --output-format stream-json --verbose` with a clean environment.
- `InternetTrap`: an HTTP(S) proxy the CLI is pointed at for every host except the local ones; it
  refuses and records whatever would have left the machine.
- `doc_blocks()`: the environment blocks of docs/claude-code.md, so the tests run exactly what the docs say.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[2]
PINNED_CLI = REPO_ROOT / "tests" / "cli" / "node_modules" / ".bin" / "claude"
DOCS = REPO_ROOT / "README.md"  # the "Use with Claude Code" section: the docs are what is tested
INSTALL_HINT = "install it with `cd tests/cli && npm install` (needs npm; version pinned in tests/cli/package.json)"

# What the CLI would otherwise send to Anthropic or elsewhere on its own (docs: "non-essential traffic").
QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def find_claude() -> tuple[str | None, str]:
    """(path to a working CLI, its version line) or (None, why not)."""
    candidates = [str(PINNED_CLI)] if PINNED_CLI.exists() else []
    on_path = shutil.which("claude")
    if on_path:
        candidates.append(on_path)
    if not candidates:
        return None, "Claude Code CLI not found (no tests/cli/node_modules/.bin/claude, no `claude` on PATH): " \
                     + INSTALL_HINT
    problems = []
    for path in candidates:
        home = tempfile.mkdtemp(prefix="claude-version-")
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60,
                                 env=base_env(home), stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            problems.append(f"{path}: {exc}")
            continue
        finally:
            shutil.rmtree(home, ignore_errors=True)
        if out.returncode == 0 and "Claude Code" in out.stdout:
            return path, out.stdout.strip()
        problems.append(f"{path} --version exited {out.returncode}: {(out.stderr or out.stdout).strip()[:200]}")
    return None, "Claude Code CLI does not run (" + "; ".join(problems) + "): " + INSTALL_HINT


def base_env(home: str) -> dict[str, str]:
    """A clean environment: nothing of the developer's ANTHROPIC_*/CLAUDE_* settings, no proxy, no config."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": home,
        "XDG_CONFIG_HOME": os.path.join(home, ".config"),
        "TMPDIR": os.environ.get("TMPDIR", tempfile.gettempdir()),
        "TERM": "dumb",
        "NO_COLOR": "1",
    }
    env.update(QUIET_ENV)
    return env


class InternetTrap:
    """A local HTTP proxy for HTTP(S)_PROXY: every connection the CLI tries to make beyond the local
    hosts in NO_PROXY lands here, is recorded (request line only) and refused with 403."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="internet-trap", daemon=True)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def env(self) -> dict[str, str]:
        local = "127.0.0.1,localhost,::1"
        return {"HTTP_PROXY": self.url, "HTTPS_PROXY": self.url, "http_proxy": self.url, "https_proxy": self.url,
                "ALL_PROXY": self.url, "NO_PROXY": local, "no_proxy": local}

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                try:
                    first = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                except OSError:
                    first = "<no request line>"
                self.attempts.append(first)
                try:
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                except OSError:
                    pass

    def __enter__(self) -> "InternetTrap":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(2)


@dataclass
class Project:
    """A throwaway working directory and HOME; `file` holds a line whose first word is `token`."""

    root: Path
    token: str = field(default_factory=lambda: "zq" + secrets.token_hex(6))

    def __post_init__(self) -> None:
        self.workdir = self.root / "project"
        self.home = self.root / "home"
        self.workdir.mkdir(parents=True)
        self.home.mkdir(parents=True)
        self.file = self.workdir / "hello.txt"
        self.file.write_text(f"{self.token} is the first word of this file.\nThe second line.\n")

    @property
    def prompt(self) -> str:
        return f"Read the file {self.file} and tell me its first word"


@dataclass
class CliRun:
    """One finished `claude -p` run with its stream-json events."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    events: list[dict]

    @property
    def result(self) -> dict | None:
        found = [e for e in self.events if e.get("type") == "result"]
        return found[-1] if found else None

    def tool_uses(self, name: str | None = None) -> list[dict]:
        out = []
        for event in self.events:
            if event.get("type") != "assistant":
                continue
            for block in (event.get("message") or {}).get("content") or []:
                if isinstance(block, dict) and block.get("type") == "tool_use" and name in (None, block.get("name")):
                    out.append(block)
        return out

    def tool_results(self) -> list[dict]:
        out = []
        for event in self.events:
            if event.get("type") != "user":
                continue
            content = (event.get("message") or {}).get("content")
            for block in content if isinstance(content, list) else []:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    out.append(block)
        return out

    def system_events(self, subtype: str) -> list[dict]:
        return [e for e in self.events if e.get("type") == "system" and e.get("subtype") == subtype]

    def describe(self) -> str:
        """Everything needed to understand a failure, in one string."""
        return "exit %s after %.1fs\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
            self.returncode, self.seconds, self.stdout[-6000:], self.stderr[-3000:])


def run_claude(claude: str, project: Project, base_url: str, credentials: Mapping[str, str],
               trap: InternetTrap, args: list[str] | None = None, extra_env: Mapping[str, str] | None = None,
               timeout: float = 90.0) -> CliRun:
    """Run the CLI on the project's prompt against `base_url` with only the given credential variables."""
    env = base_env(str(project.home))
    env.update(trap.env())
    env["ANTHROPIC_BASE_URL"] = base_url
    env.update(credentials)
    env.update(extra_env or {})
    argv = [claude, "-p", project.prompt, "--output-format", "stream-json", "--verbose",
            "--allowedTools", "Read", *(args or [])]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=str(project.workdir), env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode("utf-8", "replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise AssertionError(f"claude did not finish within {timeout:.0f}s (a hang):\n{out[-4000:]}") from None
    seconds = time.monotonic() - started
    events = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return CliRun(proc.returncode, proc.stdout, proc.stderr, seconds, events)


# -- the proxy's /token-stats ----------------------------------------------------------------------


def token_stats(proxy_url: str, admin_key: str | None = None) -> dict:
    req = urllib.request.Request(proxy_url + "/token-stats", headers={"x-api-key": admin_key} if admin_key else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def stats_delta(before: dict, after: dict, section: str, key: str) -> dict[str, int]:
    """Counter differences for one domain (section "stats") or model (section "models")."""
    old = (before.get(section) or {}).get(key) or {}
    new = (after.get(section) or {}).get(key) or {}
    return {name: int(value) - int(old.get(name, 0)) for name, value in new.items()
            if isinstance(value, (int, float)) and name != "lastUpdated"}


def wait_for_stats(proxy_url: str, done: Callable[[dict], bool], timeout: float = 10.0,
                   admin_key: str | None = None) -> dict:
    """/token-stats once `done` holds (a request's record is written as its stream closes, just after
    the client has its last byte), or the last answer when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        stats = token_stats(proxy_url, admin_key)
        if done(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


# -- the README's checked blocks ---------------------------------------------------------------------------

_BLOCK_RE = re.compile(r"<!--\s*checked:\s*(\S+)\s*-->\s*\n```[\w-]*\n(.*?)\n```", re.S)


def doc_blocks(path: Path = DOCS) -> dict[str, str]:
    """The fenced blocks of the docs marked `<!-- checked: NAME -->`, by NAME."""
    blocks: dict[str, str] = {}
    for name, body in _BLOCK_RE.findall(path.read_text(encoding="utf-8")):
        assert name not in blocks, f"{path.name}: block {name!r} appears twice"
        blocks[name] = body
    return blocks


def parse_env_block(text: str) -> dict[str, str]:
    """`NAME=value` / `export NAME=value` lines (shell quoting, `#` comments, `\\` continuations)."""
    env: dict[str, str] = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            words = words[1:]
        for word in words:
            name, eq, value = word.partition("=")
            assert eq and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"not an assignment in the docs: {line!r}"
            env[name] = value
    return env


def doc_env(name: str) -> dict[str, str]:
    blocks = doc_blocks()
    assert name in blocks, f"README.md has no block marked <!-- checked: {name} -->"
    return parse_env_block(blocks[name])


def doc_json(name: str) -> Any:
    blocks = doc_blocks()
    assert name in blocks, f"README.md has no block marked <!-- checked: {name} -->"
    return json.loads(blocks[name])


def substitute(doc: Mapping[str, str], replacements: Mapping[str, str]) -> dict[str, str]:
    """The docs' variables with placeholders (URLs, secrets) replaced by test values.

    Every replaced name must be in the docs, so a test cannot pass on a variable the docs do not tell
    users to set; every other value is used exactly as written.
    """
    missing = sorted(set(replacements) - set(doc))
    assert not missing, f"the docs block does not set {missing}"
    return {**doc, **replacements}
