"""Translation mode: an Anthropic request in, an OpenAI Chat Completions call out, an Anthropic answer back."""
from __future__ import annotations

import json
import logging
import time
import re

import urllib3

from app import logs
from app.client_key import presented_key
from app.errors import ProxyError, invalid_request
from app.exchange import SSE_HEADERS, Incoming, Reply, json_reply
from app.jsonenc import compact_ascii
from app.masking import mask_secret
from app.records import RequestRecord
from app.services.fallback import Upstream, Upstreams
from app.services.headers import translation_headers
from app.services.recording import Recorder, last_user_text
from app.services.relay import read_error_body, relay_stream, stream_failure, upstream_http_error
from app.services.upstream import UpstreamClient, close_quietly
from app.sse import SSEDecoder
from app.translation.models import ModelRouter, model_map_for
from app.translation.request import UnsupportedContent, anthropic_to_openai
from app.translation.response import UpstreamFormatError, openai_to_anthropic
from app.translation.stream import StreamTranslator
from app.translation.tokens import estimate_input_tokens
from app.translation.validation import RequestValidationError, validate_count_tokens_request, validate_messages_request
from app.usage import Usage, apply_usage, classify_request, usage_from_message
from config.settings import Settings

log = logging.getLogger("nexus.translation")

_TOO_LARGE_NUMBER = ("Request body contains a number too large to represent (such as 1e999); JSON numbers "
                     "must fit a 64-bit float")

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
    bodies; it escapes every non-ASCII character, so a lone surrogate shows as an escape we can find.

    A number too large for a float (1e999 parses as infinity) has no JSON spelling: a 400, not `Infinity`.
    """
    try:
        data = compact_ascii(payload).encode()
    except ValueError:
        raise invalid_request(_TOO_LARGE_NUMBER) from None
    if b"\\ud" in data and _has_lone_surrogate(data):
        raise invalid_request("Request body contains an unpaired UTF-16 surrogate escape (such as \\ud800), "
                              "which is not valid Unicode")
    return data


class Translator:
    def __init__(self, settings: Settings, upstream: UpstreamClient, recorder: Recorder) -> None:
        self.settings = settings
        self.upstream = upstream
        self.recorder = recorder
        self.url = settings.anthropic_proxy_base_url.rstrip("/") + "/chat/completions"
        self.router = ModelRouter(settings.reasoning_model, settings.completion_model, settings.reasoning_max_tokens,
                                  settings.completion_max_tokens, settings.model_map)
        self.upstreams = Upstreams(settings)
        # each upstream routes with its own model names (its model_map, else MODEL_MAP)
        self._routers = {id(u): self.router if not u.model_map else ModelRouter(
            settings.reasoning_model, settings.completion_model, settings.reasoning_max_tokens,
            settings.completion_max_tokens, model_map_for(u.model_map, settings.model_map))
            for u in self.upstreams.items}
        self._completion_tokens_models: set[str] = set()

    # -- POST /v1/messages ------------------------------------------------------------------
    def messages(self, inc: Incoming) -> Reply:
        rec = inc.record
        body = _read_request(inc, validate_messages_request)
        rec.user_text = last_user_text(body)
        stream = body.get("stream") is True
        rec.stream = stream
        resp, chosen, served_by = self._send_handling_failover(inc, body, stream)
        model = rec.model_requested or chosen.model
        stop_sequences = body.get("stop_sequences") or ()
        if not stream:
            return self._json(resp, rec, model, stop_sequences, served_by)
        plug = TranslatedStream(StreamTranslator(model=model, stop_sequences=stop_sequences,
                                                 input_tokens=estimate_input_tokens(body)),
                                self.settings.max_sse_event_bytes)
        rec.status = 200
        body = relay_stream(resp, rec, plug, self.recorder, ping_interval=self.settings.ping_interval,
                            shutting_down=lambda: self.upstream.shutting_down)
        return Reply(200, [*SSE_HEADERS, ("request-id", rec.request_id), *served_by], body, streaming=True)

    def _send_handling_failover(self, inc: Incoming, body: dict, stream: bool):
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
            if tries and budget and time.perf_counter() - rec.started >= budget:
                break
            tries += 1
            chosen = self._routers[id(target)].route(body)
            rec.model_used = chosen.model
            try:
                payload = anthropic_to_openai(body, chosen, stream=stream)
            except UnsupportedContent as exc:
                raise invalid_request(str(exc)) from None
            except ValueError:  # a tool input holding 1e999 (infinity once parsed) has no JSON spelling
                raise invalid_request(_TOO_LARGE_NUMBER) from None
            key = target.api_key or self._upstream_key(inc)
            rec.api_key_masked = mask_secret(key)
            rec.auth_type = "api_key"
            headers = translation_headers(key, stream)
            kw = {"max_retries": 0, "timeout": self._time_left(rec.started, budget)} if many else {}
            if many:
                rec.credential = target.name
            try:
                resp = self._send_handling_max_tokens(rec, target, chosen.model, headers, payload, kw)
            except ProxyError as exc:  # unreachable, no answer in time, or the upstream's own error
                if exc.status != 429 and exc.status < 500:
                    target.breaker.success()  # it answered: the request itself was refused
                    raise
                answered = getattr(exc, "upstream_status", None)
                target.breaker.failure(f"HTTP {answered}" if answered else exc.message)
                failure = exc
                if many:
                    log.info("upstream %s: %s; %s tried on the next upstream", target.name, exc.status,
                             rec.request_id)
                continue
            target.breaker.success()
            served = [("x-nexus-upstream", target.name)] if many else []
            return resp, chosen, served + ([("x-nexus-tries", str(tries))] if tries > 1 else [])
        if failure is not None:
            raise failure
        wait = max(1, int(upstreams.retry_in() + 0.999))
        raise ProxyError(503, f"Every upstream is unavailable (circuit breakers open); retry in {wait} s",
                         "overloaded_error", {"retry-after": str(wait)})

    def _send_handling_max_tokens(self, rec: RequestRecord, target: Upstream, model: str, headers: dict,
                                  payload: dict, kw: dict):
        """Send the request; resend it once with `max_completion_tokens` when the upstream refuses `max_tokens`.

        OpenAI's reasoning models (o-series, GPT-5) take only `max_completion_tokens`: learnt once per model.
        """
        url = target.url
        if model in self._completion_tokens_models:
            _use_max_completion_tokens(payload)
        logs.debug_outgoing(rec.request_id, url, headers, payload, "API Key")
        resp = self.upstream.send("POST", url, headers, encode_body(payload), **kw)
        if resp.status < 400:
            return resp
        error = read_error_body(resp)
        if resp.status == 400 and b"max_completion_tokens" in error and _use_max_completion_tokens(payload):
            self._completion_tokens_models.add(model)
            resp = self.upstream.send("POST", url, headers, encode_body(payload), **kw)
            if resp.status < 400:
                return resp
            error = read_error_body(resp)
        err = upstream_http_error(resp.status, error, resp.headers)
        err.upstream_status = resp.status  # the upstream answered (the breaker notes the status, not the text)
        raise err

    def _time_left(self, started: float, budget: float) -> urllib3.Timeout:
        """This try's timeouts: the configured ones, cut to what is left of the request's time."""
        s = self.settings
        if not budget:
            return urllib3.Timeout(connect=s.connect_timeout or None, read=s.read_timeout or None)
        left = max(0.5, budget - (time.perf_counter() - started))
        return urllib3.Timeout(connect=min(s.connect_timeout or left, left), read=min(s.read_timeout or left, left))

    def _json(self, resp, rec: RequestRecord, model: str, stop_sequences, served_by=()) -> Reply:
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
        apply_usage(rec, usage_from_message(message))
        rec.status = 200
        return json_reply(200, message, [("request-id", rec.request_id), *served_by],
                          on_close=lambda: self.recorder.finish(rec))

    # -- POST /v1/messages/count_tokens ---------------------------------------------------------
    def count_tokens(self, inc: Incoming) -> Reply:
        rec = inc.record
        body = _read_request(inc, validate_count_tokens_request)
        rec.status = 200
        return json_reply(200, {"input_tokens": estimate_input_tokens(body)},
                          on_close=lambda: self.recorder.finish(rec))

    def _upstream_key(self, inc: Incoming) -> str:
        """CLAUDE_CODE_PROXY_API_KEY when set, else the client's own token (multi-subscription)."""
        if self.settings.claude_code_proxy_api_key:
            return self.settings.claude_code_proxy_api_key
        key = presented_key(inc.headers)
        if key and key != inc.client_key:
            return key
        raise ProxyError(401, "No upstream API key: set CLAUDE_CODE_PROXY_API_KEY on the proxy, "
                              "or send your own key as x-api-key or Authorization: Bearer", "authentication_error")


