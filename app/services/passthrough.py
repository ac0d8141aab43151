"""Passthrough mode: the request goes to the Anthropic API as the client sent it, with the chosen credential;
the answer comes back unchanged while a side parser reads the usage for accounting."""
from __future__ import annotations

import json
import logging
import time
from typing import Iterator, Mapping
from urllib.parse import quote

import urllib3

from app import logs
from app.errors import ProxyError, error_json, error_type_for_status, sse_error_event, upstream_error_message
from app.exchange import Incoming, Reply
from app.conversation import conversation_key
from app.masking import mask_text
from app.services.access import presented_key
from app.services.credentials.pool import NEXT
from app.services.recording import last_user_text
from app.services.relay import StreamBody, abandoned, stream_failure
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

    def slack_for(self, rec) -> bool:
        return self._slack_global or bool(rec.slack_override)

    def forward(self, inc: Incoming, started: float) -> Reply:
        rec = inc.record
        accounted = inc.method == "POST" and inc.path in _ACCOUNTED_PATHS
        parsed = _describe(inc, rec) if accounted and inc.body else None
        client_headers = inc.headers
        if inc.client_key:
            # the proxy's own access key is never forwarded, nor taken for an Anthropic credential
            client_headers = {k: v for k, v in client_headers.items() if k not in ("x-api-key", "authorization")}
        config = inc.config if inc.config is not None else self.credentials.domain_config(inc.host)
        url = self.base + upstream_path(inc.path) + (("?" + inc.query_string) if inc.query_string else "")
        body = inc.body if inc.method not in ("GET", "HEAD") else None
        resp, served_by = self._send_handling_pool(inc, config, client_headers, url, body, parsed, started)
        rec.status = resp.status
        out_headers = response_headers(resp.headers)
        out_headers.extend(served_by)
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            rec.stream = True
            body = StreamBody(self._relay_stream(resp, rec, started), abandoned(resp, rec, self.recorder, started))
            return Reply(resp.status, out_headers, body, streaming=True)
        try:
            data = resp.read()
        except Exception as exc:
            close_quietly(resp)
            rec.error_type, rec.error_message = stream_failure(exc, self.upstream.shutting_down)
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

    # -- the resend layers, outermost first ----------------------------------------------------

    def _send_handling_pool(self, inc: Incoming, config, client_headers, url: str, body: bytes | None,
                            parsed: dict | None, started: float):
        """Send on the domain's pool: a 429 (or rejected) cools the credential and a 401 that survives a refresh
        breaks it, and the request goes on to the next usable one; a 529 moves on too, UPSTREAM_MAX_RETRIES
        bounding the tries. Only answers whose body was not read are re-sent, so a started stream never is.
        Returns the response and the proxy's own headers naming what served it.
        """
        rec = inc.record
        pool = config.pool
        if pool is None or pool.size == 1:
            credential, f = self.credentials.choose(config, client_headers)
            resp = self._send_handling_refresh(inc, url, client_headers, body, credential)
            if f is not None:
                rec.credential = f.name
                if pool is not None:
                    self._observe_single(pool, f, resp)
                return resp, [("x-nexus-credential", f.name)]
            return resp, []
        conversation = conversation_key(parsed, inc.client_key or presented_key(inc.headers)) if parsed else None
        budget = self.settings.read_timeout or 0.0
        tried: list = []
        overloaded = 0
        bound = self.settings.max_retries + 1
        while True:
            credential, f = self.credentials.choose(config, client_headers, conversation, tried)
            timeout = self._time_left(started, budget)
            resp = self._send_handling_refresh(inc, url, client_headers, body, credential, timeout)
            now = time.time()
            pool.learn(f, resp.headers, now)
            tried.append(f)
            rec.credential = f.name
            served = [("x-nexus-credential", f.name)] + ([("x-nexus-tries", str(len(tried)))] if len(tried) > 1 else [])
            if resp.status == 401:
                pool.broken(f, "refused with 401 after a refresh" if credential.kind == "oauth"
                            else "refused with 401 (API key)", now)
                why = "unauthorized"
            else:
                verdict = pool.judge(f, resp.status, now)
                if verdict.action != NEXT:
                    return resp, served
                why = verdict.reason
                if why == "overloaded":
                    overloaded += 1
                    if overloaded >= bound:
                        return resp, served
            if pool.pick(None, tried, now) is None or (budget and time.perf_counter() - started >= budget):
                if why == "rate_limited" or why == "unauthorized":
                    close_quietly(resp)
                    raise pool.unavailable(now)
                return resp, served
            log.info("credential %s: %s; %s re-sent on the next credential", f.name, why, rec.request_id)
            close_quietly(resp)

    def _send_handling_refresh(self, inc: Incoming, url: str, client_headers, body: bytes | None, credential,
                               timeout: urllib3.Timeout | None = None):
        """Send with one credential; an OAuth 401 refreshes the token once and re-sends."""
        rec = inc.record
        rec.api_key_masked = credential.masked
        rec.auth_type = credential.kind
        headers = forward_headers(client_headers, credential)
        logs.debug_outgoing(rec.request_id, url, headers, inc.body, "OAuth" if credential.kind == "oauth" else "API Key")
        pooled = credential.source == "domain" and timeout is not None
        kw = {"retry_statuses": _POOL_RETRY_STATUSES, "timeout": timeout} if pooled else {}
        resp = self.upstream.send(inc.method, url, headers, body, **kw)
        if resp.status == 401 and credential.kind == "oauth" and credential.source == "domain":
            renewed = self.credentials.refresh_after_unauthorized(credential)
            if renewed is not None:
                close_quietly(resp)
                renewed.apply(headers)
                resp = self.upstream.send(inc.method, url, headers, body, **kw)
        return resp

    def _time_left(self, started: float, budget: float) -> urllib3.Timeout:
        """This try's timeouts: the configured ones, cut to what is left of the request's time."""
        s = self.settings
        if not budget:
            return urllib3.Timeout(connect=s.connect_timeout or None, read=s.read_timeout or None)
        left = max(0.5, budget - (time.perf_counter() - started))
        return urllib3.Timeout(connect=min(s.connect_timeout or left, left), read=min(s.read_timeout or left, left))

    def _observe_single(self, pool, f, resp) -> None:
        """A lone credential is always used; its answers still feed its state for GET / and Slack."""
        now = time.time()
        pool.learn(f, resp.headers, now)
        if resp.status == 401:
            pool.broken(f, "refused with 401 after a refresh" if f.kind == "oauth" else "refused with 401 (API key)", now)
        else:
            pool.judge(f, resp.status, now)

    def _relay_stream(self, resp, rec, started: float) -> Iterator[bytes]:
        """Relay the events as they arrive; a copy goes through the SSE parser for the accounting.

        Only whole events go out (an incomplete tail waits for the rest), so an upstream that stops
        mid-event never leaves the client half an event in front of the `event: error`.
        """
        decoder = SSEDecoder()
        # The answer's text is only needed for Slack; skipping it saves parsing every text delta.
        usage = StreamUsage(collect_text=self.slack_for(rec))
        completed = False
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


# A pool handles 429 and 529 itself (the next credential); only a 503 is worth the same credential again.
_POOL_RETRY_STATUSES = frozenset({503})

MAX_HELD = 1 << 20  # an "event" larger than this without a blank line is not SSE: relay it as it comes


def _events_end(buf: bytes) -> int:
    """Index just past the last blank line (the end of the last whole SSE event) in `buf`, else 0."""
    ends = (buf.rfind(b"\n\n"), buf.rfind(b"\r\n\r\n"), buf.rfind(b"\r\r"))
    return max(ends[0] + 2 if ends[0] >= 0 else 0, ends[1] + 4 if ends[1] >= 0 else 0,
               ends[2] + 2 if ends[2] >= 0 else 0)


def _describe(inc: Incoming, rec) -> dict | None:
    """Model, stream flag, request type and user text, read from the body for accounting only."""
    try:
        body = json.loads(inc.body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    model = body.get("model")
    rec.model_requested = rec.model_used = model if isinstance(model, str) else None
    rec.stream = body.get("stream") is True
    rec.request_type = classify_request(body)
    if inc.path == "/v1/messages":
        rec.user_text = last_user_text(body)
    return body


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
