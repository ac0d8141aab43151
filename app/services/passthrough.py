"""Passthrough mode: the request goes to the Anthropic API as the client sent it, with the chosen credential;
the answer comes back unchanged while a side parser reads the usage for accounting."""
from __future__ import annotations

import logging
import time
from urllib.parse import quote

import urllib3

from .. import jsoncodec, logs
from ..client_key import presented_key
from ..conversation import conversation_key
from ..errors import (ProxyError, error_json, error_type_for_status, from_upstream, sse_error_event,
                     upstream_error_message, upstream_host)
from ..exchange import Incoming, Reply
from ..records import RequestRecord
from ..masking import mask_text
from .credentials import CredentialManager
from .credentials.pool import NEXT
from .headers import forward_headers, response_headers
from .recording import Recorder, last_user_text
from .relay import failure_kind, relay_stream, status_kind, stream_failure
from .upstream import UpstreamClient, close_quietly
from ..sse import SSEDecoder
from ..usage import StreamUsage, Usage, apply_usage, classify_request, usage_from_message
from ..settings import Settings
from ..translation.thinking import PREFIX as PROXY_SIGNATURE_PREFIX
from ..translation.thinking import without_proxy_thinking

log = logging.getLogger("nexus.passthrough")

_ACCOUNTED_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
# How the proxy's thinking signature starts inside a JSON body: a byte search finds the rare body that
# carries one, so every other body is forwarded as it came.
_PROXY_SIGNATURE_MARK = b'"' + PROXY_SIGNATURE_PREFIX.encode("ascii")
# An "event" larger than this without a blank line is not SSE: relay it as it comes instead of holding it.
MAX_HELD = 1 << 20


# What stays literal when the client's (percent-decoded) path is encoded again for the upstream.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def upstream_path(path: str) -> str:
    """The client's decoded path as sent upstream: percent-encoded again, never leaving the API's tree.

    Dot segments (`..`, also spelled `%2e%2e` or `..%2F`) are refused: the HTTP client resolves them, so
    `/v1/..%2F..%2Fapi/...` would reach endpoints outside `/v1/` with the operator's credential. Empty
    segments (`/v1//messages`) are refused too: no API path has one.
    """
    if path in _ACCOUNTED_PATHS:
        return path
    if any(segment in (".", "..", "") for segment in path[1:].split("/")):
        raise ProxyError(404, f"Not found: {path[:200]}", "not_found_error")
    return quote(path, safe=_PATH_SAFE)


