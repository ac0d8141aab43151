"""Every error the app answers is Anthropic-shaped; this wires app.errors into Flask."""
from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from .errors import ProxyError, body_too_large, error_json, error_type_for_status

log = logging.getLogger("nexus")

_MESSAGES = {
    404: "Not found: {path}",
    405: "Method {method} is not allowed for {path}",
}


def _reply(status: int, error_type: str, message: str, headers=None) -> Response:
    resp = Response(error_json(error_type, message), status=status, content_type="application/json")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def proxy_error_response(exc: ProxyError) -> Response:
    """The answer to a ProxyError (the Flask handler, and the hot routes of app/fastpath.py)."""
    return _reply(exc.status, exc.error_type, exc.message, exc.headers)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ProxyError)
    def proxy_error(exc: ProxyError):
        return proxy_error_response(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        if status == 413:
            return proxy_error(body_too_large(app.config["MAX_CONTENT_LENGTH"]))
        template = _MESSAGES.get(status)
        if template:
            message = template.format(path=request.path, method=request.method)
        else:
            message = exc.description or exc.name
        resp = _reply(status, error_type_for_status(status), message)
        if status == 405 and getattr(exc, "valid_methods", None):
            resp.headers["Allow"] = ", ".join(exc.valid_methods)
        return resp

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _reply(500, "api_error", "Internal proxy error; the proxy's log has the details")
