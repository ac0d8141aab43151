"""The first five minutes of a new user, replayed: brand-new virtualenvs, only what the README installs.

1. A copy of the checkout's tracked files (no developer .env, data/ or venv gets in) and a new venv with
   nothing in it. The README's Quick start command runs there exactly as written, with PORT set and the
   upstream pointed at a fake on 127.0.0.1 (no secret is set). `GET /` must answer 200, one translated
   request must come back from the fake, and SIGTERM must end it with exit status 0.
2. In the same venv (requirements.txt only), the Procfile's command (also the Dockerfile's CMD), the same way.
3. Another new venv: `pip install <checkout>`, then `claude-nexus-proxy --version/--help`, and the command
   run from an unrelated empty directory, the same way; the shipped client-setup/ must be served.

Standard library only: it runs with whatever python3 CI has. Usage: python3 .ci/first_run.py
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 240  # the README command installs requirements.txt before it starts
STOP_TIMEOUT = 45
CLIENT_KEY = "first-run-client-key-0123456789"


class Failed(Exception):
    pass


def log(msg: str) -> None:
    print(f"[first-run {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_first_command() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Quick start", 1)[1]
    match = re.search(r"```bash\n(.*?)\n```", section, re.S)
    if not match:
        raise Failed("README.md: no ```bash block in the Quick start section")
    return match.group(1).strip()


def procfile_command() -> str:
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line[len("web:"):].strip()
    raise Failed("Procfile: no web: line")


def copy_checkout(dest: Path) -> None:
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
        names = [n for n in files.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if p.is_file() and not {".git", "node_modules", "__pycache__", ".venv", "data"} & set(p.parts)]
    for name in names:
        src = REPO / name
        if src.is_file() and not src.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def new_venv(path: Path) -> dict:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER")}
    env.update({"PATH": f"{path / 'bin'}:/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": str(path),
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None,
         timeout: float = 30) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class FakeUpstream:
    """tests/fakes/upstream.py as its own process (test code: it runs with CI's python, not the user's venv)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.upstream", "--port", "0"], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise Failed(f"the fake upstream did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def requests(self) -> list:
        return json.loads(http("GET", self.url + "/_fake/requests")[1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def server_pid(proc: subprocess.Popen) -> int:
    """The process that must get SIGTERM: the command itself, or the one bash started for it."""
    comm = Path(f"/proc/{proc.pid}/comm").read_text().strip() if Path(f"/proc/{proc.pid}/comm").exists() else ""
    if comm != "bash":
        return proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    if len(children) != 1:
        raise Failed(f"expected one server process under bash, found {children}")
    return int(children[0])


def check_run(name: str, argv: list[str], cwd: Path, env: dict, fake: FakeUpstream, logfile: Path,
              expect_setup_file: bool = False) -> None:
    port = free_port()
    run_env = dict(env, PORT=str(port), ANTHROPIC_PROXY_BASE_URL=fake.url)
    started = time.monotonic()
    with open(logfile, "w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=run_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            if proc.poll() is not None:
                raise Failed(f"{name}: exited with status {proc.returncode} before answering GET /")
            if time.monotonic() - started > START_TIMEOUT:
                raise Failed(f"{name}: GET / did not answer 200 within {START_TIMEOUT}s")
            try:
                status, body = http("GET", base + "/", timeout=3)
                if status == 200 and json.loads(body).get("status") == "ok":
                    break
            except OSError:
                pass
            time.sleep(0.3)
        log(f"{name}: GET / answered 200 after {time.monotonic() - started:.1f}s")
        before = len(fake.requests())
        status, body = http("POST", base + "/v1/messages", {
            "model": "claude-sonnet-4-5", "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hello."}]},
            {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
        message = json.loads(body) if body[:1] == b"{" else {}
        if status != 200 or message.get("type") != "message" or not message.get("content"):
            raise Failed(f"{name}: POST /v1/messages answered {status}: {body[:500]!r}")
        seen = fake.requests()[before:]
        if not any(r.get("path", "").endswith("/chat/completions") for r in seen):
            raise Failed(f"{name}: the fake upstream saw no /chat/completions request: {seen!r}"[:800])
        log(f"{name}: one translated request answered: {message['content'][0].get('text', '')[:60]!r}")
        if expect_setup_file:
            status, body = http("GET", base + "/client-setup/claude-code-settings.json")
            if status != 200 or b"ANTHROPIC_BASE_URL" not in body:
                raise Failed(f"{name}: /client-setup/claude-code-settings.json answered {status}")
            log(f"{name}: the shipped client-setup/ is served")
        os.kill(server_pid(proc), signal.SIGTERM)
        try:
            code = proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Failed(f"{name}: still running {STOP_TIMEOUT}s after SIGTERM") from None
        if code != 0:
            raise Failed(f"{name}: exit status {code} after SIGTERM (expected 0)")
        log(f"{name}: SIGTERM -> exit 0")
    except Failed:
        print(f"--- {logfile} (tail) ---\n{logfile.read_text()[-4000:]}", file=sys.stderr)
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def check_every_module_imports(env: dict, cwd: Path, package: str) -> None:
    """Every module of the package imports with what this venv has: nothing comes only from the dev requirements."""
    probe = ("import importlib, pkgutil, sys; p = importlib.import_module(sys.argv[1]); "
             "[importlib.import_module(m.name) for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')"
             " if not m.name.endswith(('.__main__', '.gunicorn_conf', '.wsgi'))]")
    out = subprocess.run(["python", "-c", probe, package], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise Failed(f"a module of {package} does not import with requirements.txt alone:\n{out.stderr[-3000:]}")
    log(f"every module of {package} imports with requirements.txt alone")


def check_installed_layout(env: dict, cwd: Path) -> None:
    probe = ("import importlib.util as u, json; "
             "print(json.dumps({n: u.find_spec(n) is not None for n in ('claude_nexus_proxy', 'app', 'config', 'wsgi')}))")
    found = json.loads(subprocess.run(["python", "-c", probe], cwd=cwd, env=env, check=True,
                                      capture_output=True, text=True).stdout)
    if found != {"claude_nexus_proxy": True, "app": False, "config": False, "wsgi": False}:
        raise Failed(f"pip install . put these top-level names on the path: {found}")
    for args, expect in ((["--version"], "claude-nexus-proxy "), (["--help"], "--env-file"),
                         (["oauth-login", "--help"], "--create-api-key")):
        out = subprocess.run(["claude-nexus-proxy", *args], cwd=cwd, env=env, capture_output=True, text=True)
        if out.returncode != 0 or expect not in out.stdout:
            raise Failed(f"claude-nexus-proxy {' '.join(args)}: status {out.returncode}\n{out.stdout}{out.stderr}")
    log("installed: only claude_nexus_proxy at the top level; --version, --help and oauth-login --help work")


def main() -> int:
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="nexus-first-run-"))
    fake = None
    try:
        checkout = work / "checkout"
        copy_checkout(checkout)
        fake = FakeUpstream()
        command = readme_first_command()
        log(f"README's first command: {command}")

        env = new_venv(work / "venv-requirements")
        check_run("README command", ["bash", "-c", command], checkout, env, fake, work / "readme.log")
        check_every_module_imports(env, checkout, "app")
        procfile = procfile_command()
        check_run(f"Procfile ({procfile})", shlex.split(procfile), checkout, env, fake, work / "procfile.log")

        env = new_venv(work / "venv-package")
        install = subprocess.run(["pip", "install", "-q", str(checkout)], cwd=work, env=env,
                                 capture_output=True, text=True)
        if install.returncode != 0:
            raise Failed(f"pip install . failed:\n{install.stdout[-3000:]}{install.stderr[-3000:]}")
        elsewhere = work / "elsewhere"
        elsewhere.mkdir()
        check_installed_layout(env, elsewhere)
        check_every_module_imports(env, elsewhere, "claude_nexus_proxy")
        check_run("installed claude-nexus-proxy", ["claude-nexus-proxy"], elsewhere, env, fake,
                  work / "installed.log", expect_setup_file=True)
        log(f"passed in {time.monotonic() - began:.0f}s")
        return 0
    except Failed as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        if fake is not None:
            fake.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
