"""The WSGI entry of the hot routes (POST /v1/messages and /v1/messages/count_tokens), without Flask.

Flask's request context, URL matching and werkzeug's Request and Response objects cost about as much CPU
per small request as everything the proxy itself does; this entry calls the same view code
(`messages.serve`) straight from the WSGI environ and writes the answer the way werkzeug would. Anything
out of the ordinary goes the Flask way, so what the client gets is the same byte for byte:

- every other path and method, and every request while the debug log is on (it logs the full URL);
- an answer werkzeug would change (no content type, 1xx/204/304, a Location or Content-Length header, a
  header value it would refuse);
- every error: a ProxyError gets the app's error handler, anything else goes through Flask's own
  exception handling in a request context, as if the view had raised it.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

from flask import Flask
from werkzeug.wrappers import Response

from . import logs
from .blueprints.messages import serve, to_response
from .errors import ProxyError
from .exchange import Reply
from .handlers import proxy_error_response

ROUTES = {"/v1/messages": "messages", "/v1/messages/count_tokens": "count_tokens"}
_SPECIAL_HEADERS = frozenset({"content-length", "location", "content-location"})
_STATUS: dict[int, str] = {}


class FastPath:
    """WSGI middleware in front of `app.wsgi_app`."""

    def __init__(self, app: Flask, services) -> None:
        self.app = app
        self.services = services
        self.flask = app.wsgi_app

    def __call__(self, wsgi_env: dict, start_response: Callable) -> Iterable[bytes]:
        kind = ROUTES.get(wsgi_env.get("PATH_INFO"))  # type: ignore[arg-type]
        if (kind is None or wsgi_env.get("REQUEST_METHOD") != "POST" or wsgi_env.get("SCRIPT_NAME")
                or logs.debug_log.isEnabledFor(logging.DEBUG)):
            return self.flask(wsgi_env, start_response)
        try:
            reply = serve(self.services, kind, wsgi_env)
        except ProxyError as exc:
            return proxy_error_response(exc)(wsgi_env, start_response)
        except Exception as exc:  # what Flask does with an exception a view raised
            return self._flask_error(exc, wsgi_env, start_response)
        return respond(reply, wsgi_env, start_response)

    def _flask_error(self, exc: Exception, wsgi_env: dict, start_response: Callable) -> Iterable[bytes]:
        app = self.app
        with app.request_context(wsgi_env):
            try:
                try:
                    rv = app.handle_user_exception(exc)
                except Exception as unhandled:
                    response = app.handle_exception(unhandled)
                else:
                    response = app.finalize_request(rv)
            except Exception as unhandled:  # pragma: no cover - Flask's last resort, as in wsgi_app
                response = app.handle_exception(unhandled)
            return response(wsgi_env, start_response)


def respond(reply: Reply, wsgi_env: dict, start_response: Callable) -> Iterable[bytes]:
    """Start the response as werkzeug's Response would, without building one."""
    status = reply.status
    headers = reply.headers
    body = reply.body
    if status < 200 or status in (204, 304) or not _plain(headers) or not (reply.streaming or type(body) is bytes):
        return to_response(reply)(wsgi_env, start_response)
    line = _STATUS.get(status)
    if line is None:
        line = _STATUS[status] = Response(status=status).status
    if reply.streaming:
        # werkzeug hands a direct_passthrough body to the server as it is (and never runs its on_close)
        start_response(line, list(headers))
        return body  # type: ignore[return-value]
    start_response(line, [*headers, ("Content-Length", str(len(body)))])  # type: ignore[arg-type]
    return _Body(body, reply.on_close)  # type: ignore[arg-type]


def _plain(headers) -> bool:
    """Headers werkzeug passes through unchanged: a content type, none it rewrites, no value it refuses."""
    typed = False
    for name, value in headers:
        if type(value) is not str or type(name) is not str or "\n" in value or "\r" in value:
            return False
        lower = name.lower()
        if lower == "content-type":
            typed = True
        elif lower in _SPECIAL_HEADERS:
            return False
    return typed


class _Body:
    """The one-chunk body of a JSON answer; `close()` (the server calls it once the answer is sent) runs
    the reply's on_close, where the request is accounted."""

    __slots__ = ("chunk", "on_close")

    def __init__(self, chunk: bytes, on_close) -> None:
        self.chunk = chunk
        self.on_close = on_close

    def __iter__(self):
        yield self.chunk

    def close(self) -> None:
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()
