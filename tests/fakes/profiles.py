"""Upstream emulation for the fake's chat completions: what each real upstream refuses and how it answers.

The fake serves ``/profile/<name>/chat/completions`` (base URL ``<fake>/profile/<name>``) as upstream
``<name>`` would: ``refusal`` gives the error that upstream answers for a request it refuses, and ``shape``
rewrites the scripted model's completion into that upstream's dialect (reasoning field, cache usage fields,
structured output, PDFs, the web plugin). Each rule cites the behaviour documented in docs/upstreams.md.
Pure functions, plus one small per-process cache-prefix memory (``CacheMemory``).
"""
from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import re
from typing import Any

PROFILES = ("openai", "openrouter", "deepseek", "github", "vllm", "llamacpp", "ollama", "generic")
THINKING_TEXT = "The user wants the file read, so I call the Read tool."
ANSWER_THINKING = "The tool result is in; I answer with its first word."

# Documented request body fields of the strict upstreams; anything else is refused.
_OPENAI_FIELDS = frozenset({
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "prompt_cache_retention", "reasoning_effort", "response_format",
    "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
    "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})
_GITHUB_FIELDS = frozenset({
    "model", "messages", "frequency_penalty", "max_tokens", "max_completion_tokens", "modalities",
    "presence_penalty", "prediction", "response_format", "seed", "stop", "stream", "stream_options",
    "temperature", "tool_choice", "tools", "top_p",
})
_STRICT_FIELDS = {"openai": _OPENAI_FIELDS, "github": _GITHUB_FIELDS}
_MESSAGE_FIELDS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "function_call", "refusal", "audio"},
    "tool": {"role", "content", "tool_call_id"},
}
_PART_FIELDS = {"text": {"type", "text"}, "image_url": {"type", "image_url"}, "file": {"type", "file"},
                "input_audio": {"type", "input_audio"}}
_REASONING_MODELS = ("o1*", "o3*", "o4*", "gpt-5*", "openai/o1*", "openai/o3*", "openai/o4*", "openai/gpt-5*")
_PDF_TEXT = re.compile(rb"\(([^)]*)\)\s*Tj")


def _error(status: int, message: str, *, param: str | None = None, code: str | None = None,
           kind: str = "invalid_request_error") -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


def is_reasoning_model(model: Any) -> bool:
    name = model.lower() if isinstance(model, str) else ""
    return any(fnmatch.fnmatchcase(name, p) for p in _REASONING_MODELS)


