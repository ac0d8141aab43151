"""Translation mode: an Anthropic request in, an OpenAI Chat Completions call out, an Anthropic answer back."""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Iterator

import urllib3

from app import logs
from app.errors import ProxyError, invalid_request
from app.exchange import SSE_HEADERS, Incoming, Reply, json_reply
from app.masking import mask_secret
from app.services.access import presented_key
from app.services.recording import last_user_text
from app.services.relay import (StreamBody, abandoned, read_error_body, stream_failure, upstream_http_error,
                                with_keepalive)
from app.services.upstream import close_quietly, iter_body
from app.sse import SSEDecoder
from app.services.fallback import Upstreams
from app.translation.models import model_map_for, route
from app.translation.request import UnsupportedContent, anthropic_to_openai
from app.translation.response import UpstreamFormatError, openai_to_anthropic
from app.translation.stream import StreamTranslator, format_sse
from app.translation.tokens import estimate_input_tokens
from app.translation.validation import RequestValidationError, validate_count_tokens_request, validate_messages_request
from app.usage import classify_request
from app.version import __version__

log = logging.getLogger("nexus.translation")

PING = format_sse("ping", {"type": "ping"})

# An escaped UTF-16 surrogate (json.loads accepts a lone "\ud800"; it is not Unicode, and upstreams reject it).
_SURROGATE_ESCAPE = re.compile(rb"\\ud[89a-f][0-9a-f]{2}")


def _has_lone_surrogate(data: bytes) -> bool:
    """Whether an escaped high surrogate lacks its low partner right after it, or a low one stands alone.

    Literal-prefixed matching keeps this linear; `\\` before a match means escaped text, not an escape.
    """
    expect_low_at = -1
    for m in _SURROGATE_ESCAPE.finditer(data):
        start = m.start()
        backslashes = 0
        while start - backslashes - 1 >= 0 and data[start - backslashes - 1] == 0x5C:
            backslashes += 1
        if backslashes % 2:
            continue
        high = data[start + 3] in b"89ab"
        if expect_low_at >= 0:
            if start != expect_low_at or high:
                return True
            expect_low_at = -1
        elif high:
            expect_low_at = m.end()
        else:
            return True
    return expect_low_at >= 0


