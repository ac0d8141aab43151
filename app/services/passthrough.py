"""Passthrough mode: the request goes to the Anthropic API as the client sent it, with the chosen credential;
the answer comes back unchanged while a side parser reads the usage for accounting."""
from __future__ import annotations

import json
import logging
from typing import Iterator, Mapping
from urllib.parse import quote

from app import logs
from app.errors import ProxyError, error_json, error_type_for_status, sse_error_event, upstream_error_message
from app.exchange import Incoming, Reply
from app.masking import mask_text
from app.services.recording import last_user_text
from app.services.relay import StreamBody, abandoned, failure_kind, status_kind, stream_failure
from app.services.upstream import close_quietly, iter_body
from app.sse import SSEDecoder
from app.usage import StreamUsage, classify_request, usage_from_message

log = logging.getLogger("nexus.passthrough")

ANTHROPIC_VERSION = "2023-06-01"

# RFC 9110 hop-by-hop headers, plus what the HTTP client sets itself.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})
# The client's credential headers are replaced by the chosen credential; accept-encoding by what we decode.
_REQUEST_DROP = _HOP_BY_HOP | {"authorization", "x-api-key", "accept-encoding"}
# Response headers the WSGI server sets itself, or that no longer hold once the body is decoded.
_RESPONSE_DROP = _HOP_BY_HOP | {"content-encoding", "date", "server", "set-cookie", "alt-svc"}
# Encodings urllib3 decodes with the standard library alone; the client gets the decoded bytes.
UPSTREAM_ACCEPT_ENCODING = "gzip, deflate"

_ACCOUNTED_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})


def forward_headers(client_headers: Mapping[str, str], credential) -> dict[str, str]:
    """The headers sent upstream: the client's own, minus hop-by-hop ones, with the chosen credential.

    The one place for the passthrough header rules (README: "Passthrough headers").
    """
    drop = _REQUEST_DROP
    listed = client_headers.get("connection")
    if listed:
        # RFC 9110 7.6.1: the fields a Connection header names are hop-by-hop too
        drop = drop | {name.strip().lower() for name in listed.split(",")}
    headers = {k: v for k, v in client_headers.items() if k not in drop}
    headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    headers["content-type"] = "application/json"
    headers["accept-encoding"] = UPSTREAM_ACCEPT_ENCODING
    credential.apply(headers)
    return headers


# What stays literal when the client's (percent-decoded) path is encoded again for the upstream.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def upstream_path(path: str) -> str:
    """The client's decoded path as sent upstream: percent-encoded again, never leaving the API's tree.

    Dot segments (`..`, also spelled `%2e%2e` or `..%2F`) are refused: the HTTP client resolves them, so
    `/v1/..%2F..%2Fapi/...` would reach endpoints outside `/v1/` with the operator's credential.
    """
    if path in _ACCOUNTED_PATHS:
        return path
    if any(segment in (".", "..") for segment in path.split("/")):
        raise ProxyError(404, f"Not found: {path[:200]}", "not_found_error")
    return quote(path, safe=_PATH_SAFE)


def response_headers(upstream_headers) -> list[tuple[str, str]]:
    return [(k, v) for k, v in upstream_headers.items() if k.lower() not in _RESPONSE_DROP]


