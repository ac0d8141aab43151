"""Logging setup, the one-line access log, and the masked DEBUG dumps.

Loggers: ``nexus`` (the app; children like ``nexus.upstream``), ``nexus.access`` (one line per request at
INFO), ``nexus.debug`` (the DEBUG dumps below). Every record that reaches the ``nexus`` handler is run
through `mask_text` first, so even a careless ``log.info("%s", key)`` cannot print a registered secret.

The debug helpers return at once unless ``nexus.debug`` is enabled for DEBUG: the hot path pays one
cached level check.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from app.masking import mask_headers, mask_json, mask_text
from config.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
MAX_STR = 1000  # long strings in dumped bodies are cut to this many characters
MAX_TEXT = 4000  # bodies that are not JSON, and single SSE chunks

app_log = logging.getLogger("nexus")
access_log = logging.getLogger("nexus.access")
debug_log = logging.getLogger("nexus.debug")

_HANDLER_TAG = "_nexus_handler"
_plain_formatter = logging.Formatter()


class MaskingFilter(logging.Filter):
    """Masks the fully formatted message (and traceback) of every record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the line, nor leak its args
            message = str(record.msg)
        record.msg = mask_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _plain_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


def _level(settings: Settings) -> int:
    if settings.debug:
        return logging.DEBUG
    name = settings.log_level.upper()
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO


# Modules under app/ that log with `getLogger(__name__)` (credentials, OAuth, translation) are not
# children of ``nexus``: without the handler on ``app`` too, their INFO lines ("OAuth token refreshed",
# "credential file ... is newer than the stored copy") were never shown, and their warnings went out
# unmasked through Python's last-resort handler.
# psycopg: its pool reports connection failures (during a database outage) on its own logger
_APP_LOGGERS = (app_log, logging.getLogger("app"), logging.getLogger("psycopg"))


def configure_logging(settings, stream=None) -> None:
    """One masked stderr handler on ``nexus`` and ``app`` at the configured level; calling again replaces it."""
    level = _level(settings)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_TAG, True)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(MaskingFilter())
    for logger in _APP_LOGGERS:
        for old in list(logger.handlers):
            if getattr(old, _HANDLER_TAG, False):
                logger.removeHandler(old)
        logger.addHandler(handler)
        # psycopg's own debug output is noise for an operator; its warnings are what matter
        logger.setLevel(max(level, logging.WARNING) if logger.name == "psycopg" else level)


# ---------------------------------------------------------------- access log

def access_line(
    method: str,
    path: str,
    status: int,
    duration_ms: float,
    domain: str,
    request_id: str,
    model: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    stream: bool = False,
    error_type: str | None = None,
) -> str:
    """``POST /v1/messages 200 812ms domain=a.example id=req_1 model=m in=10 out=20 stream error=…``."""
    line = (
        f"{method} {path} {status} {duration_ms:.0f}ms domain={domain or '-'} id={request_id} "
        f"model={model or '-'} in={input_tokens} out={output_tokens}"
    )
    if stream:
        line += " stream"
    if error_type:
        line += f" error={error_type}"
    return line


def log_access(*args: Any, **kwargs: Any) -> None:
    """`access_line(...)` logged at INFO on ``nexus.access``."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(access_line(*args, **kwargs))


def log_access_record(rec) -> None:
    """The access line for a finished `RequestRecord`."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(access_line(
            rec.method, rec.path, rec.status, rec.duration_ms, rec.domain, rec.request_id,
            rec.model_used or rec.model_requested, rec.input_tokens, rec.output_tokens, rec.stream, rec.error_type,
        ))


# ---------------------------------------------------------------- debug dumps

def debug_enabled() -> bool:
    return debug_log.isEnabledFor(logging.DEBUG)


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)


def _format_body(body: Any) -> str:
    """A masked body: formatted JSON when it is JSON, else masked text, long strings cut."""
    if body is None or body == b"" or body == "":
        return "(empty)"
    if isinstance(body, (dict, list)):
        try:
            return _dump(mask_json(body, max_str=MAX_STR))
        except RecursionError:  # a debug dump must never fail the request it describes
            return "(body nested too deeply to show)"
    if isinstance(body, (bytes, bytearray, memoryview)):
        text = bytes(body).decode("utf-8", "replace")
    else:
        text = str(body)
    try:
        return _dump(mask_json(json.loads(text), max_str=MAX_STR))
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the masking can walk
        masked = mask_text(text)
        return masked if len(masked) <= MAX_TEXT else f"{masked[:MAX_TEXT]}... ({len(masked)} chars)"