def _parts(content: Any) -> list[dict]:
    return [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []


def refusal(profile: str, req: dict) -> tuple[int, dict] | None:
    """(status, error body) for a request this upstream refuses; None when it takes it."""
    messages = req.get("messages") if isinstance(req.get("messages"), list) else []
    strict = _STRICT_FIELDS.get(profile)
    if strict is not None:
        for key in req:
            if key not in strict:
                return _error(400, f"Unrecognized request argument supplied: {key}")
        for i, m in enumerate(messages):
            allowed = _MESSAGE_FIELDS.get(m.get("role") if isinstance(m, dict) else None)
            if allowed is None:
                return _error(400, f"Invalid value for 'messages[{i}].role'", param=f"messages[{i}].role")
            for key in m:
                if key not in allowed:
                    return _error(400, f"Unrecognized request argument supplied: messages[{i}].{key}",
                                  param=f"messages[{i}].{key}")
            for j, part in enumerate(_parts(m.get("content"))):
                fields = _PART_FIELDS.get(part.get("type"))
                if fields is None or (profile == "github" and part.get("type") in ("file", "input_audio")):
                    return _error(400, f"Invalid value: '{part.get('type')}'. Supported values are: 'text' and "
                                       "'image_url'.", param=f"messages[{i}].content[{j}].type")
                for key in part:
                    if key not in fields:
                        return _error(400, f"Unrecognized request argument supplied: "
                                           f"messages[{i}].content[{j}].{key}")
                if part.get("type") == "file":
                    file = part.get("file") if isinstance(part.get("file"), dict) else {}
                    data = file.get("file_data")
                    if not (file.get("file_id") or (isinstance(data, str) and data.startswith("data:"))):
                        return _error(400, "Invalid file data: expected a base64-encoded data URL or a file_id",
                                      param=f"messages[{i}].content[{j}].file")
        if is_reasoning_model(req.get("model")):
            if "max_tokens" in req:
                return _error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                   "Use 'max_completion_tokens' instead.", param="max_tokens",
                              code="unsupported_parameter")
            for key in ("temperature", "top_p"):
                if key in req and req[key] != 1:
                    return _error(400, f"Unsupported value: '{key}' does not support {req[key]} with this model. "
                                       "Only the default (1) value is supported.", param=key,
                                  code="unsupported_value")
        elif "reasoning_effort" in req:
            return _error(400, "Unrecognized request argument supplied: reasoning_effort")
    if profile == "deepseek":
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                continue
            for j, part in enumerate(_parts(m.get("content"))):
                if part.get("type") != "text":
                    return _error(400, f"Failed to deserialize the JSON body into the target type: messages[{i}]: "
                                       f"unknown variant `{part.get('type')}`, expected `text`",
                                  kind="invalid_request_error")
            if deepseek_thinking(req) and m.get("role") == "assistant" and m.get("tool_calls") \
                    and "reasoning_content" not in m:
                return _error(400, f"Missing `reasoning_content` field in the assistant message at message index "
                                   f"{i}. For more information, please refer to "
                                   "https://api-docs.deepseek.com/guides/thinking_mode#tool-calls")
        fmt = req.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") not in ("text", "json_object"):
            return _error(400, "This response_format type is unavailable now")
        if isinstance(fmt, dict) and fmt.get("type") == "json_object" and "json" not in json.dumps(messages).lower():
            return _error(400, "Prompt must contain the word 'json' in some form to use 'response_format' of "
                               "type 'json_object'.")
    if profile == "openrouter":
        for i, m in enumerate(messages):
            for part in _parts(m.get("content") if isinstance(m, dict) else None):
                cc = part.get("cache_control")
                if cc is not None and cc != {"type": "ephemeral"} and not (
                        isinstance(cc, dict) and cc.get("type") == "ephemeral" and set(cc) <= {"type", "ttl"}):
                    return _error(400, f"Invalid cache_control in messages[{i}]")
    return None


def deepseek_thinking(req: dict) -> bool:
    """DeepSeek's thinking mode is on unless the request turns it off (it is on by default)."""
    thinking = req.get("thinking")
    return not (isinstance(thinking, dict) and thinking.get("type") == "disabled") and req.get("model") != "deepseek-chat"


def wants_reasoning(profile: str, req: dict) -> bool:
    if profile == "deepseek":
        return deepseek_thinking(req)
    if profile == "openrouter":
        return bool(req.get("reasoning_effort") or req.get("reasoning"))
    if profile in ("vllm", "llamacpp", "ollama"):
        return bool(req.get("reasoning_effort"))
    return False