class Passthrough:
    def __init__(self, settings: Settings, upstream: UpstreamClient, credentials: CredentialManager,
                 recorder: Recorder) -> None:
        self.settings = settings
        self.upstream = upstream
        self.credentials = credentials
        self.recorder = recorder
        self.base = settings.anthropic_base_url.rstrip("/")
        self.upstream_host = upstream_host(self.base)
        self._slack_global = bool(settings.slack_webhook_url and settings.slack_enabled)

    def slack_for(self, rec: RequestRecord) -> bool:
        return self._slack_global or bool(rec.slack_override)

    def forward(self, inc: Incoming) -> Reply:
        rec = inc.record
        accounted = inc.method == "POST" and inc.path in _ACCOUNTED_PATHS
        parsed = _describe(inc, rec) if accounted and inc.body else None
        if inc.method == "POST" and inc.path == "/v1/messages":
            inc.admit(rec.model_requested)
        client_headers = inc.headers
        if inc.client_key:
            # the proxy's own access key is never forwarded, nor taken for an Anthropic credential
            client_headers = {k: v for k, v in client_headers.items() if k not in ("x-api-key", "authorization")}
        config = inc.config if inc.config is not None else self.credentials.domain_config(inc.host)
        url = self.base + upstream_path(inc.path) + (("?" + inc.query_string) if inc.query_string else "")
        body = inc.body if inc.method not in ("GET", "HEAD") else None
        if parsed is not None and _PROXY_SIGNATURE_MARK in body:
            body = _without_proxy_thinking(body, parsed)
        resp, served_by = self._send_handling_pool(inc, config, client_headers, url, body, parsed)
        rec.status = resp.status
        if resp.status >= 400:
            rec.upstream_error = status_kind(resp.status)
        out_headers = response_headers(resp.headers)
        out_headers.extend(served_by)
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            rec.stream = True
            # The answer's text is only needed for Slack; skipping it saves parsing every text delta.
            plug = RelayedStream(self.slack_for(rec), self.settings.max_sse_event_bytes)
            body = relay_stream(resp, rec, plug, self.recorder, shutting_down=lambda: self.upstream.shutting_down,
                                host=self.upstream_host)
            return Reply(resp.status, out_headers, body, streaming=True)
        try:
            data = resp.read()
        except Exception as exc:
            close_quietly(resp)
            rec.error_type, rec.error_message = stream_failure(exc, self.upstream.shutting_down, self.upstream_host)
            rec.upstream_error = failure_kind(exc)
            data = error_json(rec.error_type, rec.error_message)
            rec.status = 502
            return Reply(502, [("content-type", "application/json")], data, lambda: self.recorder.finish(rec))
        close_quietly(resp, complete=True)
        logs.debug_response(rec.request_id, resp.status, resp.headers, data)
        if (accounted or resp.status >= 400) and not _account_json(rec, data, inc.path):
            # Not a JSON object (a CDN's HTML error page, a cut body): the client gets an Anthropic error
            # it can parse, with the upstream's status (502 for a 2xx it could not use).
            status = resp.status if resp.status >= 400 else 502
            rec.status, rec.error_type = status, error_type_for_status(status)
            rec.error_message = (upstream_error_message(resp.status, data, self.upstream_host) if resp.status >= 400
                                 else from_upstream(self.upstream_host, "answered with a body that is not a JSON object"))
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-type"]
            out_headers.append(("content-type", "application/json"))
            data = error_json(rec.error_type, rec.error_message)
            status_out = status
        else:
            status_out = resp.status
            if status_out >= 400:
                data = _masked(data)
        return Reply(status_out, out_headers, data, lambda: self.recorder.finish(rec))

    # -- the resend layers, outermost first ----------------------------------------------------

    def _send_handling_pool(self, inc: Incoming, config, client_headers, url: str, body: bytes | None,
                            parsed: dict | None):
        """Send on the domain's pool: a 429 (or rejected) cools the credential and a 401 that survives a refresh
        breaks it, and the request goes on to the next usable one; a 529 moves on too, UPSTREAM_MAX_RETRIES
        bounding the tries. Only answers whose body was not read are re-sent, so a started stream never is.
        Returns the response and the proxy's own headers naming what served it.
        """
        rec = inc.record
        pool = config.pool
        if pool is None or pool.size == 1:
            credential, f = self.credentials.choose(config, client_headers)
            resp = self._send_with(inc, url, client_headers, body, credential, first=True)
            if f is None:
                return resp, []
            rec.credential = f.name
            if pool is not None:
                self._observe_single(pool, f, resp)
            return resp, [("x-nexus-credential", f.name)]
        conversation = conversation_key(parsed, inc.client_key or presented_key(inc.headers)) if parsed else None
        budget = self.settings.read_timeout or 0.0
        tried: list = []
        overloaded = 0
        bound = self.settings.max_retries + 1
        while True:
            credential, f = self.credentials.choose(config, client_headers, conversation, tried)
            resp = self._send_with(inc, url, client_headers, body, credential, self.upstream.time_left(rec.started, budget),
                                   first=not tried)
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
            if pool.pick(None, tried, now) is None or (budget and time.perf_counter() - rec.started >= budget):
                if why == "rate_limited" or why == "unauthorized":
                    close_quietly(resp)
                    raise pool.unavailable(now)
                return resp, served
            log.info("credential %s: %s; %s re-sent on the next credential", f.name, why, rec.request_id)
            close_quietly(resp)

    def _send_with(self, inc: Incoming, url: str, client_headers, body: bytes | None, credential,
                   timeout: urllib3.Timeout | None = None, *, first: bool):
        """One credential's try: its headers, then the send (a pool passes the time left and keeps 429/529 to
        itself). The first try journals the request once it is on the wire, in case the worker dies."""
        rec = inc.record
        rec.api_key_masked = credential.masked
        rec.auth_type = credential.kind
        headers = forward_headers(client_headers, credential)
        logs.debug_outgoing(rec.request_id, url, headers, inc.body, "OAuth" if credential.kind == "oauth" else "API Key")
        kw = {"retry_statuses": _POOL_RETRY_STATUSES, "timeout": timeout} if timeout is not None else {}
        if first:
            kw["on_sent"] = lambda: self.recorder.begin(rec)
        return self._send_handling_refresh(inc.method, url, headers, body, credential, **kw)

    def _send_handling_refresh(self, method: str, url: str, headers: dict, body: bytes | None, credential, **kw):
        """Send the request; after a 401 on a domain's OAuth token, refresh it and resend once."""
        resp = self.upstream.send(method, url, headers, body, **kw)
        if resp.status == 401 and credential.kind == "oauth" and credential.source == "domain":
            renewed = self.credentials.refresh_after_unauthorized(credential)
            if renewed is not None:
                close_quietly(resp)
                renewed.apply(headers)
                kw.pop("on_sent", None)  # journaled by the first send
                resp = self.upstream.send(method, url, headers, body, **kw)
        return resp

    def _observe_single(self, pool, f, resp) -> None:
        """A lone credential is always used; its answers still feed its state for GET / and Slack."""
        now = time.time()
        pool.learn(f, resp.headers, now)
        if resp.status == 401:
            pool.broken(f, "refused with 401 after a refresh" if f.kind == "oauth" else "refused with 401 (API key)", now)
        else:
            pool.judge(f, resp.status, now)


