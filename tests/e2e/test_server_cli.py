"""The real server as users start it: the CLI, gunicorn + gevent, graceful shutdown."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CLAUDE", "ANTHROPIC", "PROXY_", "DOMAIN_", "SLACK", "TELEMETRY", "DATABASE_URL"))}
    env.update({"PYTHONPATH": ROOT, "TOKEN_REPORT_INTERVAL": "0"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run_cli(args, cwd, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=cwd, env=env or _clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def test_help_lists_the_options(tmp_path):
    out = _run_cli(["--help"], tmp_path)
    assert out.returncode == 0
    for option in ("--port", "--host", "--env-file", "--workers", "--version", "oauth-login"):
        assert option in out.stdout


def test_version(tmp_path):
    from app.version import __version__

    out = _run_cli(["--version"], tmp_path)
    assert out.returncode == 0
    assert out.stdout.strip() == f"claude-nexus-proxy {__version__}"


@pytest.mark.parametrize("env, variable", [
    ({"PROXY_MODE": "mirror"}, "PROXY_MODE"),
    ({"PORT": "abc"}, "PORT"),
    ({"DOMAIN_CREDENTIAL_MAPPING": "[1, 2]"}, "DOMAIN_CREDENTIAL_MAPPING"),
    ({"TELEMETRY_ENDPOINT": "not a url"}, "TELEMETRY_ENDPOINT"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, env, variable):
    out = _run_cli([], tmp_path, _clean_env(**env))
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Configuration error: {variable}: ")
    assert "Traceback" not in out.stderr


def test_bad_value_in_dotenv_is_reported_too(tmp_path):
    (tmp_path / ".env").write_text("PROXY_MODE=nope\n")
    out = _run_cli([], tmp_path)
    assert out.returncode == 2 and "PROXY_MODE" in out.stderr


def test_gunicorn_with_the_procfile_command_rejects_bad_config_too(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gunicorn", "-c", os.path.join(ROOT, "config", "gunicorn.conf.py"),
                          "wsgi:app"], cwd=ROOT, env=_clean_env(PORT="not-a-port"),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "Configuration error: PORT" in out.stderr and "Traceback" not in out.stderr


class _SlowUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream that takes `delay` seconds to answer."""

    delay = 2.0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        time.sleep(self.delay)
        body = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "slow but complete"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_cli_serves_with_no_secrets_and_sigterm_drains_in_flight_requests(tmp_path, slow_upstream):
    port = _free_port()
    env = _clean_env(ANTHROPIC_PROXY_BASE_URL=slow_upstream, CLAUDE_CODE_PROXY_API_KEY="test-upstream-key",
                     USAGE_DB_PATH=str(tmp_path / "usage.sqlite3"))
    proc = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        status, health = _wait_http(f"http://127.0.0.1:{port}/")
        assert status == 200 and health["status"] == "ok" and health["mode"] == "translation"

        result = {}

        def slow_request():
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/messages", method="POST",
                data=json.dumps({"model": "claude-x", "max_tokens": 50,
                                 "messages": [{"role": "user", "content": "hi"}]}).encode(),
                headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                result["status"] = resp.status
                result["body"] = json.loads(resp.read())

        client = threading.Thread(target=slow_request)
        client.start()
        time.sleep(0.7)  # the request is now waiting on the slow upstream
        proc.send_signal(signal.SIGTERM)
        client.join(30)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert result.get("status") == 200, output
    assert result["body"]["content"][0]["text"] == "slow but complete"
    assert proc.returncode == 0, output
    # the final report includes the request that finished during the shutdown
    assert "TOTAL" in output and "127.0.0.1" in output


def test_ctrl_c_is_graceful_too(tmp_path, slow_upstream):
    port = _free_port()
    env = _clean_env(ANTHROPIC_PROXY_BASE_URL=slow_upstream, CLAUDE_CODE_PROXY_API_KEY="k",
                     USAGE_DB_PATH=str(tmp_path / "usage.sqlite3"))
    # its own process group, as a terminal would have: Ctrl+C reaches the master and the workers
    proc = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/")
        result = {}

        def slow_request():
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/messages", method="POST",
                data=b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}',
                headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                result["status"] = resp.status

        client = threading.Thread(target=slow_request)
        client.start()
        time.sleep(0.7)
        os.killpg(proc.pid, signal.SIGINT)
        client.join(30)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert result.get("status") == 200, output
    assert proc.returncode == 0, output


def test_idle_keep_alive_connections_do_not_hold_up_a_shutdown(tmp_path):
    """Claude Code and nginx keep connections open between requests; a stop must not wait for them."""
    import http.client

    port = _free_port()
    env = _clean_env(GRACEFUL_TIMEOUT="25", USAGE_DB_PATH=str(tmp_path / "usage.sqlite3"))
    proc = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/")
        conns = []
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/")
            assert conn.getresponse().read()
            conns.append(conn)  # kept open, idle, as a keep-alive client leaves it
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert elapsed < 15, f"shutdown waited {elapsed:.1f}s for idle keep-alive connections"


def test_the_banner_is_printed_once_by_the_master_whatever_the_worker_count(tmp_path):
    port = _free_port()
    key = "sk-or-v1-" + "0123456789abcdef" * 4
    env = _clean_env(CLAUDE_CODE_PROXY_API_KEY=key, USAGE_DB_PATH=str(tmp_path / "usage.sqlite3"))
    proc = subprocess.Popen([sys.executable, "-m", "app", "--host", "0.0.0.0", "--port", str(port), "--workers", "2"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/")
        time.sleep(1.0)  # both workers are up
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert output.count("listening on http://") == 1, output
    assert output.count(f"ANTHROPIC_BASE_URL=http://localhost:{port}") == 1, output
    assert output.count("WARNING: listening on 0.0.0.0") == 1, output
    assert "2 workers" in output
    assert key not in output and key[-6:] not in output
    # the master imported nothing that holds the unpatched ssl, so the workers' TLS to the upstream is cooperative
    assert "MonkeyPatchWarning" not in output, output


def test_the_workers_upstream_tls_is_gevent_cooperative():
    """What the master imports before forking must leave urllib3 on gevent's ssl once a worker patches."""
    probe = ("import app.gunicorn_conf\n"
             "from gevent import monkey; monkey.patch_all()\n"
             "import ssl, urllib3.util.ssl_ as u\n"
             "assert u.SSLContext is ssl.SSLContext, u.SSLContext\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", probe], cwd=ROOT, env=_clean_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