class TranslatedStream:
    """The translation plug of the relay frame: OpenAI chunks in, Anthropic events out."""

    __slots__ = ("translator", "decoder", "done", "reusable", "_saw_done")

    def __init__(self, translator: StreamTranslator, max_event: int) -> None:
        self.translator = translator
        self.decoder = SSEDecoder(max_event)
        self.done = False
        self.reusable = False
        self._saw_done = False

    def head(self) -> bytes:
        return self.translator.start()

    def feed(self, chunk: bytes) -> bytes:
        translator = self.translator
        out = []
        for _event, data in self.decoder.feed(chunk):
            if data == b"[DONE]":
                self.done = self._saw_done = True
                break
            try:
                obj = json.loads(data)
            except ValueError:
                out.append(translator.error("api_error", "Upstream sent a malformed stream chunk"))
                self.done = True
                break
            if not isinstance(obj, dict):
                continue
            piece = translator.feed(obj)
            if piece:
                out.append(piece)
            if translator.failed:
                self.done = True
                break
        return b"".join(out) if len(out) != 1 else out[0]

    def seen(self, out: bytes) -> None:
        pass

    def tail(self) -> bytes:
        translator = self.translator
        if translator.failed:
            return b""
        if not self._saw_done and translator.stop_reason is None:
            return translator.error("api_error", "Upstream stream ended before it was complete")
        self.reusable = True
        return translator.finish()

    def failure(self, error_type: str, message: str) -> bytes:
        return self.translator.error(error_type, message)

    def usage(self) -> Usage:
        return self.translator.usage()


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
