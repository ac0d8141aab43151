"""The one server configuration: the CLI, the Procfile and the Dockerfile all run gunicorn with this file.

Settings come from the environment (and `.env`), validated by config.settings; a bad value exits 2.
"""
import os
import signal
import sys
import time

import gunicorn.arbiter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config.settings import Settings, SettingsError, load_env_files  # noqa: E402

_started_at = time.time()

try:
    if not os.environ.get("NEXUS_ENV_LOADED"):
        load_env_files(os.environ.get("NEXUS_ENV_FILE"))
    _settings = Settings.from_env()
    from app.services.access import check_client_key_files  # noqa: E402

    check_client_key_files(_settings)
except SettingsError as _exc:
    print(str(_exc), file=sys.stderr)
    sys.exit(2)

bind = [f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
worker_class = "app.worker.ProxyWorker"  # gevent, plus closing idle keep-alive connections on stop
worker_connections = _settings.worker_connections
graceful_timeout = int(round(_settings.shutdown_timeout))
timeout = 60  # worker heartbeat only: gevent workers notify from their own loop, so long streams are fine
keepalive = 75  # longer than nginx's upstream keepalive, so nginx closes idle connections first
accesslog = None  # the app writes its own concise access line (app.logs)
errorlog = "-"
loglevel = "warning" if not _settings.debug else "info"
limit_request_field_size = 16380
proc_name = "claude-nexus-proxy"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Ctrl+C must drain like SIGTERM does, not drop in-flight streams: gunicorn treats SIGINT as a quick
# stop, so the master's SIGINT handler is pointed at the graceful one (a second Ctrl+C still forces).
gunicorn.arbiter.Arbiter.handle_int = gunicorn.arbiter.Arbiter.handle_term


def when_ready(server):
    print(f"claude-nexus-proxy listening on {', '.join(bind)} (mode: {_settings.proxy_mode}, "
          f"workers: {workers})", flush=True)


def post_worker_init(worker):
    from app.lifecycle import worker_started

    # A terminal's Ctrl+C reaches the workers too; treat it like SIGTERM (finish in-flight requests).
    signal.signal(signal.SIGINT, worker.handle_exit)
    worker_started(worker)


def worker_exit(server, worker):
    from app.lifecycle import worker_stopping

    worker_stopping(worker)


def on_exit(server):
    from app.lifecycle import print_final_report

    print_final_report(_settings, _started_at)
