"""The one server configuration: the CLI, the Procfile and the Dockerfile all run gunicorn with it.

A module (`gunicorn -c python:<package>.gunicorn_conf`), so the installed package finds it from any
working directory; `config/gunicorn.conf.py` is the file-path form for `gunicorn -c`. Settings come from
the environment (and `.env`), validated by the settings module; a bad value exits 2.
"""
import os
import signal
import sys
import time

import gunicorn.arbiter

from .banner import banner_lines
from .settings import Settings, SettingsError, load_env_files
from .worker import ProxyWorker

_started_at = time.time()

try:
    if not os.environ.get("NEXUS_ENV_LOADED"):
        load_env_files(os.environ.get("NEXUS_ENV_FILE"))
    _settings = Settings.from_env()
    from .services.client_key_files import check_client_key_files

    check_client_key_files(_settings)
except SettingsError as _exc:
    print(str(_exc), file=sys.stderr)
    sys.exit(2)

# The dashboard's key: without DASHBOARD_API_KEY the master makes one now, before forking, so every worker
# shares it; its login URL is printed once, in the banner.
from .services.dashboard_auth import dashboard_banner_lines, dashboard_key  # noqa: E402

dashboard_key(_settings)

if _settings.metrics_enabled:
    # Before any worker exists (and before prometheus_client is imported), so every worker writes its
    # metrics files into one directory that the scrape reads.
    from .services.metrics import prepare_directory  # noqa: E402

    prepare_directory()

bind = [f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
worker_class = ProxyWorker  # gevent, plus closing idle keep-alive connections on stop
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
    # The master runs this once, after binding: the banner is printed once however many workers start.
    print("\n".join(banner_lines(_settings, workers=workers) + dashboard_banner_lines(_settings)), flush=True)


def post_worker_init(worker):
    from .lifecycle import worker_started

    # A terminal's Ctrl+C reaches the workers too; treat it like SIGTERM (finish in-flight requests).
    signal.signal(signal.SIGINT, worker.handle_exit)
    worker_started(worker)


def worker_exit(server, worker):
    from .lifecycle import worker_stopping

    worker_stopping(worker)


def child_exit(server, worker):
    from .lifecycle import worker_reaped

    worker_reaped(_settings, worker.pid)


def on_exit(server):
    from .lifecycle import master_exiting, print_final_report

    master_exiting(_settings)
    print_final_report(_settings, _started_at)
