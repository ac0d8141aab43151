"""Translation mode: an Anthropic request in, an OpenAI call out (Chat Completions or the Responses API),
an Anthropic answer back."""
from __future__ import annotations

import logging
import time

from .. import jsoncodec, logs
from ..client_key import presented_key
from ..errors import ProxyError, from_upstream, invalid_request, status_for_error_type
from ..exchange import SSE_HEADERS, Incoming, Reply, json_reply
from ..masking import mask_secret
from ..records import RequestRecord
from .fallback import Upstream, Upstreams
from .headers import translation_headers
from .recording import Recorder, last_user_text
from .relay import failure_kind, read_error_body, relay_stream, stream_failure, upstream_http_error
from .upstream import UpstreamClient, close_quietly
from ..sse import RawNameSSEDecoder, SSEDecoder
from .thinking_key import ThinkingKey
from ..translation.models import ModelRouter, model_map_for, upstream_api
from ..translation.request import Options, UnsupportedContent, anthropic_to_openai
from ..translation.response import UpstreamFormatError, openai_to_anthropic
from ..translation.responses_request import anthropic_to_responses
from ..translation.responses_response import ResponseFailed, counts_input, responses_to_anthropic
from ..translation.responses_stream import IGNORED_EVENTS, ResponsesStreamTranslator
from ..translation.stream import StreamTranslator
from ..translation.tokens import count_input_tokens, estimate_input_tokens
from ..translation.validation import RequestValidationError, validate_count_tokens_request, validate_messages_request
from ..usage import Usage, apply_usage, classify_request, usage_from_message
from ..settings import Settings

log = logging.getLogger("nexus.translation")


def encode_body(payload: dict) -> bytes:
    """The upstream body; a lone UTF-16 surrogate (not Unicode, and refused by every upstream) is a 400."""
    try:
        return jsoncodec.dumps(payload)
    except ValueError as exc:
        if "surrogate" in str(exc):
            raise invalid_request("Request body contains an unpaired UTF-16 surrogate escape (such as \\ud800), "
                                  "which is not valid Unicode") from None
        raise invalid_request(f"Request body cannot be sent upstream as JSON: {exc}") from None


