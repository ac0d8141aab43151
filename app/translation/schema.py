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

_KEEP_FORMATS = frozenset({"date-time"})
_KEEP_DOLLAR = frozenset({"$ref", "$defs"})
_DROP = frozenset({"propertyNames"})

# Keywords whose value is one schema, a list of schemas, or a name -> schema map.
_ONE = frozenset({
    "items", "additionalProperties", "additionalItems", "contains", "not", "if", "then", "else",
    "unevaluatedProperties", "unevaluatedItems", "contentSchema",
})
_MANY = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})


def clean_schema(schema: dict) -> dict:
    """A cleaned copy of a tool's input schema (the input is not modified)."""
    out = _clean(schema) if isinstance(schema, dict) else {}
    if "type" not in out:
        out["type"] = "object"
    if out.get("type") == "object" and not isinstance(out.get("properties"), dict):
        out["properties"] = {}
    return out


def _clean(node: dict) -> dict:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ONE:
            if isinstance(value, dict):
                value = _clean(value)
            elif isinstance(value, list):  # draft-4 tuple form of "items"
                value = [_clean(v) if isinstance(v, dict) else v for v in value]
        elif key in _MAP:
            if isinstance(value, dict):
                value = {k: (_clean(v) if isinstance(v, dict) else v) for k, v in value.items()}
        elif key in _MANY:
            if isinstance(value, list):
                value = [_clean(v) if isinstance(v, dict) else v for v in value]
        elif key == "format":
            if not (isinstance(value, str) and value in _KEEP_FORMATS):
                continue
        elif key == "const":
            if "enum" not in node:
                out["enum"] = [value]
            continue
        elif key in _DROP or (key[:1] == "$" and key not in _KEEP_DOLLAR):
            continue
        elif key == "dependencies" and isinstance(value, dict):
            value = {k: (_clean(v) if isinstance(v, dict) else v) for k, v in value.items()}
        out[key] = value
    return out
