"""POST /v1/messages, /v1/messages/count_tokens, and (passthrough) every other /v1/ path."""
from __future__ import annotations

import logging
import time
import uuid

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import get_content_length, get_input_stream

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
    services = current_app.extensions["nexus"]
    return to_response(serve(services, kind, request.environ, lambda: request.url))


def serve(services, kind: str, wsgi_env: dict, url=None) -> Reply:
    """One /v1/ request, read straight from its WSGI environ (no Flask objects: the hot path calls this
    without Flask, see app/fastpath.py). `url()` gives the request's URL for the debug log."""
    started = time.perf_counter()
    settings = services.settings
    headers = request_headers(wsgi_env)
    host = host_without_port(headers.get("host", ""))
    method = wsgi_env.get("REQUEST_METHOD", "GET").upper()
    path = _path(wsgi_env)
    rec = RequestRecord(
        request_id="req_" + uuid.uuid4().hex[:24], timestamp=time.time(), domain=host or "unknown",
        mode=settings.proxy_mode, started=started, method=method, path=path,
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
        content_length = get_content_length(wsgi_env)
        if (content_length or 0) > limit:
            raise body_too_large(limit)
        body = _read_body(wsgi_env, content_length, limit)
        if len(body) >= limit and content_length is None and wsgi_env["wsgi.input"].read(1):
            # A chunked body stops at the limit without an error (werkzeug); more bytes waiting means too large.
            raise body_too_large(limit)
        if logs.debug_log.isEnabledFor(logging.DEBUG):
            logs.debug_incoming(rec.request_id, method, url() if url else path, headers, body)
        inc = Incoming(method, path, wsgi_env.get("QUERY_STRING", ""), host, headers, body,
                       rec, identity.key if identity else None, identity, admitter, config)
        if settings.translation:
            if kind == "messages":
                reply = services.translator.messages(inc)
            elif kind == "count_tokens":
                reply = services.translator.count_tokens(inc)
            else:  # pragma: no cover - the catch-all is only registered in passthrough mode
                raise ProxyError(404, f"{path} is not available in translation mode", "not_found_error")
        else:
            reply = services.passthrough.forward(inc)
    except ProxyError as exc:
        rec.status = exc.status
        rec.error_type = exc.error_type
        rec.error_message = exc.message
        rec.upstream_error = rec.upstream_error or exc.upstream_kind
        services.recorder.finish(rec)
        raise
    return reply


def _read_body(wsgi_env: dict, content_length: int | None, limit: int) -> bytes:
    """The body as `request.get_data()` reads it: at most `limit` bytes, up to the end of the input; a read
    that fails is a client that went away (400)."""
    if content_length is None or limit <= 0 or "wsgi.input_terminated" not in wsgi_env:
        return get_input_stream(wsgi_env, max_content_length=limit).read()
    # The server ends the input at Content-Length (gunicorn): one read, instead of werkzeug's 64 KiB steps
    # that copy a large body three more times.
    try:
        return wsgi_env["wsgi.input"].read(limit)
    except (OSError, ValueError):
        raise ClientDisconnected()  # noqa: B904 - as werkzeug raises it


_HEADER_NAMES: dict[str, str | None] = {}  # wsgi_env key -> lower-case header name (None: not a header)


def request_headers(wsgi_env: dict) -> dict:
    """The request's headers by lower-case name, in the order and with the values werkzeug's
    `request.headers` gives."""
    names = _HEADER_NAMES
    out = {}
    for key, value in wsgi_env.items():
        name = names.get(key, False)
        if name is False:
            name = _header_name(key, value)
            if name is None or len(names) < 512:  # bounded: wsgi_env keys come from the client
                names[key] = name
        if name is not None:
            if name in _CONTENT_NAMES and not value:
                continue
            out[name] = value
    return out


_CONTENT_NAMES = frozenset({"content-type", "content-length"})


def _header_name(key: str, value) -> str | None:
    if key.startswith("HTTP_") and key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        return key[5:].replace("_", "-").title().lower()
    if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return key.replace("_", "-").lower()
    return None


def _path(wsgi_env: dict) -> str:
    """werkzeug's `request.path`: PATH_INFO decoded as UTF-8 (WSGI hands it over as latin-1)."""
    raw = wsgi_env.get("PATH_INFO") or ""
    if raw.isascii():
        return "/" + raw.lstrip("/")
    return "/" + raw.encode("latin1").decode("utf-8", "replace").lstrip("/")


def to_response(reply: Reply) -> Response:
    """A service's Reply as a Flask response; streams go out unbuffered, chunk by chunk."""
    resp = Response(reply.body, status=reply.status, headers=reply.headers, direct_passthrough=reply.streaming)
    if reply.on_close is not None:
        resp.call_on_close(reply.on_close)
    return resp
