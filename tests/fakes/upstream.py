"""A fast, scriptable fake upstream: OpenAI-compatible chat completions and the Anthropic Messages API.

Run it as its own process (gevent-patched, so it holds thousands of slow streams cheaply)::

    python -m tests.fakes.upstream --port 0 [--host 127.0.0.1]

It prints exactly one line ``PORT <n>`` on stdout once listening. Endpoints (``<prefix>`` is empty, or
``/bench/<chunks>/<first_byte_ms>/<gap_ms>`` for the benchmark's precomputed answers):

- ``POST <prefix>/chat/completions``             OpenAI-compatible, JSON or SSE
- ``POST <prefix>/responses``                    OpenAI Responses API, JSON or SSE (see tests.fakes.responses)
- ``POST <prefix>/v1/messages``                  Anthropic, JSON or SSE
- ``POST <prefix>/v1/messages/count_tokens``     ``{"input_tokens": n}``
- ``GET  <prefix>/v1/models``                    a short model list
- ``POST <prefix>/v1/oauth/token``               OAuth refresh with rotation
- ``/_fake/...``                                 the control API (see ``_control``)

``/profile/<name>`` before an OpenAI path emulates that upstream (tests/fakes/profiles.py): it refuses what
that upstream refuses and answers in its dialect (reasoning field, cache usage, structured output, PDFs).

Without a scripted response queued, requests are answered by a tiny "scripted model" (see
``plan_anthropic`` / ``plan_openai``) that calls a Read tool when asked about a file and quotes the
first word of the tool result when it comes back.
"""
if __name__ == "__main__":  # pragma: no cover - patch before anything imports socket
    from gevent import monkey

    monkey.patch_all()

import argparse
import collections
import errno
import gzip
import itertools
import gc
import json
import re
import socket
import sys
import time
import urllib.parse
import uuid
import zlib
from typing import Any, Callable, Iterable, Iterator

import gevent
import gevent.event
from gevent.pywsgi import WSGIHandler, WSGIServer

try:
    from tests.fakes import profiles as upstream_profiles
    from tests.fakes import responses as responses_api
except ImportError:  # pragma: no cover - run as a script from another directory
    import profiles as upstream_profiles  # type: ignore[no-redef]
    import responses as responses_api  # type: ignore[no-redef]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

HELLO_TEXT = "Hello from the fake upstream."
MODELS = ["claude-opus-4-8", "claude-sonnet-4-5", "claude-haiku-4-5"]
_PATH_RE = re.compile(r"(?:(?<=\s)|(?<=^)|(?<=['\"`(]))(/[^\s'\"`]+)")
_LINE_PREFIX_RE = re.compile(r"^\s*\d+(?:\t|\u2192)")
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
_USAGE_RE = re.compile(rb'"include_usage"\s*:\s*true')
_ENDPOINTS = (  # longest first: suffix match
    "/v1/messages/count_tokens",
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/responses",
    "/responses",
    "/v1/oauth/token",
    "/v1/messages",
    "/v1/models",
)
_ENDPOINT_ALIAS = {"/v1/chat/completions": "/chat/completions", "/v1/responses": "/responses"}
_OPENAI_ENDPOINTS = ("/chat/completions", "/responses")
_PROFILE_RE = re.compile(r"^/profile/([a-z]+)/")
_ANTHROPIC_ENDPOINTS = ("/v1/messages", "/v1/messages/count_tokens", "/v1/models")
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    502: "api_error", 503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}
_REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Payload Too Large", 422: "Unprocessable Entity", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 529: "Overloaded",
}


def _status_line(status: int) -> str:
    return "%d %s" % (status, _REASONS.get(status, "Unknown"))


# --------------------------------------------------------------------------------------------------
# State


class FakeState:
    """Everything the control API can set or read; reset() brings it back to a fresh server."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        self.requests: collections.deque = collections.deque(maxlen=20000)
        self.scripts: dict[str, collections.deque] = {}
        self.refresh_token: str | None = None
        self.valid_tokens: set[str] = set()
        self.oauth_calls = 0
        self.oauth_serial = 0
        self.compress = False
        self.bench_requests = 0
        self.reasoning_issued: dict[str, str] = {}  # Responses API: reasoning item id -> encrypted content
        self.reasoning_returned: list[str] = []  # ids of issued reasoning items that came back in an input
        self.cache_prompts: dict[str, bytes] = {}  # prompt_cache_key -> the last request body under it
        self.cache = upstream_profiles.CacheMemory()
        # Per credential (API key or access token): {"headers": {...}, "status": n (every answer), "faults": [...]}
        self.credentials: dict[str, dict] = {}
        old = getattr(self, "release", None)
        self.release = gevent.event.Event()
        if old is not None:
            old.set()  # let hung requests go (they close their sockets)

    def next_id(self) -> int:
        return next(self._ids)


# --------------------------------------------------------------------------------------------------
# The scripted model: pure planning functions (request dict in, plan out)


def _text_of(content: Any) -> str:
    """Text of a string or of a list of text blocks/parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b.get("text", "") for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return ""


