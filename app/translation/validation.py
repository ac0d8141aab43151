"""Cheap validation of Anthropic Messages / count_tokens request bodies (marshmallow), before any upstream call.

Top-level fields and the message list (role, content shape, block `type`) are checked; block
fields are not deep-validated here (the translator names any block it cannot convert).
Unknown top-level fields are allowed: new Claude Code versions add them.
"""
from __future__ import annotations

import math
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

INT_LIMIT = 2**31 - 1  # larger values are rejected ("huge numbers")
ROLES = ("user", "assistant", "system")
_ROLE_SET = frozenset(ROLES)
_TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
_MAX_ERRORS = 10
_REQUIRED = {"required": "field required", "null": "must not be null"}


class RequestValidationError(ValueError):
    """The message names the field, e.g. "max_tokens: must be a positive integer"."""


class _Field(fields.Field):
    """A field that checks the value with `check` and returns it unchanged (no copying)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_none", not kwargs.get("required", False))
        kwargs.setdefault("error_messages", _REQUIRED)
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        self.check(value)
        return value

    def check(self, value: Any) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class _PositiveInt(_Field):
    def check(self, value: Any) -> None:
        if type(value) is not int or value < 1:
            raise ValidationError("must be a positive integer")
        if value > INT_LIMIT:
            raise ValidationError(f"must be at most {INT_LIMIT}")


class _NonNegativeInt(_Field):
    def check(self, value: Any) -> None:
        if type(value) is not int or value < 0 or value > INT_LIMIT:
            raise ValidationError(f"must be an integer between 0 and {INT_LIMIT}")


class _Number(_Field):
    def __init__(self, low: float, high: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.low, self.high = low, high

    def check(self, value: Any) -> None:
        if (
            not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or not self.low <= value <= self.high
        ):
            raise ValidationError(f"must be a number between {self.low:g} and {self.high:g}")


class _Bool(_Field):
    def check(self, value: Any) -> None:
        if not isinstance(value, bool):
            raise ValidationError("must be a boolean")


class _NonEmptyString(_Field):
    def check(self, value: Any) -> None:
        if not isinstance(value, str) or not value:
            raise ValidationError("must be a non-empty string")


class _Object(_Field):
    def check(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise ValidationError("must be an object")


class _StringList(_Field):
    def check(self, value: Any) -> None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValidationError("must be a list of strings")


def _blocks_errors(blocks: list, errors: dict) -> None:
    for j, block in enumerate(blocks):
        if not isinstance(block, dict):
            errors[j] = ["must be an object"]
        elif not isinstance(block.get("type"), str):
            errors[j] = {"type": ["must be a string"]}
        if len(errors) >= _MAX_ERRORS:
            return


class _System(_Field):
    def check(self, value: Any) -> None:
        if isinstance(value, str):
            return
        if not isinstance(value, list):
            raise ValidationError("must be a string or a list of text blocks")
        errors: dict = {}
        _blocks_errors(value, errors)
        if errors:
            raise ValidationError(errors)


def _messages_ok(messages: list) -> bool:
    """Whether every message passes; the walk that names the problems runs only when one does not."""
    for message in messages:
        if type(message) is not dict:
            return False
        role = message.get("role")
        if type(role) is not str or role not in _ROLE_SET:
            return False
        content = message.get("content")
        if type(content) is list:
            for block in content:
                if type(block) is not dict or type(block.get("type")) is not str:
                    return False
        elif type(content) is not str:
            return False
    return True


class _Messages(_Field):
    """role and content shape of every message; one linear pass, no per-message schema objects."""

    def check(self, value: Any) -> None:
        if not isinstance(value, list):
            raise ValidationError("must be a list of messages")
        if not value:
            raise ValidationError("must contain at least one message")
        if _messages_ok(value):
            return
        errors: dict = {}
        for i, message in enumerate(value):
            if not isinstance(message, dict):
                errors[i] = ["must be an object"]
            else:
                problems: dict = {}
                role = message.get("role")
                if not isinstance(role, str) or role not in _ROLE_SET:
                    problems["role"] = ["must be one of " + ", ".join(ROLES)]
                content = message.get("content")
                if content is None:
                    problems["content"] = ["field required" if "content" not in message else "must not be null"]
                elif isinstance(content, list):
                    block_errors: dict = {}
                    _blocks_errors(content, block_errors)
                    if block_errors:
                        problems["content"] = block_errors
                elif not isinstance(content, str):
                    problems["content"] = ["must be a string or a list of content blocks"]
                if problems:
                    errors[i] = problems
            if len(errors) >= _MAX_ERRORS:
                break
        if errors:
            raise ValidationError(errors)


class _Tools(_Field):
    def check(self, value: Any) -> None:
        if not isinstance(value, list):
            raise ValidationError("must be a list of tools")
        errors: dict = {}
        for i, tool in enumerate(value):
            if not isinstance(tool, dict):
                errors[i] = ["must be an object"]
            elif not isinstance(tool.get("name"), str) or not tool["name"]:
                errors[i] = {"name": ["must be a non-empty string"]}
            elif "input_schema" in tool and not isinstance(tool["input_schema"], dict):
                errors[i] = {"input_schema": ["must be an object"]}
            if len(errors) >= _MAX_ERRORS:
                break
        if errors:
            raise ValidationError(errors)


class _ToolChoice(_Field):
    def check(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise ValidationError("must be an object")
        kind = value.get("type")
        if kind not in _TOOL_CHOICE_TYPES:
            raise ValidationError({"type": ["must be one of " + ", ".join(_TOOL_CHOICE_TYPES)]})
        if kind == "tool" and (not isinstance(value.get("name"), str) or not value["name"]):
            raise ValidationError({"name": ["must be a non-empty string when type is tool"]})


class _Thinking(_Field):
    def check(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise ValidationError("must be an object")
        if not isinstance(value.get("type"), str):
            raise ValidationError({"type": ["must be a string"]})


class CountTokensSchema(Schema):
    """count_tokens body: everything a Messages body has except max_tokens."""

    class Meta:
        unknown = EXCLUDE  # unknown top-level fields are allowed (and ignored here)

    model = _NonEmptyString(required=True)
    messages = _Messages(required=True)
    system = _System()
    tools = _Tools()
    tool_choice = _ToolChoice()
    thinking = _Thinking()
    metadata = _Object()
    stream = _Bool()
    temperature = _Number(0.0, 2.0)
    top_p = _Number(0.0, 1.0)
    top_k = _NonNegativeInt()
    stop_sequences = _StringList()


class MessagesSchema(CountTokensSchema):
    max_tokens = _PositiveInt(required=True)


_MESSAGES = MessagesSchema()
_COUNT_TOKENS = CountTokensSchema()
_ABSENT = object()


def _checks(schema: Schema) -> tuple:
    """(name, required, allow_none, check) of each field, in the schema's order."""
    return tuple((name, f.required, f.allow_none, f.check) for name, f in schema.load_fields.items())


