"""Dollar prices per model and the cost of one request. Pure: no I/O, no settings object.

Prices are dollars per million tokens. Anthropic bills five kinds of token separately: input,
output, cache writes with a 5-minute TTL, cache writes with a 1-hour TTL, and cache reads. Pricing
every cache write at the 5-minute rate under-bills 1-hour writes by 37.5 %, so the two are kept apart.
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

# Multipliers of the input price, from Anthropic's prompt-caching pricing.
CACHE_WRITE_5M_FACTOR = 1.25
CACHE_WRITE_1H_FACTOR = 2.0
CACHE_READ_FACTOR = 0.1

PRICE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")


@dataclass(frozen=True)
class ModelPrice:
    """Dollars per million tokens."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float

    @classmethod
    def of(cls, input: float, output: float, cache_write_5m: float | None = None,
           cache_write_1h: float | None = None, cache_read: float | None = None) -> "ModelPrice":
        """Missing cache prices are derived from `input` with Anthropic's multipliers."""
        return cls(
            input=float(input), output=float(output),
            cache_write_5m=float(input) * CACHE_WRITE_5M_FACTOR if cache_write_5m is None else float(cache_write_5m),
            cache_write_1h=float(input) * CACHE_WRITE_1H_FACTOR if cache_write_1h is None else float(cache_write_1h),
            cache_read=float(input) * CACHE_READ_FACTOR if cache_read is None else float(cache_read),
        )

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in PRICE_FIELDS}


# Anthropic's public price list, https://platform.claude.com/docs/en/about-claude/pricing ("Model pricing"),
# as read on 2026-12-01. Patterns are globs matched case-insensitively against the model name, first match
# wins, so specific versions come before their family. Models not matched here are unpriced (never $0):
# give them a price with MODEL_PRICES.
BUILTIN_PRICES_DATE = "2026-12-01"
BUILTIN_PRICES: tuple[tuple[str, ModelPrice], ...] = (
    # Opus 4 and 4.1 (and Opus 3) kept the old tier; from Opus 4.5 on, $5 / $25.
    ("claude-opus-4-0*", ModelPrice.of(15, 75)),
    ("claude-opus-4-2025*", ModelPrice.of(15, 75)),  # claude-opus-4-20250514
    ("claude-opus-4-1*", ModelPrice.of(15, 75)),
    ("claude-3-opus*", ModelPrice.of(15, 75)),
    ("claude-opus-4-[5-9]*", ModelPrice.of(5, 25)),
    ("claude-opus-5*", ModelPrice.of(5, 25)),
    ("claude-sonnet-4*", ModelPrice.of(3, 15)),
    ("claude-3-7-sonnet*", ModelPrice.of(3, 15)),
    ("claude-3-5-sonnet*", ModelPrice.of(3, 15)),
    ("claude-haiku-4*", ModelPrice.of(1, 5)),
    ("claude-3-5-haiku*", ModelPrice.of(0.8, 4)),
    # Haiku 3's cache prices are listed explicitly and are not the usual multiples.
    ("claude-3-haiku*", ModelPrice.of(0.25, 1.25, cache_write_5m=0.30, cache_write_1h=0.50, cache_read=0.03)),
)


class PriceTableError(ValueError):
    """A MODEL_PRICES value that cannot be used (the message names the problem)."""


def parse_model_prices(value: Any) -> dict[str, ModelPrice]:
    """MODEL_PRICES: a JSON object (inline, or the path of a JSON file) of glob -> prices per million tokens."""
    if isinstance(value, Mapping):
        obj: Any = value
    else:
        text = str(value).strip()
        if not text:
            return {}
        if not text.startswith("{"):
            if not os.path.isfile(text):
                raise PriceTableError(f"must be a JSON object or the path of a JSON file (no file {text!r})")
            try:
                with open(text, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as exc:
                raise PriceTableError(f"cannot read {value!r}: {exc.strerror or exc}") from None
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise PriceTableError(f"must be a JSON object ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(obj, dict):
        raise PriceTableError("must be a JSON object of model pattern -> prices")
    out: dict[str, ModelPrice] = {}
    for pattern, spec in obj.items():
        if not isinstance(pattern, str) or not pattern.strip():
            raise PriceTableError("model patterns must be non-empty strings")
        if not isinstance(spec, dict):
            raise PriceTableError(f"{pattern!r}: must be an object like {{\"input\": 3, \"output\": 15}}")
        unknown = sorted(set(spec) - set(PRICE_FIELDS))
        if unknown:
            raise PriceTableError(f"{pattern!r}: unknown field {unknown[0]!r} (known: {', '.join(PRICE_FIELDS)})")
        for name in ("input", "output"):
            if name not in spec:
                raise PriceTableError(f"{pattern!r}: {name!r} is required")
        values = {}
        for name, number in spec.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)) \
                    or not math.isfinite(number) or number < 0:
                raise PriceTableError(f"{pattern!r}: {name!r} must be a number of dollars per million tokens, >= 0")
            values[name] = float(number)
        out[pattern.strip()] = ModelPrice.of(**values)
    return out


