"""Nexus Proxy: the Flask application factory."""
from __future__ import annotations

import logging
import time

from flask import Flask

from .settings import Settings

log = logging.getLogger("nexus")


class Services:
    """Everything a request needs, built once per process (each gunicorn worker has its own)."""

    def __init__(self, settings: Settings) -> None:
        from .masking import register_secret
        from .paths import client_setup_dir
        from .services.access import AccessControl
        from .services.accounting import Accounting
        from .services.credentials import CredentialManager
        from .services.domains import DomainNames
        from .services.metrics import Metrics
        from .services.notifications import Slack, Telemetry
        from .services.passthrough import Passthrough
        from .services.recording import Recorder
        from .services.translator import Translator
        from .services.upstream import UpstreamClient
        from .storage import StorageError, open_storage

        self.settings = settings
        self.started_at = time.time()
        for secret in (settings.claude_code_proxy_api_key, settings.claude_api_key, *settings.proxy_api_keys,
                       settings.metrics_token):
            if secret:
                register_secret(secret)
        self.setup_dir = client_setup_dir(settings.client_setup_dir)
        self.storage = open_storage(settings)
        try:
            self.storage.migrate()
        except StorageError as exc:
            # An unreachable database must not stop the proxy: usage is buffered until it is back.
            log.warning("usage store unavailable at start-up (%s); requests are served and usage is buffered", exc)
        self.accounting = Accounting(settings, self.storage, journal=settings.usage_journal)
        self.telemetry = Telemetry(settings)
        self.slack = Slack(settings)
        store = self.storage if getattr(self.storage, "supports_credentials", False) else None
        self.credentials = CredentialManager(settings, store=store, state_store=self.storage,
                                             on_change=self._credential_changed)
        for upstream in settings.upstreams:
            if upstream.get("api_key"):
                register_secret(upstream["api_key"])
        # Client keys with limits (app/keys): the store's keys table and the shared rate-limit state
        from .keys.service import ClientKeys

        self.client_keys = ClientKeys(settings, self.storage)
        self.access = AccessControl(settings, self.credentials, (self.client_keys,))
        self.domains = DomainNames(self.credentials, self.storage, settings.usage_max_unmapped_hosts)
        self.upstream = UpstreamClient(settings)
        from .pricing import PriceTable

        self.prices = PriceTable(settings.model_prices)
        self.metrics = Metrics(settings, self.accounting, self.telemetry, self.credentials)
        self.upstream.on_retry = self.metrics.retry
        self.recorder = Recorder(self.accounting, self.telemetry, self.slack, self.credentials, self.prices,
                                 self.client_keys, self.metrics)
        # the dashboard: its own key (DASHBOARD_API_KEY, or one the server made), its reads
        from .services.dashboard import DashboardService
        from .services.dashboard_auth import DashboardAuth, dashboard_key

        dashboard_secret, _ = dashboard_key(settings)
        register_secret(dashboard_secret)
        self.dashboard_auth = DashboardAuth(dashboard_secret)
        self.dashboard = DashboardService(self.storage, self.accounting, self.credentials, settings)
        self.dashboard.key_usage = self.client_keys.store.usage_by_key
        from .services.thinking_key import ThinkingKey

        self.translator = Translator(settings, self.upstream, self.recorder, ThinkingKey(settings, store))
        self.passthrough = Passthrough(settings, self.upstream, self.credentials, self.recorder)
        self._running = False
        self._sync_stop = None  # set while the credential-state sync greenlet runs

    def start(self) -> None:
        """Start the background greenlets (flusher, reporter, telemetry, Slack)."""
        if self._running:
            return
        self._running = True
        if self.settings.proxy_mode == "passthrough" or self.settings.domain_credential_mapping:
            self.credentials.validate_all()
        self.accounting.start()
        self.client_keys.start()
        self.metrics.start()
        self.telemetry.start()
        self.slack.start()
        if self.settings.domain_credential_mapping and not self.settings.translation:
            import gevent
            import gevent.event

            self._sync_stop = gevent.event.Event()
            self._sync = gevent.spawn(self.credentials.states.run, self._sync_stop)

    def _credential_changed(self, name: str, previous, phase: str, state) -> None:
        """A pooled credential cooled down, broke or recovered: tell Slack (the store made this worker the one)."""
        from .services.notifications import credential_notice

        log.warning("credential %s: %s -> %s", name, previous or "ok", phase)
        self.slack.notice(credential_notice(name, previous, phase, state),
                          self.credentials.slack_for_credential(name))

    def stop(self, timeout: float = 5.0) -> None:
        """Flush usage and notifications (graceful shutdown). Safe to call more than once."""
        self._running = False
        self.client_keys.stop()
        if self._sync_stop is not None:
            self._sync_stop.set()
            self.credentials.states.sync_once()
        for part in (self.accounting, self.telemetry, self.slack):
            try:
                if part is self.accounting:
                    part.stop(final_report=False)  # the master prints the one final report
                else:
                    part.stop(timeout)
            except Exception:
                log.exception("stopping %s failed", type(part).__name__)
        self.metrics.stop()


def create_app(settings: Settings | None = None, *, start_background: bool = True) -> Flask:
    """Build the app: settings validated once, services built once, blueprints registered."""
    from .blueprints import dashboard, health, messages, metrics, setup_files, stats
    from .handlers import register_error_handlers
    from .logs import configure_logging

    settings = settings or Settings.from_env()
    configure_logging(settings)
    app = Flask(__name__, static_folder=None)
    # "/v1//messages" is a path we do not serve (404), not one to redirect to with the client's Host
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    services = Services(settings)
    app.extensions["nexus"] = services
    for blueprint in (health.bp, stats.bp, setup_files.bp, messages.bp, metrics.bp, dashboard.bp):
        app.register_blueprint(blueprint)
    if not settings.translation:
        app.register_blueprint(messages.other_bp)
    register_error_handlers(app)
    from .fastpath import FastPath

    app.wsgi_app = FastPath(app, services)  # type: ignore[method-assign]
    if start_background:
        services.start()
    return app
