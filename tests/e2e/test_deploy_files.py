"""The deploy files run the same server, and the image's files alone are enough to run it.

No Docker engine runs here, so the Dockerfile is exercised by replaying its steps: copy exactly what it
copies into an empty folder, set its environment, run its CMD, and ask the health check's question.
"""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.fakes.server import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions(name: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [name]]


def _cmd() -> list[str]:
    return json.loads(_instructions("CMD")[-1])


def test_procfile_dockerfile_and_cli_run_the_same_server():
    procfile = (ROOT / "Procfile").read_text().strip()
    assert procfile.startswith("web: ")
    assert shlex.split(procfile[len("web: "):]) == _cmd() == ["gunicorn", "-c", "config/gunicorn.conf.py", "wsgi:app"]
    # the CLI serves the package's own config module; the file the Procfile names is that module re-exported
    from app.cli import CONFIG_MODULE, WSGI_APP
    assert (CONFIG_MODULE, WSGI_APP) == ("python:app.gunicorn_conf", "app.wsgi:app")
    assert "from app.gunicorn_conf import *" in (ROOT / "config" / "gunicorn.conf.py").read_text()
    assert "from app.wsgi import app" in (ROOT / "wsgi.py").read_text()


def test_image_installs_the_pinned_requirements_as_non_root_with_a_health_check():
    assert any("requirements.txt" in run and "pip install" in run for run in _instructions("RUN"))
    user = _instructions("USER")
    assert user and user[-1] not in ("root", "0")
    assert "http://127.0.0.1:" in _instructions("HEALTHCHECK")[0]
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert "==" in line, f"unpinned requirement: {line}"


def _first_run():
    import importlib.util

    spec = importlib.util.spec_from_file_location("first_run", ROOT / ".ci" / "first_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_image_and_the_procfile_use_only_what_the_first_run_check_proves():
    """`.ci/first_run.py` (run by .ci/run before the suite) proves, in brand-new venvs: requirements.txt alone
    serves with the README's command and with the Procfile's command. The image must not need more."""
    first_run = _first_run()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/first-run.sh" in ci and ci.index("bash .ci/first-run.sh") < ci.index("python3 -m pytest")
    assert "first_run.py" in (ROOT / ".ci" / "first-run.sh").read_text()
    # what the check runs is read from the same files
    assert first_run.procfile_command() == (ROOT / "Procfile").read_text().strip()[len("web: "):]
    assert shlex.split(first_run.procfile_command()) == _cmd()
    assert first_run.readme_first_command() == "pip install -r requirements.txt && python3 -m app"
    # the image installs requirements.txt and nothing else
    installs = [run for run in _instructions("RUN") if "pip" in run]
    assert installs == ["pip install -r requirements.txt"], installs
    # on the Python the check ran with
    base = re.match(r"python:(\d+)\.(\d+)", _instructions("FROM")[0])
    assert base and (int(base[1]), int(base[2])) == sys.version_info[:2], _instructions("FROM")


def test_compose_mounts_credentials_read_only_and_reads_env_file():
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "./credentials:/app/credentials:ro" in compose
    assert "env_file" in compose and "3000" in compose


def test_the_files_the_image_copies_are_enough_to_serve(tmp_path):
    image = tmp_path / "app"
    image.mkdir()
    for copy in _instructions("COPY"):
        *sources, dest = shlex.split(copy)
        for source in sources:
            src = ROOT / source
            # `COPY a b/` and `COPY a .` put `a` inside the folder; `COPY a ./b` names the copy `b`
            target = image / dest / src.name if dest.endswith("/") or dest == "." else image / dest
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
    env_line = " ".join(_instructions("ENV"))
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update(dict(pair.split("=", 1) for pair in shlex.split(env_line)))
    port = free_port()
    env.update({"PORT": str(port), "USAGE_DB_PATH": str(tmp_path / "usage.sqlite3"), "TOKEN_REPORT_INTERVAL": "0"})
    cmd = _cmd()
    proc = subprocess.Popen([sys.executable, "-m", *cmd], cwd=image, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 20
        body = None
        while time.time() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    body = json.loads(resp.read())
            except OSError:
                time.sleep(0.1)
        setup = urllib.request.urlopen(f"http://127.0.0.1:{port}/client-setup/claude-code-settings.json",
                                       timeout=5).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert body is not None and body["status"] == "ok", output
    assert b"ANTHROPIC_BASE_URL" in setup
    assert proc.returncode == 0, output