_QUERY_SECRET_HINTS = ("key", "token", "secret", "auth", "passw", "sig", "code")


def _mask_url(url: str) -> str:
    """URL with secret-looking query parameters masked (``?key=…``, ``?access_token=…``, ``?sig=…``)."""
    if "?" not in url:
        return mask_text(url)
    parts = urlsplit(url)
    query = [
        (name, "****" if any(h in name.lower() for h in _QUERY_SECRET_HINTS) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return mask_text(urlunsplit(parts._replace(query=urlencode(query, safe="*"))))


def _auth_label(auth_type: str | None) -> str:
    if not auth_type:
        return "none"
    key = auth_type.lower().replace(" ", "_")
    return {"oauth": "OAuth", "api_key": "API Key", "bearer": "Bearer"}.get(key, auth_type)


def _block(title: str, request_id: str, lines: list[str]) -> str:
    return "\n".join([f"=== {title} ===", f"Request ID: {request_id}", *lines, "=" * 22])


def debug_incoming(request_id: str, method: str, url: str, headers: Mapping[str, str] | None, body_bytes: Any) -> None:
    """The request as the client sent it."""
    if not debug_log.isEnabledFor(logging.DEBUG):
        return
    debug_log.debug(_block("Incoming Request", request_id, [
        f"Method: {method}",
        f"URL: {_mask_url(url)}",
        f"Headers: {_dump(mask_headers(headers))}",
        f"Request Body: {_format_body(body_bytes)}",
    ]))


def debug_outgoing(request_id: str, url: str, headers: Mapping[str, str] | None, body: Any, auth_type: str | None) -> None:
    """The transformed request the proxy sends upstream, with its authentication type."""
    if not debug_log.isEnabledFor(logging.DEBUG):
        return
    debug_log.debug(_block("Outgoing Request", request_id, [
        f"URL: {_mask_url(url)}",
        f"Authentication type: {_auth_label(auth_type)}",
        f"Forwarding headers: {_dump(mask_headers(headers))}",
        f"Request Body: {_format_body(body)}",
    ]))


def debug_response(request_id: str, status: int, headers: Mapping[str, str] | None, body: Any) -> None:
    """The upstream's answer (status, headers, body with long texts cut)."""
    if not debug_log.isEnabledFor(logging.DEBUG):
        return
    debug_log.debug(_block("Response", request_id, [
        f"Status: {status}",
        f"Headers: {_dump(mask_headers(headers))}",
        f"Response Body: {_format_body(body)}",
    ]))


def debug_chunk(request_id: str, chunk_bytes: Any) -> None:
    """One SSE chunk of a stream, on one line (newlines shown as \\n)."""
    if not debug_log.isEnabledFor(logging.DEBUG):
        return
    if isinstance(chunk_bytes, (bytes, bytearray, memoryview)):
        text = bytes(chunk_bytes).decode("utf-8", "replace")
    else:
        text = str(chunk_bytes)
    text = mask_text(text)
    if len(text) > MAX_TEXT:
        text = f"{text[:MAX_TEXT]}... ({len(text)} chars)"
    debug_log.debug("[%s] SSE chunk: %s", request_id, text.replace("\r", "").replace("\n", "\\n"))


def debug_usage(request_id: str, domain: str, usage_dict: Mapping[str, Any] | None,
                domain_counts: Mapping[str, Any] | None = None) -> None:
    """The token usage extracted from the answer, and the domain's updated counts."""
    if not debug_log.isEnabledFor(logging.DEBUG):
        return
    lines = [f"Domain: {domain}", f"Token usage: {_dump(mask_json(dict(usage_dict or {})))}"]
    if domain_counts is not None:
        lines.append(f"Domain totals: {_dump(mask_json(dict(domain_counts)))}")
    debug_log.debug(_block("Token Usage", request_id, lines))


__all__ = [
    "LOG_FORMAT", "MaskingFilter", "configure_logging", "access_line", "log_access", "log_access_record",
    "debug_enabled", "debug_incoming", "debug_outgoing", "debug_response", "debug_chunk", "debug_usage",
]