# The same field checks without marshmallow's per-field machinery: a valid body (nearly every request) is
# judged in one pass over its fields; only an invalid one goes through the schema, for the error messages.
_QUICK = {id(_MESSAGES): _checks(_MESSAGES), id(_COUNT_TOKENS): _checks(_COUNT_TOKENS)}


def _valid(checks: tuple, body: dict) -> bool:
    get = body.get
    for name, required, allow_none, check in checks:
        value = get(name, _ABSENT)
        if value is _ABSENT:
            if required:
                return False
        elif value is None:
            if not allow_none:
                return False
        else:
            try:
                check(value)
            except ValidationError:
                return False
    return True


def _flatten(errors: Any, prefix: str, out: list[str]) -> None:
    if isinstance(errors, dict):
        for key, value in errors.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(errors, list):
        for item in errors:
            if isinstance(item, (dict, list)):
                _flatten(item, prefix, out)
            else:
                out.append(f"{prefix}: {item}" if prefix else str(item))
    else:
        out.append(f"{prefix}: {errors}" if prefix else str(errors))


def _run(schema: Schema, body: Any) -> None:
    if not isinstance(body, dict):
        raise RequestValidationError("request body: must be a JSON object")
    if _valid(_QUICK[id(schema)], body):
        return
    errors = schema.validate(body)
    if errors:
        lines: list[str] = []
        _flatten(errors, "", lines)
        raise RequestValidationError("; ".join(lines[:_MAX_ERRORS]))


def validate_messages_request(body: Any) -> None:
    """Raise RequestValidationError naming the field when `body` is not a valid Messages request."""
    _run(_MESSAGES, body)


def validate_count_tokens_request(body: Any) -> None:
    """Like validate_messages_request, without max_tokens."""
    _run(_COUNT_TOKENS, body)
