"""The fake OpenAI Responses API (`POST /responses`): validation, a scripted reasoning model, its answers.

Written from OpenAI's API reference for `POST /v1/responses` and its streaming events. Pure functions;
`tests/fakes/upstream.py` serves them. Like the real API it refuses, with a 400 in OpenAI's error shape:

- an unknown parameter, an unknown input item type or content part type, a role that cannot carry a part
  (`input_text` in an assistant message), a malformed item;
- a `function_call_output` whose `call_id` has no `function_call` before it in `input`;
- a `reasoning` item it did not return itself (its id and `encrypted_content` are checked: with
  `store: false` nothing is kept upstream, so only the encrypted content it issued can be read), and a
  reasoning item without the item it led to after it;
- a function tool whose `strict` is not `false` while its schema breaks the strict-mode rules (strict is
  the default in this API);
- `max_output_tokens` under 16, an unknown `reasoning.effort` / `reasoning.summary`, an unknown `include`.

The scripted model always reasons (a reasoning item first); summaries come only with `reasoning.summary`
and encrypted content only with `include: ["reasoning.encrypted_content"]`, as with OpenAI's models.
Asked to read files (a Read tool, absolute paths in the last user text) it calls Read once per path,
after a short text; given the outputs it answers with their first words.
"""
from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any, Iterator, Mapping

PARAMETERS = frozenset({
    "background", "conversation", "include", "input", "instructions", "max_output_tokens", "max_tool_calls",
    "metadata", "model", "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key",
    "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "stream",
    "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
})
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning", "item_reference",
              "custom_tool_call", "custom_tool_call_output")
INCLUDE = frozenset({"code_interpreter_call.outputs", "computer_call_output.output.image_url",
                     "file_search_call.results", "message.input_image.image_url",
                     "message.output_text.logprobs", "reasoning.encrypted_content",
                     "web_search_call.action.sources"})
EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
SUMMARIES = frozenset({"auto", "concise", "detailed"})
INPUT_PARTS = frozenset({"input_text", "input_image", "input_file"})
OUTPUT_PARTS = frozenset({"output_text", "refusal"})
ROLES = frozenset({"user", "assistant", "system", "developer"})
REASONING_TOKENS = 64  # what the scripted model "thinks", counted in output_tokens
CACHE_MIN = 1024  # prompt caching starts at 1024 tokens and grows in steps of 128
_PATH_RE = re.compile(r"(?:(?<=\s)|(?<=^)|(?<=['\"`(]))(/[^\s'\"`]+)")
_LINE_PREFIX_RE = re.compile(r"^\s*\d+(?:\t|\u2192)")


