"""GET /metrics: the Prometheus text format, every worker's numbers merged (app.services.metrics)."""
from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, request

from ..errors import ProxyError
from ..client_key import presented_key
from ..services.metrics import CONTENT_TYPE

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    services = current_app.extensions["nexus"]
    settings = services.settings
    if not settings.metrics_enabled:
        raise ProxyError(404, "Not found: /metrics (METRICS_ENABLED is false)", "not_found_error")
    _require_scraper(services, settings.metrics_token)
    return Response(services.metrics.render(), content_type=CONTENT_TYPE,
                    headers={"cache-control": "no-store"})


def _require_scraper(services, token: str | None) -> None:
    """METRICS_TOKEN when set (or an admin key); otherwise the rule of the detailed GET /."""
    if token:
        given = presented_key({k.lower(): v for k, v in request.headers.items()})
        if given and hmac.compare_digest(given.encode(), token.encode()):
            return
        if not services.access.enabled:
            raise ProxyError(401, "Missing or invalid metrics token (send METRICS_TOKEN as Authorization: Bearer)",
                             "authentication_error")
    services.access.require_admin(request.headers)
