"""Anthropic-shaped errors: the one place that maps statuses to error types and shapes error bodies."""
from __future__ import annotations

import json
from typing import Any, Mapping

from .jsoncodec import dumps_lenient
from .masking import mask_text

# Anthropic's documented error types by HTTP status.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# Every error type Anthropic documents, and what OpenAI-compatible upstreams call theirs.
ERROR_TYPES = frozenset(_TYPE_BY_STATUS.values())
_OPENAI_ERROR_TYPES = {
    "rate_limit_exceeded": "rate_limit_error",
    "insufficient_quota": "rate_limit_error",
    "server_error": "api_error",
    "invalid_request_error": "invalid_request_error",
}


def error_type_for_status(status: int) -> str:
    """The Anthropic error type a client expects for an HTTP status."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


def error_type_for_upstream(error: Any) -> str:
    """The Anthropic error type for an OpenAI-style error object (seen mid-stream or in a 2xx body)."""
    if isinstance(error, dict):
        code = error.get("code")
        if isinstance(code, str) and code.isdigit():
            code = int(code)
        if type(code) is int and 400 <= code <= 599:
            return error_type_for_status(code)
        for key in ("type", "code"):
            value = error.get(key)
            if value in ERROR_TYPES:
                return value
            if value in _OPENAI_ERROR_TYPES:
                return _OPENAI_ERROR_TYPES[value]
    return "api_error"


# The status a client expects for an error type (a failed Responses API answer arrives with HTTP 200).
_STATUS_BY_TYPE = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                   "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                   "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}


def status_for_error_type(error_type: str) -> int:
    return _STATUS_BY_TYPE.get(error_type, 500)


def error_body(error_type: str, message: str) -> dict:
    """`{"type":"error","error":{"type":…,"message":…}}`, the message masked.

    Every error a client sees is built here, and some carry an upstream's own words: an upstream
    that echoes the credential it was sent ("Incorrect API key provided: …") must not show it.
    """
    return {"type": "error", "error": {"type": error_type, "message": mask_text(message)}}


def error_json(error_type: str, message: str) -> bytes:
    return dumps_lenient(error_body(error_type, message))


def sse_error_event(error_type: str, message: str) -> bytes:
    """The `event: error` that ends a stream that has already started."""
    return b"event: error\ndata: " + error_json(error_type, message) + b"\n\n"


class ProxyError(Exception):
    """An error the proxy answers with an Anthropic error body.

    Raised anywhere below the blueprints; the app's error handler shapes it. `upstream_kind` says how the
    upstream failed when it did (a kind of nexus_upstream_errors_total), None for the proxy's own errors.
    """

    upstream_kind: str | None = None
    upstream_status: int | None = None  # the status the upstream answered with, when it answered

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or error_type_for_status(status)
        self.headers = dict(headers or {})


def invalid_request(message: str) -> ProxyError:
    return ProxyError(400, message, "invalid_request_error")


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(413, f"Request body is too large (limit {limit} bytes)", "request_too_large")


def _message_in(error: Any) -> str | None:
    """The message of an error object in any of the shapes upstreams use (`message`, `detail`, `msg`)."""
    if isinstance(error, dict):
        for key in ("message", "detail", "msg"):
            msg = error.get(key)
            if isinstance(msg, str) and msg:
                return msg
        return None
    return error if isinstance(error, str) and error else None


def upstream_error_text(error: Any) -> str:
    """The text of an upstream's error object (an OpenAI-style `error` inside a stream or a 2xx body)."""
    if isinstance(error, dict):
        return _message_in(error) or json.dumps(error)[:500]
    return str(error)[:500]


# What the upstream did, by its status: the message then says it was the upstream, not the proxy.
_UPSTREAM_VERB = {
    401: "rejected the key",
    402: "refused the request for billing reasons",
    403: "refused access",
    404: "did not find the model or path",
    408: "timed out",
    413: "refused the request as too large",
    429: "is rate limiting",
    529: "is overloaded",
}


def upstream_host(url: str) -> str:
    """The upstream's host (and port, if any) as a user knows it: `models.github.ai`, `127.0.0.1:11434`."""
    from urllib.parse import urlsplit

    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return "(unknown)"
    return netloc.rsplit("@", 1)[-1] or "(unknown)"


def from_upstream(host: str, detail: str, status: int | None = None) -> str:
    """An error the upstream caused, naming it, so nobody takes it for the proxy's own refusal.

    With a status: `upstream models.github.ai rejected the key (401): Bad credentials`.
    Without one (the connection failed): `upstream models.github.ai is unreachable: …`.
    """
    if status is None:
        return f"upstream {host} {detail}"
    verb = _UPSTREAM_VERB.get(status) or ("failed" if status >= 500 else "refused the request")
    return f"upstream {host} {verb} ({status}): {detail}"


def upstream_error_message(status: int, body: bytes | str | None, host: str) -> str:
    """The message for an upstream's error answer: who answered, what it did, and its own words.

    `upstream models.github.ai rejected the key (401): Bad credentials`. The upstream's words come from
    an Anthropic or OpenAI error body, else a short plain-text body; an HTML page is not repeated.
    """
    return from_upstream(host, _upstream_words(body) or "no error message", status)


def _upstream_words(body: bytes | str | None) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        msg = _message_in(data.get("error", data)) or _message_in(data)
        if msg:
            return msg
    text = text.strip()
    if text and len(text) < 500 and "<html" not in text.lower():
        return text
    return ""
