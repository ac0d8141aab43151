"""Clean Anthropic tool `input_schema`s into JSON Schemas OpenAI-compatible upstreams accept.

Rules (each one documented in docs/translation.md with its reason):
- `$schema`, `$id`, `$comment`, `$anchor` and every other `$` keyword except `$ref`/`$defs` are dropped.
- `format` is kept only when it is "date-time"; "uri" and every other format are dropped.
- `propertyNames` is dropped.
- `const: X` becomes `enum: [X]` (unless an `enum` is already there).
- The top level always has `type: "object"` and a `properties` object.
Only positions that hold schemas are walked, so a property *named* "format" or a `default`
value containing `$schema` is data and stays untouched.
"""
from __future__ import annotations

from typing import Any

try:  # pragma: no cover - which branch runs depends on the environment
    from orjson import dumps as _key_of
except ImportError:  # pragma: no cover
    _key_of = None

_KEEP_FORMATS = frozenset({"date-time"})

# What to do with each keyword; any other key is kept as is, unless it starts with "$".
_ONE, _MANY, _MAP, _FORMAT, _CONST, _DROP, _KEEP = range(7)
_ACTIONS = {
    # value is one schema (or, for draft-4 "items", a list of schemas)
    **dict.fromkeys(
        ("items", "additionalProperties", "additionalItems", "contains", "not", "if", "then", "else",
         "unevaluatedProperties", "unevaluatedItems", "contentSchema"),
        _ONE,
    ),
    **dict.fromkeys(("anyOf", "oneOf", "allOf", "prefixItems"), _MANY),  # a list of schemas
    # a name -> schema map ("dependencies" values may also be arrays of names: left alone)
    **dict.fromkeys(
        ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"), _MAP
    ),
    "format": _FORMAT,
    "const": _CONST,
    "propertyNames": _DROP,
    "$ref": _KEEP,
}


def clean_schema(schema: dict) -> dict:
    """A cleaned copy of a tool's input schema (the input is not modified)."""
    out = _clean(schema) if isinstance(schema, dict) else {}
    if "type" not in out:
        out["type"] = "object"
    if out.get("type") == "object" and not isinstance(out.get("properties"), dict):
        out["properties"] = {}
    return out


# Claude Code sends the same tools, with the same schemas, on every turn: each cleaned schema is kept,
# keyed by its JSON text, so a turn pays one encode per tool instead of a walk. Bounded by the keys' total
# size (a Claude Code tool set is ~60 KB): the oldest go first.
_MEMO: dict[bytes, dict] = {}
_MEMO_BYTES = 1 << 20
_memo_size = 0


def clean_tool_schema(schema: dict) -> dict:
    """`clean_schema` for a tool's input_schema, remembered. The result is shared: callers must not modify it."""
    global _memo_size
    if _key_of is None or not isinstance(schema, dict):
        return clean_schema(schema)
    try:
        key = _key_of(schema)
    except Exception:  # e.g. a lone surrogate: the encoder of the upstream body will say so
        return clean_schema(schema)
    cleaned = _MEMO.get(key)
    if cleaned is None:
        cleaned = clean_schema(schema)
        if len(key) <= _MEMO_BYTES // 16:
            while _MEMO and _memo_size + len(key) > _MEMO_BYTES:
                oldest = next(iter(_MEMO))
                del _MEMO[oldest]
                _memo_size -= len(oldest)
            _MEMO[key] = cleaned
            _memo_size += len(key)
    return cleaned


def _clean(node: dict) -> dict:
    out: dict[str, Any] = {}
    for key, value in node.items():
        action = _ACTIONS.get(key)
        if action is None:
            if key[:1] != "$":  # $schema, $id, $comment, $anchor, ...: metadata
                out[key] = value
        elif action == _MAP:
            if isinstance(value, dict):
                value = {k: (_clean(v) if isinstance(v, dict) else v) for k, v in value.items()}
            out[key] = value
        elif action == _ONE:
            if isinstance(value, dict):
                value = _clean(value)
            elif isinstance(value, list):
                value = [_clean(v) if isinstance(v, dict) else v for v in value]
            out[key] = value
        elif action == _MANY:
            if isinstance(value, list):
                value = [_clean(v) if isinstance(v, dict) else v for v in value]
            out[key] = value
        elif action == _FORMAT:
            if isinstance(value, str) and value in _KEEP_FORMATS:
                out[key] = value
        elif action == _CONST:
            if "enum" not in node:
                out["enum"] = [value]
        elif action == _KEEP:
            out[key] = value
    return out
