"""Anthropic-shaped errors: the one place that maps statuses to error types and shapes error bodies."""
from __future__ import annotations

import json
from typing import Mapping

from app.jsonenc import compact_ascii
from app.masking import mask_text

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

# The reverse, for errors we raise by type: the status a client expects for it.
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def error_type_for_status(status: int) -> str:
    """The Anthropic error type a client expects for an HTTP status."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


def status_for_error_type(error_type: str) -> int:
    return _STATUS_BY_TYPE.get(error_type, 500)


def error_body(error_type: str, message: str) -> dict:
    """`{"type":"error","error":{"type":…,"message":…}}`, the message masked.

    Every error a client sees is built here, and some carry an upstream's own words: an upstream
    that echoes the credential it was sent ("Incorrect API key provided: …") must not show it.
    """
    return {"type": "error", "error": {"type": error_type, "message": mask_text(message)}}


def error_json(error_type: str, message: str) -> bytes:
    return compact_ascii(error_body(error_type, message)).encode()


def sse_error_event(error_type: str, message: str) -> bytes:
    """The `event: error` that ends a stream that has already started."""
    return b"event: error\ndata: " + error_json(error_type, message) + b"\n\n"


class ProxyError(Exception):
    """An error the proxy answers with an Anthropic error body.

    Raised anywhere below the blueprints; the app's error handler shapes it.
    """

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

    def body(self) -> dict:
        return error_body(self.error_type, self.message)

    def sse(self) -> bytes:
        return sse_error_event(self.error_type, self.message)


def invalid_request(message: str) -> ProxyError:
    return ProxyError(400, message, "invalid_request_error")


def body_too_large(limit: int) -> ProxyError:
    return ProxyError(413, f"Request body is too large (limit {limit} bytes)", "request_too_large")


def upstream_error_message(status: int, body: bytes | str | None) -> str:
    """The upstream's own message from an error body (Anthropic or OpenAI shape), else a short generic one."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("msg")
            if isinstance(msg, str) and msg:
                return msg
        elif isinstance(err, str) and err:
            return err
        msg = data.get("message") or data.get("detail")
        if isinstance(msg, str) and msg:
            return msg
    text = text.strip()
    if text and len(text) < 500 and "<html" not in text.lower():
        return f"Upstream returned HTTP {status}: {text}"
    return f"Upstream returned HTTP {status}"