def first_word(tool_result_text: str) -> str:
    """First word of a Read result, without Claude Code's leading "<n>\\t" line number."""
    text = _LINE_PREFIX_RE.sub("", tool_result_text.lstrip(), count=1)
    words = text.split()
    return words[0] if words else ""


def find_path(text: str) -> str | None:
    """The last absolute file path in `text` (sentence punctuation stripped), or None.

    The last, because Claude Code puts its skills list (`/config`, …) before the user's prompt.
    """
    found = _PATH_RE.findall(text)
    if not found:
        return None
    path = found[-1].rstrip(".,;:!?)>]}")
    return path if len(path) > 1 else None


def answer_text(word: str) -> str:
    return "The first word of the file is %s." % word


def foreign_thinking_signature(req: Any) -> str | None:
    """Anthropic's refusal of a thinking block it did not sign: its signatures are plain base64 (this fake's
    start with "fakesig_"), so one with a "." in it (another signer's format) cannot be verified."""
    messages = req.get("messages") if isinstance(req, dict) else None
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            if isinstance(block, dict) and block.get("type") == "thinking":
                signature = block.get("signature")
                if not isinstance(signature, str) or "." in signature:
                    return "messages.%d.content.%d: Invalid `signature` in `thinking` block" % (i, j)
    return None


def plan_anthropic(req: dict) -> dict:
    """What the scripted model answers to an Anthropic request.

    Returns {"kind": "text", "text": ...} or {"kind": "tool", "path": ..., "thinking": bool}.
    """
    messages = req.get("messages") if isinstance(req.get("messages"), list) else []
    last_user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    if last_user is None:
        return {"kind": "text", "text": HELLO_TEXT}
    content = last_user.get("content")
    blocks = content if isinstance(content, list) else [{"type": "text", "text": _text_of(content)}]
    results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
    if results:
        return {"kind": "text", "text": answer_text(first_word(_text_of(results[-1].get("content"))))}
    tools = req.get("tools") if isinstance(req.get("tools"), list) else []
    if any(isinstance(t, dict) and t.get("name") == "Read" for t in tools):
        for block in reversed(blocks):
            if isinstance(block, dict) and block.get("type") == "text":
                path = find_path(block.get("text") or "")
                if path:
                    thinking = req.get("thinking")
                    wants = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
                    return {"kind": "tool", "path": path, "thinking": wants}
    return {"kind": "text", "text": HELLO_TEXT}


def plan_openai(req: dict) -> dict:
    """What the scripted model answers to an OpenAI chat request (same shapes as plan_anthropic)."""
    messages = req.get("messages") if isinstance(req.get("messages"), list) else []
    turn: list[dict] = []  # the last user turn: messages after the last assistant message
    for m in reversed(messages):
        if not isinstance(m, dict) or m.get("role") == "assistant":
            break
        turn.insert(0, m)
    tool_msgs = [m for m in turn if m.get("role") == "tool"]
    if tool_msgs:
        return {"kind": "text", "text": answer_text(first_word(_text_of(tool_msgs[-1].get("content"))))}
    tools = req.get("tools") if isinstance(req.get("tools"), list) else []
    names = {(t.get("function") or {}).get("name") for t in tools if isinstance(t, dict)}
    if "Read" in names:
        for m in reversed(turn):
            if m.get("role") == "user":
                path = find_path(_text_of(m.get("content")))
                if path:
                    return {"kind": "tool", "path": path, "thinking": False}
    return {"kind": "text", "text": HELLO_TEXT}


def _split(s: str, parts: int) -> list[str]:
    """Split `s` into `parts` non-empty pieces (fewer if too short)."""
    parts = max(1, min(parts, len(s)))
    size = -(-len(s) // parts)
    return [s[i:i + size] for i in range(0, len(s), size)]


def _tokens_out(text: str) -> int:
    return len(text) // 4 + 1


def anthropic_message(req: dict, plan: dict, input_tokens: int, msg_id: str) -> dict:
    """The non-streaming Anthropic answer for a plan."""
    model = req.get("model") if isinstance(req.get("model"), str) else MODELS[1]
    content: list[dict] = []
    if plan["kind"] == "tool":
        if plan["thinking"]:
            content.append({"type": "thinking", "thinking": "The user wants me to read a file.",
                            "signature": "fakesig_" + msg_id})
        content.append({"type": "text", "text": "I'll read the file."})
        content.append({"type": "tool_use", "id": "toolu_" + msg_id, "name": "Read",
                        "input": {"file_path": plan["path"]}})
        out_text, stop = _dumps({"file_path": plan["path"]}), "tool_use"
    else:
        content.append({"type": "text", "text": plan["text"]})
        out_text, stop = plan["text"], "end_turn"
    return {
        "id": "msg_" + msg_id, "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": _tokens_out(out_text)},
    }


