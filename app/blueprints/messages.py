"""POST /v1/messages, /v1/messages/count_tokens, and (passthrough) every other /v1/ path."""
from __future__ import annotations

import time
import uuid

from flask import Blueprint, Response, current_app, request

from .. import logs
from ..errors import ProxyError, body_too_large
from ..exchange import Incoming, Reply
from ..keys.service import CLIENT_KEY_KIND
from ..records import RequestRecord
from ..services.credentials import host_without_port

bp = Blueprint("messages", __name__)
# Registered in passthrough mode only: every other /v1/ path the clients use (e.g. GET /v1/models).
other_bp = Blueprint("passthrough_paths", __name__)

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@bp.post("/v1/messages")
def messages() -> Response:
    return _handle("messages")


@bp.post("/v1/messages/count_tokens")
def count_tokens() -> Response:
    return _handle("count_tokens")


@other_bp.route("/v1/<path:rest>", methods=_METHODS)
def other(rest: str) -> Response:
    return _handle("other")


def _handle(kind: str) -> Response:
    started = time.perf_counter()
    services = current_app.extensions["nexus"]
    settings = services.settings
    headers = {k.lower(): v for k, v in request.headers.items()}
    host = host_without_port(headers.get("host", ""))
    rec = RequestRecord(
        request_id="req_" + uuid.uuid4().hex[:24], timestamp=time.time(), domain=host or "unknown",
        mode=settings.proxy_mode, started=started, method=request.method, path=request.path,
    )
    try:
        config = services.credentials.domain_config(host)
        rec.slack_override = config.slack
        try:
            identity = services.access.check(host, headers, config)
        except ProxyError:
            rec.domain = services.domains.for_request(host, refused=True)
            raise
        rec.domain = services.domains.for_request(host, refused=False)
        admitter = None
        if identity is not None and identity.kind == CLIENT_KEY_KIND:
            client = services.client_keys.record_of(identity)
            rec.key_id, rec.key_name, rec.key_team = client.id, client.name, client.team
            admitter = lambda model: services.client_keys.admit(client, rec, model)  # noqa: E731
        limit = settings.max_body_bytes
        if (request.content_length or 0) > limit:
            raise body_too_large(limit)
        body = request.get_data(cache=False)
        if len(body) >= limit and request.content_length is None and request.environ["wsgi.input"].read(1):
            # A chunked body stops at the limit without an error (werkzeug); more bytes waiting means too large.
            raise body_too_large(limit)
        logs.debug_incoming(rec.request_id, request.method, request.url, headers, body)
        inc = Incoming(request.method, request.path, request.query_string.decode("latin-1"), host, headers, body,
                       rec, identity.key if identity else None, identity, admitter, config)
        if settings.translation:
            if kind == "messages":
                reply = services.translator.messages(inc)
            elif kind == "count_tokens":
                reply = services.translator.count_tokens(inc)
            else:  # pragma: no cover - the catch-all is only registered in passthrough mode
                raise ProxyError(404, f"{request.path} is not available in translation mode", "not_found_error")
        else:
            reply = services.passthrough.forward(inc)
    except ProxyError as exc:
        rec.status = exc.status
        rec.error_type = exc.error_type
        rec.error_message = exc.message
        rec.upstream_error = rec.upstream_error or exc.upstream_kind
        services.recorder.finish(rec)
        raise
    return to_response(reply)


def to_response(reply: Reply) -> Response:
    """A service's Reply as a Flask response; streams go out unbuffered, chunk by chunk."""
    resp = Response(reply.body, status=reply.status, headers=reply.headers, direct_passthrough=reply.streaming)
    if reply.on_close is not None:
        resp.call_on_close(reply.on_close)
    return resp
