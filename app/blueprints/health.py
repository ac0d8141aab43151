"""GET / (and HEAD /): liveness, configuration and credential status. Never a secret, not even partly."""
from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify, request

from ..version import __version__

bp = Blueprint("health", __name__)


@bp.get("/")
def health():
    services = current_app.extensions["nexus"]
    settings = services.settings
    body = {"status": "ok", "service": "claude-nexus-proxy", "version": __version__, "mode": settings.proxy_mode}
    if not services.access.is_admin(request.headers):
        # access control is on and this caller has no admin key: liveness only
        body["details"] = "send an admin key (one of PROXY_API_KEYS) to see the configuration"
        return jsonify(body)
    storage = services.accounting.status()
    client_keys = services.client_keys.status()
    if storage.get("degraded") or not client_keys["rateLimiter"]["healthy"]:
        body["status"] = "degraded"
    public = settings.public_dict()
    body.update({
        "uptimeSeconds": round(time.time() - services.started_at, 1),
        "upstream": public["upstream"],
        "models": public["models"],
        "maxTokens": public["maxTokens"],
        "features": {
            "telemetry": bool(settings.telemetry_endpoint),
            "slack": bool(settings.slack_webhook_url and settings.slack_enabled),
            "debug": settings.debug,
            "accessControl": services.access.enabled,
            "strictDomainMapping": settings.strict_domain_mapping,
        },
        "upstreamKey": _key_status(settings),
        "credentials": services.credentials.status(_credential_usage(services)),
        "upstreams": services.translator.upstreams.view() if settings.translation else None,
        "storage": storage,
        "clientKeys": client_keys,
        "telemetry": services.telemetry.status(),
        "slack": services.slack.status(),
    })
    return jsonify(body)


def _credential_usage(services) -> dict | None:
    """Requests and tokens per pooled credential, when any pool is configured and the store answers."""
    if not any(isinstance(v, list) for v in services.settings.domain_credential_mapping.values()):
        return None
    try:
        return services.accounting.credential_stats()
    except Exception:  # the health page must answer even when the store does not
        return None


def _key_status(settings) -> dict:
    """Which environment keys are set: yes/no only."""
    if settings.translation:
        return {"CLAUDE_CODE_PROXY_API_KEY": bool(settings.claude_code_proxy_api_key),
                "clientKeysAccepted": not settings.claude_code_proxy_api_key}
    return {"CLAUDE_API_KEY": bool(settings.claude_api_key),
            "CLAUDE_CODE_PROXY_API_KEY": bool(settings.claude_code_proxy_api_key)}