def anthropic_events(message: dict) -> list[tuple[str, dict]]:
    """The real Anthropic SSE sequence for a finished message (deltas split into fragments)."""
    start = dict(message, content=[], stop_reason=None, stop_sequence=None,
                 usage=dict(message["usage"], output_tokens=1))
    events: list[tuple[str, dict]] = [("message_start", {"type": "message_start", "message": start}),
                                      ("ping", {"type": "ping"})]
    for i, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            for piece in _split(block["text"], 3):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "text_delta", "text": piece}}))
        elif kind == "thinking":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "thinking", "thinking": "",
                                                                     "signature": ""}}))
            for piece in _split(block["thinking"], 2):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "thinking_delta", "thinking": piece}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "signature_delta",
                                                             "signature": block["signature"]}}))
        elif kind == "tool_use":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "tool_use", "id": block["id"],
                                                                     "name": block["name"], "input": {}}}))
            for piece in [""] + _split(_dumps(block["input"]), 5):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "input_json_delta",
                                                                 "partial_json": piece}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def openai_completion(req: dict, plan: dict, prompt_tokens: int, msg_id: str) -> dict:
    """The non-streaming OpenAI answer for a plan."""
    model = req.get("model") if isinstance(req.get("model"), str) else "gpt-fake"
    if plan["kind"] == "tool":
        args = _dumps({"file_path": plan["path"]})
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_" + msg_id, "type": "function", "function": {"name": "Read", "arguments": args}}]}
        out_text, finish = args, "tool_calls"
    else:
        message = {"role": "assistant", "content": plan["text"]}
        out_text, finish = plan["text"], "stop"
    completion = _tokens_out(out_text)
    return {
        "id": "chatcmpl-" + msg_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                  "total_tokens": prompt_tokens + completion},
    }


def openai_chunks(completion: dict, include_usage: bool) -> list[dict]:
    """OpenAI stream chunks for a finished completion (tool arguments in at least 4 fragments)."""
    base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"]}

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}])

    choice = completion["choices"][0]
    message = choice["message"]
    chunks = [chunk({"role": "assistant", "content": ""})]
    reasoning = upstream_profiles.reasoning_of(message)
    if reasoning:
        for piece in _split(reasoning[1], 3):
            chunks.append(chunk({reasoning[0]: piece}))
    if message.get("tool_calls"):
        call = message["tool_calls"][0]
        chunks.append(chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                             "function": {"name": call["function"]["name"], "arguments": ""}}]}))
        for piece in _split(call["function"]["arguments"], 5):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    else:
        for piece in _split(message["content"], 3):
            chunks.append(chunk({"content": piece}))
    if message.get("annotations"):
        chunks.append(chunk({"annotations": message["annotations"]}))
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        chunks.append(dict(base, choices=[], usage=completion["usage"]))
    return chunks


# --------------------------------------------------------------------------------------------------
# Wire helpers


def sse_event(name: str, data: Any) -> bytes:
    payload = data if isinstance(data, str) else _dumps(data)
    return ("event: %s\ndata: %s\n\n" % (name, payload)).encode()


def sse_data(data: Any) -> bytes:
    payload = data if isinstance(data, str) else _dumps(data)
    return ("data: %s\n\n" % payload).encode()


def scripted_sse_item(item: Any) -> bytes:
    """One item of a scripted "sse" list: a raw string, an {"event","data"} dict or a chunk dict."""
    if isinstance(item, str):
        return (item if item.endswith("\n") else item + "\n\n").encode()
    if isinstance(item, dict) and "event" in item and "data" in item and len(item) == 2:
        return sse_event(item["event"], item["data"])
    return sse_data(item)


def accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            q = params.strip()
            return not (q.startswith("q=") and float(q[2:] or 0) == 0)
    return False


class _Dropped(socket.error):
    """Raised to end a response with an abruptly closed socket; pywsgi ignores EPIPE quietly."""

    def __init__(self) -> None:
        super().__init__(errno.EPIPE, "fake upstream dropped the connection")


