"""The one JSON codec of the request path: strict, compact, and fast on 200 KB conversations.

orjson parses and encodes a Claude Code turn several times faster than the standard library (see the
benchmark in bench/), and it already refuses what no upstream accepts: NaN, Infinity (a literal such as
1e999), and lone UTF-16 surrogates. Without orjson the standard library does the same job with the same
rules, only slower.

- `loads(data)`: bytes or str -> object; raises `ValueError` with a readable reason.
- `dumps(obj)`: compact UTF-8 bytes; raises `ValueError` for lone surrogates (and, without orjson, for
  NaN/Infinity, which with orjson never get past `loads`).
- `dumps_lenient(obj)`: the same, but a lone surrogate (an upstream's broken text) is escaped, not refused.
- `loads_lenient(data)`: for what the proxy only reads (upstream answers, side parsers): the standard
  library's looser rules when the strict parser refuses; never raises for a string or bytes input
  except with ValueError.
"""
from __future__ import annotations

import json
import re
from typing import Any

try:  # pragma: no cover - which branch runs depends on the environment
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_compact_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_SURROGATE_ESCAPE = re.compile(rb"\\ud[89a-f][0-9a-f]{2}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(value: str) -> float:
    number = float(value)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"number {value[:40]} is too large to represent (JSON numbers must fit a 64-bit float)")
    return number


if orjson is not None:
    def loads(data: bytes | str) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(_decode_reason(data, str(exc))) from None

    def dumps(obj: Any) -> bytes:
        # orjson would write NaN or Infinity as null, but none can be here: `loads` refuses them, and
        # nothing on the request path computes a float.
        try:
            return orjson.dumps(obj)
        except (orjson.JSONEncodeError, TypeError) as exc:
            raise ValueError(_encode_reason(exc)) from None

    def dumps_lenient(obj: Any) -> bytes:
        try:
            return orjson.dumps(obj)
        except orjson.JSONEncodeError:
            return _compact_ascii(obj).encode()
else:  # pragma: no cover - exercised by tests/unit/test_jsoncodec.py with orjson hidden
    def loads(data: bytes | str) -> Any:
        try:
            return json.loads(data, parse_constant=_reject_constant, parse_float=_finite)
        except RecursionError:
            raise ValueError("nested too deeply") from None

    def dumps(obj: Any) -> bytes:
        # ASCII escapes make a lone surrogate visible as an escape, found without decoding the text
        data = _compact_ascii(obj).encode()
        if b"\\ud" in data and has_lone_surrogate(data):
            raise ValueError("str is not valid UTF-8: surrogates not allowed")
        return data

    def dumps_lenient(obj: Any) -> bytes:
        try:
            return _compact(obj).encode()
        except UnicodeEncodeError:
            return _compact_ascii(obj).encode()


def loads_lenient(data: bytes | str) -> Any:
    try:
        return loads(data)
    except ValueError:
        try:
            return json.loads(data)
        except RecursionError:
            raise ValueError("nested too deeply") from None


def _decode_reason(data: bytes | str, reason: str) -> str:
    """The reason a body is not JSON, in the standard library's words where it has them (they name the
    token, such as NaN); only on the error path."""
    if "recursion" in reason:
        return "nested too deeply"
    try:
        json.loads(data, parse_constant=_reject_constant, parse_float=_finite)
    except ValueError as exc:
        return str(exc)
    except RecursionError:
        return "nested too deeply"
    return reason


def _encode_reason(exc: Exception) -> str:
    text = str(exc)
    if "surrogates" in text:
        return "str is not valid UTF-8: surrogates not allowed"
    return text


def has_lone_surrogate(data: bytes) -> bool:
    """Whether ASCII-escaped JSON holds a high surrogate escape without its low partner, or a lone low one.

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