class Invalid(Exception):
    """A 400 as the real API gives it."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": self.code}}


# -- validation -----------------------------------------------------------------------------------------


def validate(req: Any, issued: Mapping[str, str]) -> None:
    """Raise Invalid for what the real API refuses. `issued`: reasoning item id -> encrypted content."""
    if not isinstance(req, dict):
        raise Invalid("The request body must be a JSON object.")
    for key in req:
        if key not in PARAMETERS:
            raise Invalid(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
    if not isinstance(req.get("model"), str) or not req["model"]:
        raise Invalid("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    for key in ("stream", "store", "parallel_tool_calls"):
        if key in req and not isinstance(req[key], bool):
            raise Invalid(f"Invalid type for '{key}': expected a boolean.", key, "invalid_type")
    if "instructions" in req and not isinstance(req["instructions"], str):
        raise Invalid("Invalid type for 'instructions': expected a string.", "instructions", "invalid_type")
    if "max_output_tokens" in req:
        value = req["max_output_tokens"]
        if type(value) is not int:
            raise Invalid("Invalid type for 'max_output_tokens': expected an integer.", "max_output_tokens",
                          "invalid_type")
        if value < 16:
            raise Invalid(f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
                          f"but got {value} instead.", "max_output_tokens", "integer_below_min_value")
    for key in ("prompt_cache_key", "safety_identifier"):
        if key in req and (not isinstance(req[key], str) or len(req[key]) > 64):
            raise Invalid(f"Invalid '{key}': string too long. Expected a string with maximum length 64.", key,
                          "string_above_max_length")
    include = req.get("include", [])
    if not isinstance(include, list):
        raise Invalid("Invalid type for 'include': expected an array.", "include", "invalid_type")
    for i, value in enumerate(include):
        if value not in INCLUDE:
            raise Invalid(f"Invalid value: '{value}'. Supported values are: {_quoted(sorted(INCLUDE))}.",
                          f"include[{i}]", "invalid_value")
    reasoning = req.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise Invalid("Invalid type for 'reasoning': expected an object.", "reasoning", "invalid_type")
        for key in reasoning:
            if key not in ("effort", "summary", "generate_summary"):
                raise Invalid(f"Unknown parameter: 'reasoning.{key}'.", f"reasoning.{key}", "unknown_parameter")
        if reasoning.get("effort") is not None and reasoning["effort"] not in EFFORTS:
            raise Invalid(f"Invalid value: '{reasoning['effort']}'. Supported values are: "
                          f"{_quoted(sorted(EFFORTS))}.", "reasoning.effort", "invalid_value")
        if reasoning.get("summary") is not None and reasoning["summary"] not in SUMMARIES:
            raise Invalid(f"Invalid value: '{reasoning['summary']}'. Supported values are: "
                          f"{_quoted(sorted(SUMMARIES))}.", "reasoning.summary", "invalid_value")
    _validate_tools(req)
    inp = req.get("input")
    if isinstance(inp, str):
        return
    if not isinstance(inp, list):
        raise Invalid("Invalid type for 'input': expected a string or an array of input items.", "input",
                      "invalid_type")
    _validate_items(inp, issued)


def _quoted(values: list[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _validate_tools(req: dict) -> None:
    tools = req.get("tools", [])
    if not isinstance(tools, list):
        raise Invalid("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    names = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise Invalid(f"Invalid value: '{kind}'. Supported values are: 'function', 'file_search', "
                          f"'web_search', 'computer_use_preview', 'mcp', 'custom'.", f"tools[{i}].type",
                          "invalid_value")
        for key in tool:
            if key not in ("type", "name", "description", "parameters", "strict"):
                raise Invalid(f"Unknown parameter: 'tools[{i}].{key}'.", f"tools[{i}].{key}", "unknown_parameter")
        name = tool.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name):
            raise Invalid(f"Invalid 'tools[{i}].name': string does not match pattern.", f"tools[{i}].name",
                          "invalid_value")
        names.add(name)
        params = tool.get("parameters")
        if not isinstance(params, dict):
            raise Invalid(f"Missing required parameter: 'tools[{i}].parameters'.", f"tools[{i}].parameters",
                          "missing_required_parameter")
        if tool.get("strict", True) is not False:
            problem = _strict_problem(params, ())
            if problem:
                raise Invalid(f"Invalid schema for function '{name}': {problem}", f"tools[{i}].parameters",
                              "invalid_function_parameters")
    choice = req.get("tool_choice")
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise Invalid(f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
                          "tool_choice", "invalid_value")
    elif isinstance(choice, dict) and choice.get("type") == "function":
        if choice.get("name") not in names:
            raise Invalid(f"Tool choice '{choice.get('name')}' not found in 'tools' parameter.", "tool_choice",
                          "invalid_value")
    else:
        raise Invalid("Invalid value for 'tool_choice'.", "tool_choice", "invalid_value")


def _strict_problem(schema: Any, context: tuple) -> str | None:
    """Strict mode: every object lists all properties as required and sets additionalProperties false."""
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        props = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        missing = [p for p in props if p not in required]
        if missing:
            return (f"In context={context}, 'required' is required to be supplied and to be an array including "
                    f"every key in properties. Missing '{missing[0]}'.")
        for key, sub in props.items():
            problem = _strict_problem(sub, context + ("properties", key))
            if problem:
                return problem
    if isinstance(schema.get("items"), dict):
        return _strict_problem(schema["items"], context + ("items",))
    return None


def _validate_items(items: list, issued: Mapping[str, str]) -> None:
    calls: set[str] = set()
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise Invalid(f"Invalid type for '{where}': expected an input item object.", where, "invalid_type")
        kind = item.get("type", "message" if "role" in item else None)
        if kind not in ITEM_TYPES:
            raise Invalid(f"Invalid value: '{kind}'. Supported values are: {_quoted(list(ITEM_TYPES))}.",
                          f"{where}.type", "invalid_value")
        if kind == "message":
            _validate_message(item, where)
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str) or (key != "arguments" and not item[key]):
                    raise Invalid(f"Missing required parameter: '{where}.{key}'.", f"{where}.{key}",
                                  "missing_required_parameter")
            if "id" in item and not str(item["id"]).startswith("fc"):
                raise Invalid(f"Invalid 'input[{i}].id': '{item['id']}'. Expected an ID that begins with 'fc'.",
                              f"{where}.id", "invalid_value")
            calls.add(item["call_id"])
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise Invalid(f"Missing required parameter: '{where}.call_id'.", f"{where}.call_id",
                              "missing_required_parameter")
            output = item.get("output")
            if isinstance(output, list):
                for k, part in enumerate(output):
                    _validate_part(part, f"{where}.output[{k}]", INPUT_PARTS)
            elif not isinstance(output, str):
                raise Invalid(f"Invalid type for '{where}.output': expected a string or an array.",
                              f"{where}.output", "invalid_type")
            if call_id not in calls:
                raise Invalid(f"No tool call found for function call output with call_id {call_id}.", "input")
        elif kind == "reasoning":
            item_id = item.get("id")
            if not isinstance(item_id, str) or not isinstance(item.get("summary"), list):
                raise Invalid(f"Missing required parameter: '{where}.summary'.", f"{where}.summary",
                              "missing_required_parameter")
            for k, part in enumerate(item["summary"]):
                if not isinstance(part, dict) or part.get("type") != "summary_text" or \
                        not isinstance(part.get("text"), str):
                    raise Invalid(f"Invalid value for '{where}.summary[{k}]'.", f"{where}.summary[{k}]",
                                  "invalid_value")
            if item_id not in issued:
                raise Invalid(f"Item with id '{item_id}' not found. Items are not persisted when `store` is set "
                              "to false. Try again with `store` set to true, or remove this item from your input.",
                              "input")
            if item.get("encrypted_content") != issued[item_id]:
                raise Invalid(f"The encrypted content for item {item_id} could not be verified.", "input",
                              "invalid_encrypted_content")
            following = items[i + 1] if i + 1 < len(items) else None
            if not isinstance(following, dict) or following.get("type", "message") == "reasoning" or (
                    following.get("type", "message") == "message" and following.get("role") != "assistant"):
                raise Invalid(f"Item '{item_id}' of type 'reasoning' was provided without its required following "
                              "item.", "input")


def _validate_message(item: dict, where: str) -> None:
    for key in item:
        if key not in ("type", "role", "content", "id", "status"):
            raise Invalid(f"Unknown parameter: '{where}.{key}'.", f"{where}.{key}", "unknown_parameter")
    role = item.get("role")
    if role not in ROLES:
        raise Invalid(f"Invalid value: '{role}'. Supported values are: 'user', 'assistant', 'system', and "
                      "'developer'.", f"{where}.role", "invalid_value")
    content = item.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise Invalid(f"Invalid type for '{where}.content': expected a string or an array.", f"{where}.content",
                      "invalid_type")
    allowed = OUTPUT_PARTS if role == "assistant" else INPUT_PARTS
    for k, part in enumerate(content):
        _validate_part(part, f"{where}.content[{k}]", allowed)


def _validate_part(part: Any, where: str, allowed: frozenset) -> None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind not in allowed:
        raise Invalid(f"Invalid value: '{kind}'. Supported values are: {_quoted(sorted(allowed))}.",
                      f"{where}.type", "invalid_value")
    if kind in ("input_text", "output_text"):
        if not isinstance(part.get("text"), str):
            raise Invalid(f"Missing required parameter: '{where}.text'.", f"{where}.text",
                          "missing_required_parameter")
    elif kind == "input_image":
        url = part.get("image_url")
        if not (isinstance(url, str) and (url.startswith(("http://", "https://", "data:image/")))) \
                and not part.get("file_id"):
            raise Invalid(f"Invalid '{where}.image_url'. Expected a valid URL or a base64-encoded data URL.",
                          f"{where}.image_url", "invalid_value")
        if part.get("detail", "auto") not in ("auto", "low", "high"):
            raise Invalid(f"Invalid value: '{part.get('detail')}'.", f"{where}.detail", "invalid_value")
    elif kind == "input_file":
        if "file_data" in part:
            if not isinstance(part.get("filename"), str) or not part["filename"]:
                raise Invalid(f"Missing required parameter: '{where}.filename'.", f"{where}.filename",
                              "missing_required_parameter")
            if not str(part["file_data"]).startswith("data:"):
                raise Invalid(f"Invalid '{where}.file_data'. Expected a base64-encoded data URL.",
                              f"{where}.file_data", "invalid_value")
        elif not isinstance(part.get("file_url"), str) and not part.get("file_id"):
            raise Invalid(f"Missing required parameter: '{where}.file_data'.", f"{where}.file_data",
                          "missing_required_parameter")


# -- the scripted model -----------------------------------------------------------------------------------


def _parts_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def first_word(text: str) -> str:
    words = _LINE_PREFIX_RE.sub("", text.lstrip(), count=1).split()
    return words[0] if words else ""


def plan(req: dict) -> dict:
    """{"kind": "text", "text"} or {"kind": "tool", "paths": [...]} for a (valid) request."""
    items = req.get("input")
    items = [{"type": "message", "role": "user", "content": items}] if isinstance(items, str) else list(items or ())
    turn: list[dict] = []  # the items after the model's last output
    for item in reversed(items):
        kind = item.get("type", "message")
        if kind in ("function_call", "reasoning") or (kind == "message" and item.get("role") == "assistant"):
            break
        turn.insert(0, item)
    outputs = [i for i in turn if i.get("type") == "function_call_output"]
    if outputs:
        words = [first_word(_parts_text(o.get("output"))) for o in outputs]
        if len(words) == 1:
            return {"kind": "text", "text": f"The first word of the file is {words[0]}."}
        return {"kind": "text", "text": "The first words of the files are " + ", ".join(words) + "."}
    tools = req.get("tools") or []
    if any(t.get("name") == "Read" for t in tools):
        users = [i for i in turn if i.get("type", "message") == "message" and i.get("role") == "user"]
        content = users[-1].get("content") if users else None
        last = content if isinstance(content, str) else _parts_text(content[-1:] if content else [])
        paths = []
        for found in _PATH_RE.findall(last):
            path = found.rstrip(".,;:!?)>]}")
            if len(path) > 1 and path not in paths:
                paths.append(path)
        if paths:
            return {"kind": "tool", "paths": paths}
    return {"kind": "text", "text": "Hello from the fake Responses API."}


def _id(prefix: str) -> str:
    return prefix + "_" + secrets.token_hex(16)


def output_items(req: dict, the_plan: dict) -> list[dict]:
    """The finished output items for a plan: reasoning first, then text, then one call per path."""
    reasoning = req.get("reasoning") or {}
    summary: list[dict] = []
    if reasoning.get("summary"):
        if the_plan["kind"] == "tool":
            texts = ["**Planning the read**\n\nThe user wants the first word of a file, so I read it.",
                     "**Choosing the tool**\n\nThe Read tool takes an absolute path."]
        else:
            texts = ["**Answering**\n\nI have what I need to answer."]
        summary = [{"type": "summary_text", "text": t} for t in texts]
    item: dict = {"id": _id("rs"), "type": "reasoning", "summary": summary}
    if "reasoning.encrypted_content" in (req.get("include") or ()):
        item["encrypted_content"] = "gAAAAAB" + secrets.token_urlsafe(96)
    out = [item]
    if the_plan["kind"] == "tool":
        out.append(_message("I'll read the file." if len(the_plan["paths"]) == 1 else "I'll read the files."))
        for path in the_plan["paths"]:
            out.append({"id": _id("fc"), "type": "function_call", "status": "completed",
                        "arguments": '{"file_path":%s}' % _json_string(path), "call_id": _id("call"),
                        "name": "Read"})
    else:
        out.append(_message(the_plan["text"]))
    return out


def _json_string(text: str) -> str:
    return json.dumps(text)


def _message(text: str) -> dict:
    return {"id": _id("msg"), "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]}


def usage_for(input_tokens: int, cached: int, items: list[dict]) -> dict:
    visible = sum(len(_parts_text(i.get("content"))) + len(i.get("arguments") or "") for i in items) // 4 + 1
    output = visible + REASONING_TOKENS
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
            "total_tokens": input_tokens + output}


def cached_tokens(prefix_tokens: int) -> int:
    """The cache hit for a prompt sharing `prefix_tokens` with an earlier one under the same cache key."""
    if prefix_tokens < CACHE_MIN:
        return 0
    return prefix_tokens - (prefix_tokens - CACHE_MIN) % 128


def response_object(req: dict, items: list[dict], usage: dict | None, *, resp_id: str | None = None,
                    status: str = "completed") -> dict:
    """The response object (the JSON answer, and inside response.* events)."""
    reasoning = req.get("reasoning") or {}
    return {
        "id": resp_id or _id("resp"), "object": "response", "created_at": int(time.time()), "status": status,
        "background": False, "error": None, "incomplete_details": None,
        "instructions": req.get("instructions"), "max_output_tokens": req.get("max_output_tokens"),
        "model": req.get("model"), "output": items, "parallel_tool_calls": req.get("parallel_tool_calls", True),
        "previous_response_id": None, "prompt_cache_key": req.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort", "medium"), "summary": reasoning.get("summary")},
        "store": req.get("store", True), "temperature": req.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": req.get("tool_choice", "auto"),
        "tools": req.get("tools", []), "top_p": req.get("top_p", 1.0), "truncation": "disabled",
        "usage": usage, "metadata": {},
    }


def _split(text: str, parts: int) -> list[str]:
    parts = max(1, min(parts, len(text)))
    size = -(-len(text) // parts)
    return [text[i:i + size] for i in range(0, len(text), size)]


def stream_events(response: dict) -> Iterator[dict]:
    """The event sequence the real API streams for a finished response (each with its sequence_number)."""
    seq = 0

    def event(kind: str, **fields: Any) -> dict:
        nonlocal seq
        data = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        return data

    start = dict(response, status="in_progress", output=[], usage=None)
    yield event("response.created", response=start)
    yield event("response.in_progress", response=start)
    for index, item in enumerate(response["output"]):
        kind = item["type"]
        item_id = item["id"]
        if kind == "reasoning":
            yield event("response.output_item.added", output_index=index,
                        item={"id": item_id, "type": "reasoning", "summary": []})
            for s, part in enumerate(item["summary"]):
                yield event("response.reasoning_summary_part.added", item_id=item_id, output_index=index,
                            summary_index=s, part={"type": "summary_text", "text": ""})
                for piece in _split(part["text"], 3):
                    yield event("response.reasoning_summary_text.delta", item_id=item_id, output_index=index,
                                summary_index=s, delta=piece, obfuscation="x")
                yield event("response.reasoning_summary_text.done", item_id=item_id, output_index=index,
                            summary_index=s, text=part["text"])
                yield event("response.reasoning_summary_part.done", item_id=item_id, output_index=index,
                            summary_index=s, part=part)
        elif kind == "message":
            yield event("response.output_item.added", output_index=index,
                        item=dict(item, status="in_progress", content=[]))
            for c, part in enumerate(item["content"]):
                yield event("response.content_part.added", item_id=item_id, output_index=index, content_index=c,
                            part=dict(part, text=""))
                for piece in _split(part["text"], 3):
                    yield event("response.output_text.delta", item_id=item_id, output_index=index,
                                content_index=c, delta=piece, logprobs=[], obfuscation="x")
                yield event("response.output_text.done", item_id=item_id, output_index=index, content_index=c,
                            text=part["text"], logprobs=[])
                yield event("response.content_part.done", item_id=item_id, output_index=index, content_index=c,
                            part=part)
        elif kind == "function_call":
            yield event("response.output_item.added", output_index=index,
                        item=dict(item, status="in_progress", arguments=""))
            for piece in _split(item["arguments"], 4):
                yield event("response.function_call_arguments.delta", item_id=item_id, output_index=index,
                            delta=piece, obfuscation="x")
            yield event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                        arguments=item["arguments"])
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response." + ("completed" if response["status"] == "completed" else response["status"]),
                response=response)