def encode_body(payload: dict) -> bytes:
    """The upstream body. ensure_ascii (the default) is ~3x faster than ensure_ascii=False on large
    bodies; it escapes every non-ASCII character, so a lone surrogate shows as an escape we can find."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    if b"\\ud" in data and _has_lone_surrogate(data):
        raise invalid_request("Request body contains an unpaired UTF-16 surrogate escape (such as \\ud800), "
                              "which is not valid Unicode")
    return data


class Translator:
    def __init__(self, settings, upstream, recorder) -> None:
        self.settings = settings
        self.upstream = upstream
        self.recorder = recorder
        self.url = settings.anthropic_proxy_base_url.rstrip("/") + "/chat/completions"
        self.upstreams = Upstreams(settings)
        self.user_agent = f"claude-nexus-proxy/{__version__}"
        self._completion_tokens_models: set[str] = set()

    # -- POST /v1/messages ------------------------------------------------------------------
    def messages(self, inc: Incoming, started: float) -> Reply:
        rec = inc.record
        body = _read_request(inc, validate_messages_request)
        rec.user_text = last_user_text(body)
        stream = body.get("stream") is True
        rec.stream = stream
        resp, chosen, served_by = self._send_handling_failover(inc, body, stream, started)
        model = rec.model_requested or chosen.model
        stop_sequences = body.get("stop_sequences") or ()
        if not stream:
            return self._json(resp, rec, model, stop_sequences, started, served_by)
        translator = StreamTranslator(model=model, stop_sequences=stop_sequences,
                                      input_tokens=estimate_input_tokens(body))
        body = StreamBody(self._stream(resp, translator, rec, started), abandoned(resp, rec, self.recorder, started))
        return Reply(200, [*SSE_HEADERS, ("request-id", rec.request_id), *served_by], body, streaming=True)

    # -- the resend layers, outermost first --------------------------------------------------
    def _send_handling_failover(self, inc: Incoming, body: dict, stream: bool, started: float):
        """Try the upstreams in order: a connection failure, a 429 or a 5xx before the first byte moves the
        request to the next one (with that upstream's model map), inside the request's time. Each outcome
        feeds the upstream's breaker. Returns (response, route, the proxy's own headers naming the upstream)."""
        rec = inc.record
        upstreams = self.upstreams
        many = upstreams.enforced
        budget = self.settings.read_timeout or 0.0
        failure: ProxyError | None = None
        tries = 0
        for target in upstreams.candidates():
            if tries and budget and time.perf_counter() - started >= budget:
                break
            tries += 1
            chosen = self._route(body, target)
            rec.model_used = chosen.model
            try:
                payload = anthropic_to_openai(body, chosen, stream=stream)
            except UnsupportedContent as exc:
                raise invalid_request(str(exc)) from None
            key = target.api_key or self._upstream_key(inc)
            rec.api_key_masked = mask_secret(key)
            rec.auth_type = "api_key"
            headers = {
                "authorization": "Bearer " + key,
                "content-type": "application/json",
                "accept": "text/event-stream" if stream else "application/json",
                "user-agent": self.user_agent,
            }
            kw = {"max_retries": 0, "timeout": self._time_left(started, budget)} if many else {}
            served = [("x-nexus-upstream", target.name)] if many else []
            if many:
                rec.credential = target.name
            try:
                resp, error = self._send_handling_completion_tokens(target.url, headers, payload, chosen, rec, kw)
            except ProxyError as exc:  # unreachable, or no answer in time
                target.breaker.failure(exc.message)
                failure = exc
                if many:
                    log.info("upstream %s: %s; %s tried on the next upstream", target.name, exc.message,
                             rec.request_id)
                continue
            if error is None:
                target.breaker.success()
                return resp, chosen, served + ([("x-nexus-tries", str(tries))] if tries > 1 else [])
            status = resp.status
            if status == 429 or status >= 500:
                target.breaker.failure(f"HTTP {status}")
                failure = upstream_http_error(status, error, resp.headers)
                if many:
                    log.info("upstream %s: HTTP %d; %s tried on the next upstream", target.name, status,
                             rec.request_id)
                continue
            target.breaker.success()  # it answered: the request itself was refused
            raise upstream_http_error(status, error, resp.headers)
        if failure is not None:
            raise failure
        wait = max(1, int(upstreams.retry_in() + 0.999))
        raise ProxyError(503, f"Every upstream is unavailable (circuit breakers open); retry in {wait} s",
                         "overloaded_error", {"retry-after": str(wait)})

    def _send_handling_completion_tokens(self, url: str, headers: dict, payload: dict, chosen, rec, kw: dict):
        """Send; OpenAI's reasoning models refuse max_tokens, so such a 400 is re-sent once with
        max_completion_tokens (learnt once per model). Returns (response, error body or None)."""
        if chosen.model in self._completion_tokens_models:
            _use_max_completion_tokens(payload)
        logs.debug_outgoing(rec.request_id, url, headers, payload, "API Key")
        resp = self.upstream.send("POST", url, headers, encode_body(payload), **kw)
        if resp.status < 400:
            return resp, None
        error = read_error_body(resp)
        if resp.status == 400 and b"max_completion_tokens" in error and _use_max_completion_tokens(payload):
            self._completion_tokens_models.add(chosen.model)
            resp = self.upstream.send("POST", url, headers, encode_body(payload), **kw)
            if resp.status < 400:
                return resp, None
            error = read_error_body(resp)
        return resp, error

    def _route(self, body: dict, target):
        s = self.settings
        return route(body, reasoning_model=s.reasoning_model, completion_model=s.completion_model,
                     reasoning_max_tokens=s.reasoning_max_tokens, completion_max_tokens=s.completion_max_tokens,
                     model_map=model_map_for(target.model_map, s.model_map))

    def _time_left(self, started: float, budget: float):
        s = self.settings
        if not budget:
            return urllib3.Timeout(connect=s.connect_timeout or None, read=s.read_timeout or None)
        left = max(0.5, budget - (time.perf_counter() - started))
        return urllib3.Timeout(connect=min(s.connect_timeout or left, left), read=min(s.read_timeout or left, left))

    def _json(self, resp, rec, model, stop_sequences, started, served_by=()) -> Reply:
        try:
            raw = resp.read()
        except Exception as exc:
            close_quietly(resp)
            err_type, message = stream_failure(exc, self.upstream.shutting_down)
            raise ProxyError(502, message, err_type) from None
        close_quietly(resp, complete=True)
        try:
            upstream_json = json.loads(raw)
            if not isinstance(upstream_json, dict):
                raise UpstreamFormatError("Upstream answered with JSON that is not an object")
            message = openai_to_anthropic(upstream_json, model=model, stop_sequences=stop_sequences)
        except (ValueError, UpstreamFormatError) as exc:
            raise ProxyError(502, f"Upstream answered with an unusable body: {exc}", "api_error") from None
        logs.debug_response(rec.request_id, 200, {}, message)
        usage = message.get("usage") or {}
        rec.input_tokens = usage.get("input_tokens") or 0
        rec.output_tokens = usage.get("output_tokens") or 0
        rec.cache_read_input_tokens = usage.get("cache_read_input_tokens") or 0
        tool_names = [b.get("name") for b in message["content"] if b.get("type") == "tool_use"]
        rec.tool_calls = len(tool_names)
        rec.tool_names = tool_names
        rec.assistant_text = "".join(b.get("text", "") for b in message["content"] if b.get("type") == "text")[:4000]
        rec.status = 200
        return json_reply(200, message, [("request-id", rec.request_id), *served_by],
                          on_close=lambda: self.recorder.finish(rec, started))

    def _stream(self, resp, translator: StreamTranslator, rec, started: float) -> Iterator[bytes]:
        rec.status = 200
        finished = False
        debug = log.isEnabledFor(logging.DEBUG)
        try:
            yield translator.start()
            decoder = SSEDecoder()
            done = False
            for chunk in with_keepalive(iter_body(resp), self.settings.ping_interval):
                if chunk is None:
                    yield PING
                    continue
                if debug:
                    logs.debug_chunk(rec.request_id, chunk)
                for _event, data in decoder.feed(chunk):
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        yield translator.error("api_error", "Upstream sent a malformed stream chunk")
                        return
                    if not isinstance(obj, dict):
                        continue
                    out = translator.feed(obj)
                    if out:
                        yield out
                    if translator.failed:
                        return
                if done:
                    break
            if not done and translator.stop_reason is None:
                yield translator.error("api_error", "Upstream stream ended before it was complete")
                return
            yield translator.finish()
            finished = True
        except GeneratorExit:
            rec.error_type = rec.error_type or "client_disconnected"
            raise
        except Exception as exc:
            err_type, message = stream_failure(exc, self.upstream.shutting_down)
            rec.error_type, rec.error_message = err_type, message
            yield translator.error(err_type, message)
        finally:
            close_quietly(resp, complete=finished)
            rec.input_tokens = translator.input_tokens
            rec.output_tokens = translator.output_tokens
            rec.cache_read_input_tokens = translator.cache_read_input_tokens
            rec.tool_calls = translator.tool_calls
            rec.tool_names = list(translator.tool_names)
            rec.assistant_text = translator.text
            if translator.failed and rec.error_type is None:
                rec.error_type = translator.error_type or "api_error"
                rec.error_message = translator.error_message
            self.recorder.finish(rec, started)

    # -- POST /v1/messages/count_tokens ---------------------------------------------------------
    def count_tokens(self, inc: Incoming, started: float) -> Reply:
        rec = inc.record
        body = _read_request(inc, validate_count_tokens_request)
        rec.status = 200
        return json_reply(200, {"input_tokens": estimate_input_tokens(body)},
                          on_close=lambda: self.recorder.finish(rec, started))

    def _upstream_key(self, inc: Incoming) -> str:
        """CLAUDE_CODE_PROXY_API_KEY when set, else the client's own token (multi-subscription)."""
        if self.settings.claude_code_proxy_api_key:
            return self.settings.claude_code_proxy_api_key
        key = presented_key(inc.headers)
        if key and key != inc.client_key:
            return key
        raise ProxyError(401, "No upstream API key: set CLAUDE_CODE_PROXY_API_KEY on the proxy, "
                              "or send your own key as x-api-key or Authorization: Bearer", "authentication_error")


def _read_request(inc: Incoming, validate) -> dict:
    """The validated body (a 400 naming the field otherwise); the record learns the model and request type."""
    body = inc.json()
    try:
        validate(body)
    except RequestValidationError as exc:
        raise invalid_request(str(exc)) from None
    inc.record.model_requested = body.get("model")
    inc.record.request_type = classify_request(body)
    return body


def _use_max_completion_tokens(payload: dict) -> bool:
    """Rename max_tokens to max_completion_tokens (what OpenAI's reasoning models take). False if absent."""
    if "max_tokens" not in payload:
        return False
    payload["max_completion_tokens"] = payload.pop("max_tokens")
    return True