def _drop(environ: dict) -> None:
    sock = environ.get("fake.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    raise _Dropped()


def _headers_from_environ(environ: dict) -> dict:
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    if environ.get("CONTENT_LENGTH"):
        headers["content-length"] = environ["CONTENT_LENGTH"]
    return headers


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------------
# Benchmark answers: precomputed bytes, the request body is never parsed


class BenchPayloads:
    """Precomputed answers for one `/bench/<chunks>/<first_byte_ms>/<gap_ms>` shape."""

    def __init__(self, chunks: int, first_byte_ms: float, gap_ms: float) -> None:
        self.chunks = max(1, chunks)
        self.first_byte = first_byte_ms / 1000.0
        self.gap = gap_ms / 1000.0
        # "zq" marks content: the benchmark counts relayed deltas by it
        words = ["zq%03d " % i for i in range(self.chunks)]
        text = "".join(words)
        out_tokens = _tokens_out(text)
        self.out_tokens = out_tokens
        # Anthropic JSON; %d is the input token count
        msg = {"id": "msg_bench", "type": "message", "role": "assistant", "model": "bench-model",
               "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 999000111, "cache_creation_input_tokens": 0,
                         "cache_read_input_tokens": 0, "output_tokens": out_tokens}}
        self.anthropic_json = _dumps(msg).replace("%", "%%").replace("999000111", "%d").encode()
        start = {"type": "message_start", "message": dict(msg, content=[], stop_reason=None,
                                                            usage=dict(msg["usage"], output_tokens=1))}
        head = (sse_event("message_start", start).replace(b"%", b"%%").replace(b"999000111", b"%d")
                + sse_event("ping", {"type": "ping"})
                + sse_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}}))
        deltas = [sse_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": w}}) for w in words]
        self.anthropic_head = head + deltas[0].replace(b"%", b"%%")  # formatted with input tokens
        self.anthropic_deltas = deltas[1:]
        self.anthropic_tail = (sse_event("content_block_stop", {"type": "content_block_stop", "index": 0})
                               + sse_event("message_delta", {"type": "message_delta",
                                                             "delta": {"stop_reason": "end_turn",
                                                                       "stop_sequence": None},
                                                             "usage": {"output_tokens": out_tokens}})
                               + sse_event("message_stop", {"type": "message_stop"}))
        # OpenAI
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                "model": "bench-model"}

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            return sse_data(dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish}]))

        completion = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000,
                      "model": "bench-model",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 999000111, "completion_tokens": out_tokens,
                                "total_tokens": 999000222}}
        self.openai_json = (_dumps(completion).replace("%", "%%").replace("999000111", "%d")
                            .replace("999000222", "%d").encode())
        self.openai_head = chunk({"role": "assistant", "content": ""}) + chunk({"content": words[0]})
        self.openai_deltas = [chunk({"content": w}) for w in words[1:]]
        self.openai_tail = chunk({}, "stop")
        usage = dict(base, choices=[], usage={"prompt_tokens": 999000111, "completion_tokens": out_tokens,
                                              "total_tokens": 999000222})
        self.openai_usage = (sse_data(usage).replace(b"%", b"%%").replace(b"999000111", b"%d")
                             .replace(b"999000222", b"%d"))
        # OpenAI Responses API: the same words as output_text deltas; %d are the input and total tokens
        resp_usage = {"input_tokens": 999000111, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 999000222}
        part = {"type": "output_text", "annotations": [], "text": text}
        item = {"id": "msg_bench", "type": "message", "status": "completed", "role": "assistant", "content": [part]}
        response = {"id": "resp_bench", "object": "response", "created_at": 1700000000, "status": "completed",
                    "model": "bench-model", "output": [item], "usage": resp_usage}
        self.responses_json = (_dumps(response).replace("%", "%%").replace("999000111", "%d")
                               .replace("999000222", "%d").encode())

        def event(kind: str, **fields: Any) -> bytes:
            return sse_event(kind, dict(fields, type=kind))

        begun = dict(response, status="in_progress", output=[], usage=None)
        where = {"item_id": "msg_bench", "output_index": 0, "content_index": 0}
        deltas_r = [event("response.output_text.delta", delta=w, **where) for w in words]
        self.responses_head = (
            event("response.created", response=begun) + event("response.in_progress", response=begun)
            + event("response.output_item.added", output_index=0, item=dict(item, status="in_progress", content=[]))
            + event("response.content_part.added", part=dict(part, text=""), **where)
        ).replace(b"%", b"%%") + deltas_r[0]
        self.responses_deltas = deltas_r[1:]
        # "type" last, so the end of the stream names its terminal event (the benchmark driver looks there)
        self.responses_tail = (
            event("response.output_text.done", text=text, **where)
            + event("response.content_part.done", part=part, **where)
            + event("response.output_item.done", output_index=0, item=item)
        ).replace(b"%", b"%%") + (event("response.completed", response=response).replace(b"%", b"%%")
                                  .replace(b"999000111", b"%d").replace(b"999000222", b"%d"))


# --------------------------------------------------------------------------------------------------
# The WSGI application