class RelayedStream:
    """The passthrough plug of the relay frame: the upstream's events go out untouched (an echoed secret in
    an `event: error` masked), and a copy goes through the SSE parser for the accounting.

    Only whole events go out (an incomplete tail waits for the rest), so an upstream that stops mid-event
    never leaves the client half an event in front of the `event: error`.
    """

    __slots__ = ("decoder", "side", "done", "reusable", "_held", "_held_size", "_ended")

    def __init__(self, collect_text: bool, max_event: int) -> None:
        self.decoder = SSEDecoder(max_event)
        self.side = StreamUsage(collect_text=collect_text)
        self.done = False  # read to the upstream's end: what follows message_stop is relayed too
        self.reusable = False  # message_stop or an error event came
        self._held: list[bytes] = []  # the incomplete last event, as it arrived
        self._held_size = 0
        self._ended: tuple[str, str] | None = None

    def head(self) -> bytes:
        return b""

    def feed(self, chunk: bytes) -> bytes:
        held = self._held
        if not held and chunk.endswith(b"\n\n"):  # the usual case: whole events
            out = chunk
        else:
            # only the new bytes are searched for the end of an event: linear however large one event is
            cut = _events_end(chunk)
            if cut == 0 and held and chunk[:1] == b"\n" and held[-1][-1:] == b"\n":
                cut = 1  # the blank line straddles two reads
            if cut == 0:
                if self._held_size + len(chunk) <= MAX_HELD:
                    held.append(chunk)
                    self._held_size += len(chunk)
                    return b""
                cut = len(chunk)  # too long for an event still to come: relay it as it comes
            rest = chunk[cut:]
            if len(rest) > MAX_HELD:
                cut, rest = len(chunk), b""
            head = chunk if cut == len(chunk) else chunk[:cut]
            if held:
                held.append(head)
                head = b"".join(held)
            out = head
            self._held = [rest] if rest else []
            self._held_size = len(rest)
        if b"event: error" in out:
            out = _masked(out)
        return out

    def seen(self, out: bytes) -> None:
        if not self.side.wants_text and out.endswith(b"\n\n") and self.decoder.idle and _nothing_to_account(out):
            # Whole events that are all deltas: the parser would skip each of them, so skip parsing them.
            return
        for event, data in self.decoder.feed(out):
            if event == "message_stop" or event == "error":
                self.reusable = True
            try:
                self.side.feed(event, data)
            except Exception:  # the side parser reads; it never decides what the client gets
                log.warning("usage side parser failed on a %s event", event, exc_info=True)

    def tail(self) -> bytes:
        if self.reusable:
            return b""
        # The upstream closed cleanly but before message_stop: say so rather than end silently.
        self._ended = ("api_error", "Upstream stream ended before message_stop")
        return self.failure(*self._ended)

    def failure(self, error_type: str, message: str) -> bytes:
        return (b"\n\n" if self.decoder.pending else b"") + sse_error_event(error_type, message)

    def usage(self) -> Usage:
        usage = self.side.usage()
        if self._ended and usage.error_type is None:
            usage.error_type, usage.error_message = self._ended
        return usage


