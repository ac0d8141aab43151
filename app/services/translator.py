"""Translation mode: an Anthropic request in, an OpenAI Chat Completions call out, an Anthropic answer back."""
from __future__ import annotations

import json
import logging
import re
from typing import Iterator

from app import logs
from app.errors import ProxyError, invalid_request
from app.exchange import SSE_HEADERS, Incoming, Reply, json_reply
from app.masking import mask_secret
from app.services.access import presented_key
from app.services.recording import last_user_text
from app.services.relay import (StreamBody, abandoned, failure_kind, read_error_body, stream_failure,
                                upstream_http_error, with_keepalive)
from app.services.upstream import close_quietly, iter_body
from app.sse import SSEDecoder
from app.translation.models import route
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
        self.user_agent = f"claude-nexus-proxy/{__version__}"
        self._completion_tokens_models: set[str] = set()

    # -- POST /v1/messages ------------------------------------------------------------------
    def messages(self, inc: Incoming, started: float) -> Reply:
        rec = inc.record
        body = _read_request(inc, validate_messages_request)
        rec.user_text = last_user_text(body)
        stream = body.get("stream") is True
        rec.stream = stream
        s = self.settings
        chosen = route(body, reasoning_model=s.reasoning_model, completion_model=s.completion_model,
                       reasoning_max_tokens=s.reasoning_max_tokens, completion_max_tokens=s.completion_max_tokens,
                       model_map=s.model_map)
        rec.model_used = chosen.model
        try:
            payload = anthropic_to_openai(body, chosen, stream=stream)
        except UnsupportedContent as exc:
            raise invalid_request(str(exc)) from None
        key = self._upstream_key(inc)
        rec.api_key_masked = mask_secret(key)
        rec.auth_type = "api_key"
        headers = {
            "authorization": "Bearer " + key,
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "user-agent": self.user_agent,
        }
        if chosen.model in self._completion_tokens_models:
            _use_max_completion_tokens(payload)
        logs.debug_outgoing(rec.request_id, self.url, headers, payload, "API Key")
        resp = self.upstream.send("POST", self.url, headers, encode_body(payload),
                                  on_sent=lambda: self.recorder.begin(rec))
        if resp.status >= 400:
            error = read_error_body(resp)
            if resp.status == 400 and b"max_completion_tokens" in error and _use_max_completion_tokens(payload):
                # OpenAI's reasoning models (o-series, GPT-5) refuse max_tokens; learn it once per model.
                self._completion_tokens_models.add(chosen.model)
                resp = self.upstream.send("POST", self.url, headers, encode_body(payload))
                if resp.status >= 400:
                    error = read_error_body(resp)
            if resp.status >= 400:
                raise upstream_http_error(resp.status, error, resp.headers)
        model = rec.model_requested or chosen.model
        stop_sequences = body.get("stop_sequences") or ()
        if not stream:
            return self._json(resp, rec, model, stop_sequences, started)
        translator = StreamTranslator(model=model, stop_sequences=stop_sequences,
                                      input_tokens=estimate_input_tokens(body))
        body = StreamBody(self._stream(resp, translator, rec, started), abandoned(resp, rec, self.recorder, started))
        self.recorder.stream_opened(rec)
        return Reply(200, [*SSE_HEADERS, ("request-id", rec.request_id)], body, streaming=True)

    def _json(self, resp, rec, model, stop_sequences, started) -> Reply:
        try:
            raw = resp.read()
        except Exception as exc:
            close_quietly(resp)
            err_type, message = stream_failure(exc, self.upstream.shutting_down)
            err = ProxyError(502, message, err_type)
            err.upstream_kind = failure_kind(exc)
            raise err from None
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
        return json_reply(200, message, [("request-id", rec.request_id)],
                          on_close=lambda: self.recorder.finish(rec, started))

    def _stream(self, resp, translator: StreamTranslator, rec, started: float) -> Iterator[bytes]:
        rec.status = 200
        finished = False
        first = True
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
                        if first:
                            first = False
                            self.recorder.first_token(rec, started)
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
            rec.upstream_error = failure_kind(exc)
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