class FakeApp:
    """The WSGI app; one instance per server process, state in `self.state`."""

    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        self._routes: dict[str, tuple[BenchPayloads | None, str]] = {}

    # -- routing ------------------------------------------------------------------------------------

    def _route(self, path: str) -> tuple[BenchPayloads | None, str]:
        """(bench payloads or None, endpoint) for a path; cached since paths repeat."""
        hit = self._routes.get(path)
        if hit is not None:
            return hit
        bench = None
        rest = path
        if path.startswith("/bench/"):
            parts = path.split("/", 5)
            try:
                bench = BenchPayloads(int(parts[2]), float(parts[3]), float(parts[4]))
                rest = "/" + (parts[5] if len(parts) > 5 else "")
            except (IndexError, ValueError):
                bench = None
        endpoint = next((e for e in _ENDPOINTS if rest.endswith(e)), rest)
        endpoint = _ENDPOINT_ALIAS.get(endpoint, endpoint)
        hit = (bench, endpoint)
        if len(self._routes) < 1000:
            self._routes[path] = hit
        return hit

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path.startswith("/_fake/"):
            return self._control(environ, start_response, path)
        method = environ["REQUEST_METHOD"]
        length = environ.get("CONTENT_LENGTH")
        raw = environ["wsgi.input"].read(int(length)) if length else environ["wsgi.input"].read()
        bench, endpoint = self._route(path)
        state = self.state
        ctx = _Ctx(environ, start_response, raw, endpoint, self.state)
        if bench is not None:
            state.bench_requests += 1
        else:
            ctx.record(method, path)
        if endpoint in _ANTHROPIC_ENDPOINTS and state.valid_tokens and not ctx.authorized():
            return ctx.json(401, {"type": "error", "error": {"type": "authentication_error",
                                                             "message": "invalid x-api-key"}})
        if endpoint == "/responses" and method == "POST" and bench is None:
            # the real API checks the request before anything else, scripted answers included
            try:
                responses_api.validate(ctx.parsed, state.reasoning_issued)
            except responses_api.Invalid as exc:
                return ctx.json(400, exc.body())
            inp = ctx.parsed.get("input")
            if isinstance(inp, list):
                state.reasoning_returned.extend(i["id"] for i in inp if i.get("type") == "reasoning")
        if endpoint in ("/v1/messages", "/v1/messages/count_tokens") and method == "POST" and bench is None:
            problem = foreign_thinking_signature(ctx.parsed)  # checked before anything scripted, as above
            if problem is not None:
                return ctx.json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": problem}})
        profile = _profile_of(ctx) if endpoint == "/chat/completions" and method == "POST" else None
        if profile and isinstance(ctx.parsed, dict):  # only then: a benchmark body is never parsed
            refused = upstream_profiles.refusal(profile, ctx.parsed)
            if refused is not None:
                return ctx.json(*refused)  # as the real upstream: before anything scripted
        per_cred = state.credentials.get(ctx.credential()) if state.credentials and endpoint in _ANTHROPIC_ENDPOINTS \
            else None
        if per_cred is not None:
            answer = self._per_credential(ctx, per_cred, method)
            if answer is not None:
                return answer
        queue = state.scripts.get(endpoint)
        if queue and path.startswith(queue[0].get("path_prefix") or "/"):
            # a scripted answer with "path_prefix" is only for requests under it (one of several upstreams)
            return self._scripted(ctx, queue.popleft(), method)
        if bench is not None and method == "POST" and endpoint in ("/chat/completions", "/v1/messages", "/responses"):
            return self._bench(ctx, bench)
        return self._model(ctx, method, {})

    def _per_credential(self, ctx: "_Ctx", cfg: dict, method: str) -> Iterable[bytes] | None:
        """A fault for this credential (the next queued one, else its standing status), or its model answer with
        its own rate-limit headers; None lets the request go on to the scripts."""
        cfg["served"] = cfg.get("served", 0) + 1
        headers = {k.lower(): str(v) for k, v in (cfg.get("headers") or {}).items()}
        faults = cfg.get("faults") or []
        fault = faults.pop(0) if faults else None
        status = int((fault or {}).get("status") or cfg.get("status") or 200)
        if status != 200:
            cfg["refused"] = cfg.get("refused", 0) + 1
            headers.update({k.lower(): str(v) for k, v in ((fault or {}).get("headers") or {}).items()})
            error_type = _ERROR_TYPES.get(status, "api_error")
            messages = {429: "Number of request tokens has exceeded your rate limit", 529: "Overloaded",
                        401: "invalid x-api-key"}
            return ctx.send(status, _dumps({"type": "error", "error": {
                "type": error_type, "message": messages.get(status, "fake upstream %s" % _status_line(status))}}
            ).encode(), "application/json", False, headers)
        if ctx.state.scripts.get(ctx.endpoint):
            return None
        return self._model(ctx, method, {}, headers)

    # -- control API --------------------------------------------------------------------------------

    def _control(self, environ: dict, start_response: Callable, path: str) -> Iterable[bytes]:
        state = self.state
        method = environ["REQUEST_METHOD"]
        length = environ.get("CONTENT_LENGTH")
        raw = environ["wsgi.input"].read(int(length)) if length else b""
        data = json.loads(raw) if raw else {}
        result: Any = {"ok": True}
        if path == "/_fake/requests":
            result = list(state.requests)
        elif path == "/_fake/reset" and method == "POST":
            state.reset()
        elif path == "/_fake/script" and method == "POST":
            key = _ENDPOINT_ALIAS.get(data["path"], data["path"])
            state.scripts.setdefault(key, collections.deque()).extend(data["responses"])
        elif path == "/_fake/oauth":
            if method == "POST":
                if "refresh_token" in data:
                    state.refresh_token = data["refresh_token"]
                if "valid_tokens" in data:
                    state.valid_tokens = set(data["valid_tokens"] or ())
            result = {"calls": state.oauth_calls, "refresh_token": state.refresh_token,
                      "valid_tokens": sorted(state.valid_tokens)}
        elif path == "/_fake/credentials":
            if method == "POST":
                for secret, cfg in (data.get("credentials") or {}).items():
                    if cfg is None:
                        state.credentials.pop(secret, None)
                    else:
                        merged = state.credentials.setdefault(secret, {})
                        merged.update(cfg)
            result = {k[-6:]: {"served": v.get("served", 0), "refused": v.get("refused", 0),
                               "faults_left": len(v.get("faults") or [])} for k, v in state.credentials.items()}
        elif path == "/_fake/compress" and method == "POST":
            state.compress = bool(data.get("enabled"))
        elif path == "/_fake/stats":
            result = {"requests": len(state.requests), "bench_requests": state.bench_requests,
                      "scripts_left": {k: len(v) for k, v in state.scripts.items() if v}}
        elif path == "/_fake/responses":
            result = {"issued": dict(state.reasoning_issued), "returned": list(state.reasoning_returned)}
        elif path == "/_fake/health":
            pass
        else:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error":"unknown control path"}']
        body = _dumps(result).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    # -- benchmark answers --------------------------------------------------------------------------

    def _bench(self, ctx: "_Ctx", bench: BenchPayloads) -> Iterable[bytes]:
        raw = ctx.raw
        tokens = len(raw) // 4
        openai = ctx.endpoint == "/chat/completions"
        responses = ctx.endpoint == "/responses"
        if not _STREAM_RE.search(raw):
            if bench.first_byte:
                gevent.sleep(bench.first_byte)
            if responses:
                body = bench.responses_json % (tokens, tokens + bench.out_tokens)
            elif openai:
                body = bench.openai_json % (tokens, tokens + bench.out_tokens)
            else:
                body = bench.anthropic_json % tokens
            return ctx.send(200, body, "application/json", openai or responses)
        if responses:
            head = bench.responses_head
            deltas = bench.responses_deltas
            tail = bench.responses_tail % (tokens, tokens + bench.out_tokens)
        elif openai:
            head = bench.openai_head
            deltas = bench.openai_deltas
            tail = bench.openai_tail
            if _USAGE_RE.search(raw):
                tail += bench.openai_usage % (tokens, tokens + bench.out_tokens)
            tail += b"data: [DONE]\n\n"
        else:
            head = bench.anthropic_head % tokens
            deltas = bench.anthropic_deltas
            tail = bench.anthropic_tail

        def stream() -> Iterator[bytes]:
            if bench.first_byte:
                gevent.sleep(bench.first_byte)
            yield head
            gap = bench.gap
            for delta in deltas:
                if gap:
                    gevent.sleep(gap)
                yield delta
            yield tail

        return ctx.stream(stream(), openai or responses)

    # -- scripted responses -------------------------------------------------------------------------

    def _scripted(self, ctx: "_Ctx", spec: dict, method: str) -> Iterable[bytes]:
        if spec.get("delay_ms"):
            gevent.sleep(spec["delay_ms"] / 1000.0)
        if spec.get("hang"):
            ctx.state.release.wait()
            _drop(ctx.environ)
        status = int(spec.get("status", 200))
        headers = {k.lower(): str(v) for k, v in (spec.get("headers") or {}).items()}
        openai = ctx.endpoint in _OPENAI_ENDPOINTS
        if ctx.endpoint == "/responses":
            self._remember_reasoning(spec)
        if "sse" in spec:
            pieces = [scripted_sse_item(item) for item in spec["sse"]]
            # stop_mid_event cuts the last listed event, so no [DONE] is added after it
            if (ctx.endpoint == "/chat/completions" and not spec.get("no_done") and not spec.get("stop_mid_event")
                    and not any(b"[DONE]" in p for p in pieces)):
                pieces.append(b"data: [DONE]\n\n")
            return ctx.stream(_paced(pieces, spec), openai, status, headers, spec)
        if "json" in spec:
            return ctx.send(status, _dumps(spec["json"]).encode(), "application/json", openai, headers)
        if "body" in spec:
            body = spec["body"].encode() if isinstance(spec["body"], str) else bytes(spec["body"])
            return ctx.send(status, body, headers.pop("content-type", "text/plain"), openai, headers)
        if status != 200:
            error_type = _ERROR_TYPES.get(status, "api_error")
            return ctx.send(status, _dumps({"type": "error", "error": {
                "type": error_type, "message": "fake upstream %s" % _status_line(status)}}).encode(),
                "application/json", openai, headers)
        return self._model(ctx, method, spec, headers)

    def _remember_reasoning(self, spec: dict) -> None:
        """Reasoning items in a scripted Responses answer count as issued (they may come back)."""
        found: list[dict] = []
        if isinstance(spec.get("json"), dict):
            found.extend(spec["json"].get("output") or ())
        for item in spec.get("sse") or ():
            data = item.get("data") if isinstance(item, dict) and "event" in item else item
            if isinstance(data, dict) and data.get("type") == "response.output_item.done":
                found.append(data.get("item") or {})
        for item in found:
            if isinstance(item, dict) and item.get("type") == "reasoning" and item.get("encrypted_content"):
                self.state.reasoning_issued[item["id"]] = item["encrypted_content"]

    # -- the Responses API --------------------------------------------------------------------------

    def _responses(self, ctx: "_Ctx", spec: dict, headers: dict | None) -> Iterable[bytes]:
        req = ctx.parsed
        state = self.state
        items = responses_api.output_items(req, responses_api.plan(req))
        for item in items:
            if item["type"] == "reasoning" and "encrypted_content" in item:
                state.reasoning_issued[item["id"]] = item["encrypted_content"]
        tokens = len(ctx.raw) // 4
        cached = 0
        key = req.get("prompt_cache_key")
        if isinstance(key, str):
            before = state.cache_prompts.get(key, b"")
            same = 0
            for a, b in zip(before, ctx.raw):
                if a != b:
                    break
                same += 1
            cached = responses_api.cached_tokens(same // 4)
            state.cache_prompts[key] = ctx.raw
        response = responses_api.response_object(req, items, responses_api.usage_for(tokens, cached, items))
        if not req.get("stream"):
            return ctx.send(200, _dumps(response).encode(), "application/json", True, headers)
        pieces = [sse_event(e["type"], e) for e in responses_api.stream_events(response)]
        return ctx.stream(_paced(pieces, spec), True, 200, headers, spec)

    # -- the scripted model -------------------------------------------------------------------------

    def _model(self, ctx: "_Ctx", method: str, spec: dict, headers: dict | None = None) -> Iterable[bytes]:
        endpoint = ctx.endpoint
        if endpoint == "/v1/oauth/token" and method == "POST":
            return self._oauth(ctx)
        if endpoint == "/v1/models" and method == "GET":
            data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                    for m in MODELS]
            return ctx.json(200, {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]})
        if endpoint == "/v1/messages/count_tokens" and method == "POST":
            return ctx.json(200, {"input_tokens": len(ctx.raw) // 4})
        if endpoint == "/responses" and method == "POST":
            return self._responses(ctx, spec, headers)
        if endpoint not in ("/v1/messages", "/chat/completions") or method != "POST":
            return ctx.json(404, {"type": "error", "error": {"type": "not_found_error",
                                                            "message": "fake upstream: no route %s %s"
                                                            % (method, endpoint)}})
        req = ctx.parsed if isinstance(ctx.parsed, dict) else None
        if req is None:
            return ctx.json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                            "message": "fake upstream: body is not a JSON object"}})
        msg_id = uuid.uuid4().hex[:24]
        tokens = len(ctx.raw) // 4
        openai = endpoint == "/chat/completions"
        if openai:
            profile = _profile_of(ctx)
            completion = openai_completion(req, plan_openai(req), tokens, msg_id)
            if profile is not None:
                completion = upstream_profiles.shape(profile, req, completion, self.state.cache)
            if not req.get("stream"):
                return ctx.send(200, _dumps(completion).encode(), "application/json", True, headers)
            usage = bool((req.get("stream_options") or {}).get("include_usage"))
            pieces = [sse_data(c) for c in openai_chunks(completion, usage)] + [b"data: [DONE]\n\n"]
        else:
            message = anthropic_message(req, plan_anthropic(req), tokens, msg_id)
            if not req.get("stream"):
                return ctx.send(200, _dumps(message).encode(), "application/json", False, headers)
            pieces = [sse_event(name, data) for name, data in anthropic_events(message)]
        return ctx.stream(_paced(pieces, spec), openai, 200, headers, spec)

    def _oauth(self, ctx: "_Ctx") -> Iterable[bytes]:
        state = self.state
        state.oauth_calls += 1
        data = ctx.parsed
        if not isinstance(data, dict):
            data = {k: v[0] for k, v in urllib.parse.parse_qs(ctx.raw.decode("utf-8", "replace")).items()}
        if data.get("grant_type") != "refresh_token":
            return ctx.json(400, {"error": "unsupported_grant_type"})
        if not state.refresh_token or data.get("refresh_token") != state.refresh_token:
            return ctx.json(400, {"error": "invalid_grant",
                                  "error_description": "Refresh token not found or invalid"})
        state.oauth_serial += 1
        n = state.oauth_serial
        access = "sk-ant-oat01-fake-%d" % n
        state.refresh_token = "sk-ant-ort01-fake-%d" % n
        if state.valid_tokens:
            state.valid_tokens.add(access)
        return ctx.json(200, {"token_type": "Bearer", "access_token": access, "expires_in": 3600,
                              "refresh_token": state.refresh_token, "scope": "user:inference user:profile"})