# A pool handles 429 and 529 itself (the next credential); only a 503 is worth the same credential again.
_POOL_RETRY_STATUSES = frozenset({503})


def _nothing_to_account(out: bytes) -> bool:
    """No event in `out` carries usage, a tool call, an error or the end: each of those names its type in its
    bytes (the `event:` line, or the data's "type" when a producer leaves the line out), so a search for the
    names decides it without parsing. Text that merely mentions a name costs a parse, never a miss."""
    return b"message_" not in out and b"content_block_start" not in out and b"error" not in out


def _masked(data: bytes) -> bytes:
    """An upstream error as relayed: an echoed credential ("invalid x-api-key sk-ant-…") masked."""
    text = data.decode("utf-8", "replace")
    masked = mask_text(text)
    return data if masked == text else masked.encode()


def _events_end(buf: bytes) -> int:
    """Index just past the last blank line (the end of the last whole SSE event) in `buf`, else 0."""
    ends = (buf.rfind(b"\n\n"), buf.rfind(b"\r\n\r\n"), buf.rfind(b"\r\r"))
    return max(ends[0] + 2 if ends[0] >= 0 else 0, ends[1] + 4 if ends[1] >= 0 else 0,
               ends[2] + 2 if ends[2] >= 0 else 0)


def _without_proxy_thinking(raw: bytes, parsed: dict) -> bytes:
    """The body to forward: without the thinking the proxy signed in translation (Anthropic would refuse the
    request for it), else exactly as the client sent it."""
    stripped = without_proxy_thinking(parsed)
    if stripped is None:
        return raw
    try:
        return jsoncodec.dumps(stripped)
    except ValueError:  # a lone surrogate the lenient read let through: Anthropic judges the original
        return raw


def _describe(inc: Incoming, rec: RequestRecord) -> dict | None:
    """Model, stream flag, request type and user text, read from the body for accounting (and the pool's
    conversation key). It never fails the request: whatever the body holds, the upstream judges it.
    """
    try:
        return _read_description(inc, rec)
    except Exception:
        log.debug("the request body could not be described for accounting", exc_info=True)
        return None


def _read_description(inc: Incoming, rec: RequestRecord) -> dict | None:
    try:
        body = jsoncodec.loads_lenient(inc.body)
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


def _account_json(rec: RequestRecord, data: bytes, path: str) -> bool:
    """Read usage or the error from a JSON answer; False when the body is not a JSON object."""
    try:
        obj = jsoncodec.loads_lenient(data)
    except ValueError:
        return False
    if not isinstance(obj, dict):
        return False
    if obj.get("type") == "error" or rec.status >= 400:
        err = obj.get("error") if isinstance(obj.get("error"), dict) else {}
        kind, message = err.get("type"), err.get("message")
        rec.error_type = kind if isinstance(kind, str) and kind else "api_error"
        rec.error_message = message if isinstance(message, str) else None
        return True
    if path == "/v1/messages":
        apply_usage(rec, usage_from_message(obj))
    return True