class Passthrough:
    def __init__(self, settings, upstream, credentials, recorder) -> None:
        self.settings = settings
        self.upstream = upstream
        self.credentials = credentials
        self.recorder = recorder
        self.base = settings.anthropic_base_url.rstrip("/")
        self._slack_global = bool(settings.slack_webhook_url and settings.slack_enabled)

    def slack_for(self, domain: str) -> bool:
        return self._slack_global or bool(self.credentials.slack_override_for(domain))

    def forward(self, inc: Incoming, started: float) -> Reply:
        rec = inc.record
        accounted = inc.method == "POST" and inc.path in _ACCOUNTED_PATHS
        if accounted and inc.body:
            _describe(inc, rec)
        client_headers = inc.headers
        if inc.client_key:
            # the proxy's own access key is never forwarded, nor taken for an Anthropic credential
            client_headers = {k: v for k, v in client_headers.items() if k not in ("x-api-key", "authorization")}
        credential = self.credentials.resolve(inc.host, client_headers)
        rec.api_key_masked = credential.masked
        rec.auth_type = credential.kind
        url = self.base + upstream_path(inc.path) + (("?" + inc.query_string) if inc.query_string else "")
        body = inc.body if inc.method not in ("GET", "HEAD") else None
        headers = forward_headers(client_headers, credential)
        logs.debug_outgoing(rec.request_id, url, headers, inc.body, "OAuth" if credential.kind == "oauth" else "API Key")
        resp = self.upstream.send(inc.method, url, headers, body, on_sent=lambda: self.recorder.begin(rec))
        if resp.status == 401 and credential.kind == "oauth" and credential.source == "domain":
            renewed = self.credentials.refresh_after_unauthorized(credential)
            if renewed is not None:
                close_quietly(resp)
                renewed.apply(headers)
                resp = self.upstream.send(inc.method, url, headers, body)
        rec.status = resp.status
        if resp.status >= 400:
            rec.upstream_error = status_kind(resp.status)
        out_headers = response_headers(resp.headers)
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            rec.stream = True
            body = StreamBody(self._relay_stream(resp, rec, started), abandoned(resp, rec, self.recorder, started))
            self.recorder.stream_opened(rec)
            return Reply(resp.status, out_headers, body, streaming=True)
        try:
            data = resp.read()
        except Exception as exc:
            close_quietly(resp)
            rec.error_type, rec.error_message = stream_failure(exc, self.upstream.shutting_down)
            rec.upstream_error = failure_kind(exc)
            data = error_json(rec.error_type, rec.error_message)
            rec.status = 502
            return Reply(502, [("content-type", "application/json")], data, lambda: self.recorder.finish(rec, started))
        close_quietly(resp, complete=True)
        logs.debug_response(rec.request_id, resp.status, resp.headers, data)
        if (accounted or resp.status >= 400) and not _account_json(rec, data, inc.path):
            # Not a JSON object (a CDN's HTML error page, a cut body): the client gets an Anthropic error
            # it can parse, with the upstream's status (502 for a 2xx it could not use).
            status = resp.status if resp.status >= 400 else 502
            rec.status, rec.error_type = status, error_type_for_status(status)
            rec.error_message = (upstream_error_message(resp.status, data) if resp.status >= 400
                                 else "Upstream answered with a body that is not a JSON object")
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-type"]
            out_headers.append(("content-type", "application/json"))
            data = error_json(rec.error_type, rec.error_message)
            status_out = status
        else:
            status_out = resp.status
            if status_out >= 400:
                data = _masked(data)
        return Reply(status_out, out_headers, data, lambda: self.recorder.finish(rec, started))

    def _relay_stream(self, resp, rec, started: float) -> Iterator[bytes]:
        """Relay the events as they arrive; a copy goes through the SSE parser for the accounting.

        Only whole events go out (an incomplete tail waits for the rest), so an upstream that stops
        mid-event never leaves the client half an event in front of the `event: error`.
        """
        decoder = SSEDecoder()
        # The answer's text is only needed for Slack; skipping it saves parsing every text delta.
        usage = StreamUsage(collect_text=self.slack_for(rec.domain))
        completed = False
        first = True
        debug = log.isEnabledFor(logging.DEBUG)
        held = b""
        try:
            for chunk in iter_body(resp):
                if held:
                    chunk = held + chunk
                    held = b""
                if not chunk.endswith(b"\n\n"):
                    cut = _events_end(chunk)
                    if cut < len(chunk) and len(chunk) - cut <= MAX_HELD:
                        chunk, held = chunk[:cut], chunk[cut:]
                    if not chunk:
                        continue
                if b"event: error" in chunk:
                    chunk = _masked(chunk)
                if first and b"_delta" in chunk:
                    first = False
                    self.recorder.first_token(rec, started)
                yield chunk
                if debug:
                    logs.debug_chunk(rec.request_id, chunk)
                for event, data in decoder.feed(chunk):
                    if event == "message_stop" or event == "error":
                        completed = True
                    usage.feed(event, data)
            if not completed:
                # The upstream closed cleanly but before message_stop: say so rather than end silently.
                rec.error_type, rec.error_message = "api_error", "Upstream stream ended before message_stop"
                yield (b"\n\n" if decoder.pending else b"") + sse_error_event(rec.error_type, rec.error_message)
        except GeneratorExit:
            rec.error_type = rec.error_type or "client_disconnected"
            raise
        except Exception as exc:
            rec.error_type, rec.error_message = stream_failure(exc, self.upstream.shutting_down)
            rec.upstream_error = failure_kind(exc)
            yield (b"\n\n" if decoder.pending else b"") + sse_error_event(rec.error_type, rec.error_message)
        finally:
            close_quietly(resp, complete=completed and rec.error_type is None)
            _apply_usage(rec, usage)
            self.recorder.finish(rec, started)