class CacheMemory:
    """The upstream's prompt cache, roughly: the longest prefix of the serialised messages seen before."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def reset(self) -> None:
        self._seen.clear()

    def hit(self, key: str, prompt: str) -> int:
        """Characters of `prompt` a previous request under `key` already had (then remembers this one)."""
        before = self._seen.get(key, "")
        n = 0
        limit = min(len(before), len(prompt))
        while n < limit and before[n] == prompt[n]:
            n += 1
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = prompt
        return n


def _has_cache_control(req: dict) -> bool:
    for m in req.get("messages") or ():
        if isinstance(m, dict):
            for part in _parts(m.get("content")):
                if "cache_control" in part:
                    return True
    return False


def usage_for(profile: str, req: dict, prompt_tokens: int, completion_tokens: int, memory: CacheMemory) -> dict:
    """The usage object in this upstream's dialect, with cache reads (and writes) the way it reports them."""
    # what a real prompt cache sees first: the tool definitions, then the messages in order
    prompt = json.dumps([req.get("tools"), req.get("messages")], sort_keys=True)
    key = str(req.get("prompt_cache_key") or req.get("user") or "") + "|" + str(req.get("model"))
    model = str(req.get("model") or "")
    explicit = profile == "openrouter" and (model.startswith("anthropic/") or model.startswith("google/"))
    if explicit and not _has_cache_control(req):
        cached = 0  # Anthropic models cache only what cache_control marks
        memory.hit(key, prompt)
    else:
        cached = min(memory.hit(key, prompt) // 4, prompt_tokens)
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    if profile == "deepseek":
        usage["prompt_cache_hit_tokens"] = cached
        usage["prompt_cache_miss_tokens"] = prompt_tokens - cached
    elif profile == "openrouter":
        written = (prompt_tokens - cached) // 2 if explicit and _has_cache_control(req) else 0
        usage["prompt_tokens_details"] = {"cached_tokens": cached, "cache_write_tokens": written}
    elif profile in ("openai", "github", "vllm", "llamacpp"):
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def _example(schema: Any) -> Any:
    """A value that satisfies a simple JSON schema (objects, arrays, enums, scalars)."""
    if not isinstance(schema, dict):
        return None
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {k: _example(v) for k, v in props.items()}
    if kind == "array":
        return [_example(schema.get("items"))]
    return {"string": "example", "integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, "example")


def _pdf_text(req: dict) -> str | None:
    """The text of the first PDF `file` part (what a model reading the PDF would see), else None."""
    for m in req.get("messages") or ():
        for part in _parts(m.get("content") if isinstance(m, dict) else None):
            if part.get("type") != "file" or not isinstance(part.get("file"), dict):
                continue
            data = part["file"].get("file_data")
            if isinstance(data, str) and data.startswith("data:application/pdf;base64,"):
                try:
                    raw = base64.b64decode(data.split(",", 1)[1], validate=True)
                except (binascii.Error, ValueError):
                    return ""
                return " ".join(t.decode("latin-1") for t in _PDF_TEXT.findall(raw))
            if isinstance(data, str):
                return f"(fetched {data})"
    return None


def shape(profile: str, req: dict, completion: dict, memory: CacheMemory) -> dict:
    """The scripted model's completion as this upstream would send it."""
    message = completion["choices"][0]["message"]
    fmt = req.get("response_format")
    pdf = _pdf_text(req)
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object") and not message.get("tool_calls"):
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else {
            "type": "object", "properties": {"answer": {"type": "string"}}}
        message["content"] = json.dumps(_example(schema))
    elif pdf is not None and not message.get("tool_calls"):
        message["content"] = f"The document says: {pdf}"
    if any(isinstance(p, dict) and p.get("id") == "web" for p in req.get("plugins") or ()):
        message["content"] = "Found it: see [example.com](https://example.com/result)."
        message["annotations"] = [
            {"type": "url_citation", "url_citation": {
                "url": "https://example.com/result", "title": "Example result", "start_index": 14, "end_index": 51}},
            {"type": "url_citation", "url_citation": {
                "url": "https://example.org/background", "title": "Background", "start_index": 0, "end_index": 0}}]
    if wants_reasoning(profile, req):
        field = "reasoning" if profile in ("openrouter", "ollama") else "reasoning_content"
        message[field] = THINKING_TEXT if message.get("tool_calls") else ANSWER_THINKING
    usage = completion["usage"]
    completion["usage"] = usage_for(profile, req, usage["prompt_tokens"], usage["completion_tokens"], memory)
    return completion


def reasoning_of(message: dict) -> tuple[str, str] | None:
    for field in ("reasoning_content", "reasoning"):
        if isinstance(message.get(field), str) and message[field]:
            return field, message[field]
    return None