class Translator:
    def __init__(self, settings: Settings, upstream: UpstreamClient, recorder: Recorder,
                 thinking_key: ThinkingKey | None = None) -> None:
        self.settings = settings
        self.upstream = upstream
        self.recorder = recorder
        self.thinking_key = thinking_key or ThinkingKey(settings)
        self.router = ModelRouter(settings.reasoning_model, settings.completion_model, settings.reasoning_max_tokens,
                                  settings.completion_max_tokens, settings.model_map)
        # UPSTREAMS in order (or the one ANTHROPIC_PROXY_BASE_URL), each with its profile and breaker
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
        inc.admit(rec.model_requested)
        rec.user_text = last_user_text(body)
        stream = body.get("stream") is True
        rec.stream = stream
        signing_key = self.thinking_key.get()
        resp, chosen, target, api, served_by = self._send_handling_failover(inc, body, stream, signing_key)
        model = rec.model_requested or chosen.model
        if api == "responses":
            if not stream:
                return self._responses_json(resp, rec, model, body, target, signing_key, served_by)
            plug = ResponsesStream(ResponsesStreamTranslator(model=model, signing_key=signing_key,
                                                             input_tokens=estimate_input_tokens(body)),
                                   self.settings.max_sse_event_bytes)
        else:
            stop_sequences = body.get("stop_sequences") or ()
            if not stream:
                return self._json(resp, rec, model, stop_sequences, target, signing_key, served_by)
            plug = TranslatedStream(StreamTranslator(model=model, stop_sequences=stop_sequences,
                                                     input_tokens=estimate_input_tokens(body), signing_key=signing_key,
                                                     upstream_host=target.host),
                                    self.settings.max_sse_event_bytes)
        rec.status = 200
        body = relay_stream(resp, rec, plug, self.recorder, ping_interval=self.settings.ping_interval,
                            shutting_down=lambda: self.upstream.shutting_down, host=target.host)
        return Reply(200, [*SSE_HEADERS, ("request-id", rec.request_id), *served_by], body, streaming=True)

    # -- the send layers, outermost first ---------------------------------------------------------
    def _send_handling_failover(self, inc: Incoming, body: dict, stream: bool, signing_key: bytes):
        """Try the upstreams in order: a connection failure, a 429 or a 5xx before the first byte moves the
        request to the next one (with that upstream's model map, profile and API), inside the request's time.
        Each outcome feeds the upstream's breaker.

        Returns (response, route, upstream, api, the proxy's own headers naming the upstream).
        """
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
            api = self.api_for(body, target)
            payload = self._payload(body, chosen, stream, api, target, signing_key)
            key = target.api_key or self._upstream_key(inc)
            rec.api_key_masked = mask_secret(key)
            rec.auth_type = "api_key"
            headers = translation_headers(key, stream)
            kw = {"max_retries": 0, "timeout": self.upstream.time_left(rec.started, budget)} if many else {}
            if tries == 1:
                kw["on_sent"] = lambda: self.recorder.begin(rec)  # the upstream has the request: journal it
            if many:
                rec.credential = target.name
            try:
                resp = self._send_handling_max_tokens(rec, target, api, chosen.model, headers, payload, kw)
            except ProxyError as exc:  # unreachable, no answer in time, or the upstream's own error
                if exc.status != 429 and exc.status < 500:
                    target.breaker.success()  # it answered: the request itself was refused
                    raise
                target.breaker.failure(f"HTTP {exc.upstream_status}" if exc.upstream_status else exc.message)
                failure = exc
                if many:
                    log.info("upstream %s: %s; %s tried on the next upstream", target.name, exc.status,
                             rec.request_id)
                continue
            target.breaker.success()
            served = [("x-nexus-upstream", target.name)] if many else []
            return resp, chosen, target, api, served + ([("x-nexus-tries", str(tries))] if tries > 1 else [])
        if failure is not None:
            raise failure
        wait = max(1, int(upstreams.retry_in() + 0.999))
        raise ProxyError(503, f"Every upstream is unavailable (circuit breakers open); retry in {wait} s",
                         "overloaded_error", {"retry-after": str(wait)})

    def _send_handling_max_tokens(self, rec: RequestRecord, target: Upstream, api: str, model: str, headers: dict,
                                  payload: dict, kw: dict):
        """Send the request; resend it once with `max_completion_tokens` when a Chat upstream refuses `max_tokens`.

        OpenAI's reasoning models (o-series, GPT-5) take only `max_completion_tokens`: learnt once per model.
        """
        url = target.url_for(api)
        chat = api != "responses"
        if chat and model in self._completion_tokens_models:
            _use_max_completion_tokens(payload)
        logs.debug_outgoing(rec.request_id, url, headers, payload, "API Key")
        resp = self.upstream.send("POST", url, headers, encode_body(payload), **kw)
        if resp.status < 400:
            return resp
        error = read_error_body(resp)
        if chat and resp.status == 400 and b"max_completion_tokens" in error and _use_max_completion_tokens(payload):
            self._completion_tokens_models.add(model)
            kw.pop("on_sent", None)  # journaled by the first send
            resp = self.upstream.send("POST", url, headers, encode_body(payload), **kw)
            if resp.status < 400:
                return resp
            error = read_error_body(resp)
        raise upstream_http_error(resp.status, error, resp.headers, target.host)

    def _payload(self, body: dict, chosen, stream: bool, api: str, target: Upstream, signing_key: bytes) -> dict:
        """The upstream body for this upstream's API and profile (a 400 for content it cannot take)."""
        try:
            if api == "responses":
                return anthropic_to_responses(body, chosen, stream=stream, signing_key=signing_key,
                                              server_tools=self.settings.server_tools, upstream=target.host)
            options = Options(profile=target.profile, signing_key=signing_key,
                              server_tools=self.settings.server_tools, upstream=target.host)
            return anthropic_to_openai(body, chosen, stream=stream, options=options)
        except UnsupportedContent as exc:
            raise invalid_request(str(exc)) from None

    def api_for(self, body: dict, target: Upstream | None = None) -> str:
        """The upstream API for this request ("chat" or "responses") on `target` (default: the first upstream)."""
        s = self.settings
        target = target or self.upstreams.items[0]
        own = bool(target.model_map)  # an upstream with its own model names says which API they take
        return upstream_api(body.get("model"), model_map=target.model_map if own else s.model_map,
                            model_apis=target.model_apis if own else s.model_apis,
                            default=s.upstream_api, upstream={"api": target.api})

    # -- the answers --------------------------------------------------------------------------------
    def _read_answer(self, resp, host: str) -> bytes:
        """The whole JSON answer; an upstream that breaks off while sending it is a 502 naming it."""
        try:
            raw = resp.read()
        except Exception as exc:
            close_quietly(resp)
            err_type, message = stream_failure(exc, self.upstream.shutting_down, host)
            err = ProxyError(502, message, err_type)
            err.upstream_kind = failure_kind(exc)
            raise err from None
        close_quietly(resp, complete=True)
        return raw

    def _json(self, resp, rec: RequestRecord, model: str, stop_sequences, target: Upstream, signing_key: bytes,
              served_by) -> Reply:
        raw = self._read_answer(resp, target.host)
        try:
            upstream_json = jsoncodec.loads_lenient(raw)
            if not isinstance(upstream_json, dict):
                raise UpstreamFormatError("Upstream answered with JSON that is not an object")
            message = openai_to_anthropic(upstream_json, model=model, stop_sequences=stop_sequences,
                                          signing_key=signing_key)
        except (ValueError, UpstreamFormatError) as exc:
            raise ProxyError(502, from_upstream(target.host, f"answered with an unusable body: {exc}"),
                             "api_error") from None
        return self._answered(rec, message, served_by)

    def _responses_json(self, resp, rec: RequestRecord, model: str, body: dict, target: Upstream,
                        signing_key: bytes, served_by) -> Reply:
        raw = self._read_answer(resp, target.host)
        try:
            answer = jsoncodec.loads_lenient(raw)
            # the estimate walks the whole conversation: only for an answer that does not count its input
            message = responses_to_anthropic(answer, model=model, signing_key=signing_key,
                                             input_tokens=0 if counts_input(answer) else estimate_input_tokens(body))
        except ResponseFailed as exc:
            raise ProxyError(status_for_error_type(exc.error_type), exc.message, exc.error_type) from None
        except (ValueError, UpstreamFormatError) as exc:
            raise ProxyError(502, from_upstream(target.host, f"answered with an unusable body: {exc}"),
                             "api_error") from None
        return self._answered(rec, message, served_by)

    def _answered(self, rec: RequestRecord, message: dict, served_by) -> Reply:
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
        return json_reply(200, {"input_tokens": count_input_tokens(body)},
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


class _ConvertedStream:
    """What both translation plugs of the relay frame share: upstream SSE events in, Anthropic events out.

    A subclass says which events carry nothing (`SKIP`), what ends the stream (`_ended`), and how it ends.
    """

    __slots__ = ("translator", "decoder", "done", "reusable")
    SKIP: frozenset = frozenset()
    DECODER: type[SSEDecoder] = SSEDecoder
    MALFORMED = "Upstream sent a malformed stream event"

    def __init__(self, translator, max_event: int) -> None:
        self.translator = translator
        self.decoder = self.DECODER(max_event)
        self.done = False
        self.reusable = False

    def head(self) -> bytes:
        # message_start at once: no keep-alive ping can come before it
        return self.translator.start()

    def feed(self, chunk: bytes) -> bytes:
        translator = self.translator
        out = []
        skip = self.SKIP
        for event, data in self.decoder.feed(chunk):
            if event in skip:
                continue
            if self._ended(data):
                self.done = True
                break
            try:
                obj = jsoncodec.loads_lenient(data)
            except ValueError:
                out.append(translator.error("api_error", self.MALFORMED))
                self.done = True
                break
            if not isinstance(obj, dict):
                continue
            piece = translator.feed(obj)
            if piece:
                out.append(piece)
            if self._finished():
                self.done = True
                break
        return b"".join(out) if len(out) != 1 else out[0]

    def _ended(self, data: bytes) -> bool:
        return False

    def _finished(self) -> bool:
        raise NotImplementedError

    def seen(self, out: bytes) -> None:
        pass

    def failure(self, error_type: str, message: str) -> bytes:
        return self.translator.error(error_type, message)

    def usage(self) -> Usage:
        return self.translator.usage()


class TranslatedStream(_ConvertedStream):
    """The Chat Completions plug: OpenAI chunks in, ending with `[DONE]`."""

    __slots__ = ("_saw_done",)
    MALFORMED = "Upstream sent a malformed stream chunk"

    def __init__(self, translator: StreamTranslator, max_event: int) -> None:
        super().__init__(translator, max_event)
        self._saw_done = False

    def _ended(self, data: bytes) -> bool:
        if data == b"[DONE]":
            self._saw_done = True
            return True
        return False

    def _finished(self) -> bool:
        return self.translator.failed

    def tail(self) -> bytes:
        translator = self.translator
        if translator.failed:
            return b""
        if not self._saw_done and translator.stop_reason is None:
            return translator.error("api_error", "Upstream stream ended before it was complete")
        self.reusable = True
        return translator.finish()


class ResponsesStream(_ConvertedStream):
    """The Responses API plug: no `[DONE]`, the stream ends with a terminal event (completed, incomplete,
    failed, error)."""

    __slots__ = ()
    # not parsed: message_start went out as the head, and these add nothing (some repeat the whole answer);
    # known by their `event:` line, whose name the decoder leaves as bytes
    SKIP = frozenset(name.encode() for name in IGNORED_EVENTS | {"response.created"})
    DECODER = RawNameSSEDecoder

    def __init__(self, translator: ResponsesStreamTranslator, max_event: int) -> None:
        super().__init__(translator, max_event)

    def _finished(self) -> bool:
        return self.translator.done

    def tail(self) -> bytes:
        translator = self.translator
        if translator.failed:
            return b""
        if not translator.done:
            return translator.error("api_error", "Upstream stream ended before it was complete")
        self.reusable = True
        return b""


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