class PriceTable:
    """MODEL_PRICES entries (checked first, in their order) over the built-in table. Lookups are cached."""

    _CACHE_LIMIT = 4096

    def __init__(self, extra: Mapping[str, ModelPrice] | None = None,
                 builtin: Iterable[tuple[str, ModelPrice]] = BUILTIN_PRICES) -> None:
        extra = dict(extra or {})
        lowered = {p.lower() for p in extra}
        self.entries: tuple[tuple[str, ModelPrice], ...] = (
            *((p.lower(), price) for p, price in extra.items()),
            *((p, price) for p, price in builtin if p.lower() not in lowered),
        )
        self._cache: dict[str, ModelPrice | None] = {}

    def price_for(self, model: str | None) -> ModelPrice | None:
        if not model:
            return None
        hit = self._cache.get(model, False)
        if hit is not False:
            return hit
        name = model.lower()
        found = None
        for pattern, price in self.entries:
            if name == pattern or fnmatch.fnmatchcase(name, pattern):
                found = price
                break
        if len(self._cache) < self._CACHE_LIMIT:
            self._cache[model] = found
        return found

    def cost(self, model: str | None, *, input_tokens: int = 0, output_tokens: int = 0,
             cache_creation_input_tokens: int = 0, cache_creation_5m_input_tokens: int = 0,
             cache_creation_1h_input_tokens: int = 0, cache_read_input_tokens: int = 0) -> float | None:
        """Dollars for one request, or None when tokens were used on a model without a price."""
        five, one_hour = split_cache_creation(cache_creation_input_tokens, cache_creation_5m_input_tokens,
                                              cache_creation_1h_input_tokens)
        if not (input_tokens or output_tokens or five or one_hour or cache_read_input_tokens):
            return 0.0  # nothing was used, so nothing is owed whatever the model
        price = self.price_for(model)
        if price is None:
            return None
        return request_cost(price, input_tokens, output_tokens, five, one_hour, cache_read_input_tokens)


def split_cache_creation(total: int, five_minutes: int, one_hour: int) -> tuple[int, int]:
    """(5-minute, 1-hour) cache-write tokens. Writes the split does not cover are 5-minute ones,
    the default TTL (an upstream that reports only `cache_creation_input_tokens`)."""
    total, five_minutes, one_hour = max(0, total or 0), max(0, five_minutes or 0), max(0, one_hour or 0)
    rest = total - five_minutes - one_hour
    return five_minutes + max(0, rest), one_hour


def request_cost(price: ModelPrice, input_tokens: int, output_tokens: int, cache_write_5m: int,
                 cache_write_1h: int, cache_read: int) -> float:
    return (input_tokens * price.input + output_tokens * price.output + cache_write_5m * price.cache_write_5m
            + cache_write_1h * price.cache_write_1h + cache_read * price.cache_read) / 1_000_000


def record_cost(table: PriceTable, rec) -> float | None:
    """The cost of a `RequestRecord`, priced by the model that served it (`model_used`: the upstream model in
    translation, the requested one in passthrough)."""
    return table.cost(
        rec.model_used or rec.model_requested,
        input_tokens=rec.input_tokens or 0, output_tokens=rec.output_tokens or 0,
        cache_creation_input_tokens=rec.cache_creation_input_tokens or 0,
        cache_creation_5m_input_tokens=getattr(rec, "cache_creation_5m_input_tokens", 0) or 0,
        cache_creation_1h_input_tokens=getattr(rec, "cache_creation_1h_input_tokens", 0) or 0,
        cache_read_input_tokens=rec.cache_read_input_tokens or 0,
    )


def format_usd(value: float | None) -> str:
    """"$1.23", "$0.0042", "unpriced" for None: small amounts keep enough digits to be seen."""
    if value is None:
        return "unpriced"
    if value == 0:
        return "$0.00"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    if abs(value) >= 0.01:
        return f"${value:.4f}"
    return f"${value:.6f}"