def _masked(data: bytes) -> bytes:
    """An upstream error as relayed: an echoed credential ("invalid x-api-key sk-ant-…") masked."""
    text = data.decode("utf-8", "replace")
    masked = mask_text(text)
    return data if masked == text else masked.encode()


MAX_HELD = 1 << 20  # an "event" larger than this without a blank line is not SSE: relay it as it comes


def _events_end(buf: bytes) -> int:
    """Index just past the last blank line (the end of the last whole SSE event) in `buf`, else 0."""
    ends = (buf.rfind(b"\n\n"), buf.rfind(b"\r\n\r\n"), buf.rfind(b"\r\r"))
    return max(ends[0] + 2 if ends[0] >= 0 else 0, ends[1] + 4 if ends[1] >= 0 else 0,
               ends[2] + 2 if ends[2] >= 0 else 0)


def _describe(inc: Incoming, rec) -> None:
    """Model, stream flag, request type and user text, read from the body for accounting only."""
    try:
        body = json.loads(inc.body)
    except (ValueError, RecursionError):
        return
    if not isinstance(body, dict):
        return
    model = body.get("model")
    rec.model_requested = rec.model_used = model if isinstance(model, str) else None
    rec.stream = body.get("stream") is True
    rec.request_type = classify_request(body)
    if inc.path == "/v1/messages":
        rec.user_text = last_user_text(body)


def _account_json(rec, data: bytes, path: str) -> bool:
    """Read usage or the error from a JSON answer; False when the body is not a JSON object."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return False
    if not isinstance(obj, dict):
        return False
    if obj.get("type") == "error" or rec.status >= 400:
        err = obj.get("error") if isinstance(obj.get("error"), dict) else {}
        rec.error_type = err.get("type") or "api_error"
        rec.error_message = err.get("message")
        return True
    if path == "/v1/messages":
        _apply_usage(rec, usage_from_message(obj))
    return True


def _apply_usage(rec, usage) -> None:
    get = usage.get if isinstance(usage, dict) else (lambda k, d=None: getattr(usage, k, d))
    rec.input_tokens = get("input_tokens", 0) or 0
    rec.output_tokens = get("output_tokens", 0) or 0
    rec.cache_creation_input_tokens = get("cache_creation_input_tokens", 0) or 0
    rec.cache_read_input_tokens = get("cache_read_input_tokens", 0) or 0
    rec.tool_calls = get("tool_calls", 0) or 0
    rec.tool_names = list(get("tool_names", None) or [])
    rec.assistant_text = get("text", None)
    if rec.error_type is None and get("error_type", None):
        rec.error_type = get("error_type")
        rec.error_message = get("error_message", None)