def _profile_of(ctx: "_Ctx") -> str | None:
    """The upstream a `/profile/<name>/...` path emulates, else None."""
    match = _PROFILE_RE.match(ctx.environ.get("PATH_INFO") or "")
    return match.group(1) if match and match.group(1) in upstream_profiles.PROFILES else None


def _paced(pieces: list[bytes], spec: dict) -> Iterator[bytes]:
    """Yield SSE events with the spec's pacing and faults (first_byte_ms, gap_ms, drop_after, ...)."""
    first_byte = float(spec.get("first_byte_ms") or 0) / 1000.0
    gap = float(spec.get("gap_ms") or 0) / 1000.0
    drop_after = spec.get("drop_after")
    garbage = spec.get("garbage")
    if first_byte:
        gevent.sleep(first_byte)
    cut = len(pieces) if drop_after is None else min(int(drop_after), len(pieces))
    if spec.get("stop_mid_event"):
        cut = min(cut, max(len(pieces) - 1, 0))
    for i, piece in enumerate(pieces[:cut]):
        if i and gap:
            gevent.sleep(gap)
        if garbage:
            yield (b"data: {this is not json\n\n" if garbage == "data"
                   else b"GARBAGE not-an-sse-line %d\n\x00\xff?\n\n" % i)
        yield piece
    if spec.get("stop_mid_event") and cut < len(pieces):
        if gap:
            gevent.sleep(gap)
        half = pieces[cut]
        yield half[:max(1, len(half) // 2)]
        yield _DROP
    elif cut < len(pieces):
        yield _DROP


_DROP = b"\x00fake-drop\x00"  # sentinel piece: close the socket abruptly here


class _Ctx:
    """One request: its raw body, parsed body (lazily) and the ways to answer it."""

    __slots__ = ("environ", "start_response", "raw", "endpoint", "state", "_parsed")

    def __init__(self, environ: dict, start_response: Callable, raw: bytes, endpoint: str, state: FakeState):
        self.environ = environ
        self.start_response = start_response
        self.raw = raw
        self.endpoint = endpoint
        self.state = state
        self._parsed: Any = _Ctx  # sentinel: not parsed yet

    @property
    def parsed(self) -> Any:
        if self._parsed is _Ctx:
            self._parsed = _parse_body(self.raw)
        return self._parsed

    def record(self, method: str, path: str) -> None:
        body = self.parsed
        query = self.environ.get("QUERY_STRING") or ""
        self.state.requests.append({
            "method": method, "path": path, "query": query, "endpoint": self.endpoint,
            "headers": _headers_from_environ(self.environ), "body": body,
            "model": body.get("model") if isinstance(body, dict) else None, "time": time.time(),
        })

    def credential(self) -> str:
        """The API key or bearer token the request carries."""
        key = self.environ.get("HTTP_X_API_KEY")
        if key:
            return key.strip()
        auth = self.environ.get("HTTP_AUTHORIZATION") or ""
        return auth[7:].strip() if auth[:7].lower() == "bearer " else ""

    def authorized(self) -> bool:
        valid = self.state.valid_tokens
        key = self.environ.get("HTTP_X_API_KEY")
        if key and key in valid:
            return True
        auth = self.environ.get("HTTP_AUTHORIZATION") or ""
        return auth[:7].lower() == "bearer " and auth[7:].strip() in valid

    def _headers(self, openai: bool, content_type: str, extra: dict | None) -> list[tuple[str, str]]:
        rid = "%016x" % self.state.next_id()
        if openai:
            headers = {"content-type": content_type, "x-request-id": "req_" + rid,
                       "openai-processing-ms": "1", "x-ratelimit-remaining-requests": "9999"}
        else:
            headers = {"content-type": content_type, "request-id": "req_fake" + rid,
                       "anthropic-ratelimit-requests-limit": "4000",
                       "anthropic-ratelimit-requests-remaining": "3999"}
        if extra:
            headers.update(extra)
        return list(headers.items())

    def _gzip_ok(self) -> bool:
        return self.state.compress and accepts_gzip(self.environ.get("HTTP_ACCEPT_ENCODING") or "")

    def send(self, status: int, body: bytes, content_type: str, openai: bool,
             extra: dict | None = None) -> list[bytes]:
        headers = self._headers(openai, content_type, extra)
        if self._gzip_ok():
            body = gzip.compress(body, mtime=0)
            headers.append(("content-encoding", "gzip"))
        headers.append(("content-length", str(len(body))))
        self.start_response(_status_line(status), headers)
        return [body]

    def json(self, status: int, obj: Any) -> list[bytes]:
        return self.send(status, _dumps(obj).encode(), "application/json", self.endpoint in _OPENAI_ENDPOINTS)

    def stream(self, pieces: Iterator[bytes], openai: bool, status: int = 200, extra: dict | None = None,
               spec: dict | None = None) -> Iterator[bytes]:
        headers = self._headers(openai, "text/event-stream; charset=utf-8", extra)
        headers.append(("cache-control", "no-cache"))
        compress = self._gzip_ok()
        if compress:
            headers.append(("content-encoding", "gzip"))
        self.start_response(_status_line(status), headers)
        environ = self.environ

        def body() -> Iterator[bytes]:
            z = zlib.compressobj(6, zlib.DEFLATED, 31) if compress else None
            for piece in pieces:
                if piece is _DROP:
                    _drop(environ)
                if z is not None:
                    # A sync flush per event: compressed, yet every event still leaves at once
                    piece = z.compress(piece) + z.flush(zlib.Z_SYNC_FLUSH)
                yield piece
            if z is not None:
                yield z.flush()

        return body()


# --------------------------------------------------------------------------------------------------
# Server


class _Handler(WSGIHandler):
    """Exposes the socket to the app (to drop connections) and disables Nagle for prompt SSE writes."""

    def __init__(self, sock, address, server, rfile=None):  # type: ignore[no-untyped-def]
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        super().__init__(sock, address, server, rfile)

    def get_environ(self):  # type: ignore[no-untyped-def]
        env = super().get_environ()
        env["fake.socket"] = self.socket
        return env


def make_server(host: str = "127.0.0.1", port: int = 0, app: FakeApp | None = None) -> WSGIServer:
    """A pywsgi server for the fake (not started)."""
    return WSGIServer((host, port), app or FakeApp(), handler_class=_Handler, log=None, backlog=4096)


def _raise_fd_limit() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    _raise_fd_limit()
    server = make_server(args.host, args.port)
    server.start()
    # As the proxy's workers do (app/lifecycle.py): a benchmark must not time this process's collections.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    sys.stdout.write("PORT %d\n" % server.server_port)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":  # pragma: no cover
    main()
