"""Prices per model and the cost of a request: the built-in table, MODEL_PRICES, cache writes by TTL."""
from __future__ import annotations

import json

import pytest

from app.pricing import (BUILTIN_PRICES_DATE, ModelPrice, PriceTable, format_usd, parse_model_prices,
                         record_cost, split_cache_creation)
from app.records import RequestRecord
from app.usage import StreamUsage, apply_usage, usage_from_message
from config.settings import Settings, SettingsError


@pytest.mark.parametrize("model,inp,out", [
    ("claude-opus-4-5-20251101", 5, 25), ("claude-opus-4-8", 5, 25), ("claude-opus-4-1-20250805", 15, 75),
    ("claude-opus-4-20250514", 15, 75), ("claude-3-opus-20240229", 15, 75), ("claude-sonnet-4-5-20250929", 3, 15),
    ("CLAUDE-SONNET-4-6", 3, 15), ("claude-3-7-sonnet-latest", 3, 15), ("claude-haiku-4-5", 1, 5),
    ("claude-3-5-haiku-20241022", 0.8, 4), ("claude-3-haiku-20240307", 0.25, 1.25),
])
def test_builtin_table_prices_each_claude_family_by_pattern(model, inp, out):
    price = PriceTable().price_for(model)
    assert (price.input, price.output) == (inp, out)


def test_cache_prices_are_derived_from_input_with_anthropics_multipliers():
    p = ModelPrice.of(3, 15)
    assert (p.cache_write_5m, p.cache_write_1h, p.cache_read) == pytest.approx((3.75, 6.0, 0.3))
    assert BUILTIN_PRICES_DATE  # the table says when its prices were read


def test_one_hour_cache_writes_cost_twice_the_input_not_the_5_minute_rate():
    table = PriceTable()
    five = table.cost("claude-sonnet-4-5", cache_creation_input_tokens=1_000_000,
                      cache_creation_5m_input_tokens=1_000_000)
    hour = table.cost("claude-sonnet-4-5", cache_creation_input_tokens=1_000_000,
                      cache_creation_1h_input_tokens=1_000_000)
    assert (five, hour) == pytest.approx((3.75, 6.0))
    # all five kinds at once, each at its own rate
    assert table.cost("claude-opus-4-5", input_tokens=1000, output_tokens=200, cache_creation_input_tokens=3000,
                      cache_creation_5m_input_tokens=1000, cache_creation_1h_input_tokens=2000,
                      cache_read_input_tokens=4000) == pytest.approx(
        (1000 * 5 + 200 * 25 + 1000 * 6.25 + 2000 * 10 + 4000 * 0.5) / 1e6)


def test_cache_writes_without_a_split_are_5_minute_writes():
    assert split_cache_creation(500, 0, 0) == (500, 0)
    assert split_cache_creation(500, 0, 200) == (300, 200)
    assert split_cache_creation(0, 10, 20) == (10, 20)  # a split larger than the total still counts


def test_unknown_model_is_unpriced_never_zero_but_no_tokens_cost_nothing():
    table = PriceTable()
    assert table.cost("gpt-4.1", input_tokens=10) is None
    assert table.cost(None, output_tokens=1) is None
    assert table.cost("gpt-4.1") == 0.0  # a refused request used nothing


def test_model_prices_add_and_override_the_builtin_table(tmp_path):
    extra = parse_model_prices('{"openai/gpt-4.1": {"input": 2, "output": 8}, '
                               '"claude-sonnet-4*": {"input": 1, "output": 2, "cache_read": 0.01}}')
    table = PriceTable(extra)
    assert table.cost("openai/gpt-4.1", input_tokens=1_000_000, output_tokens=1_000_000) == pytest.approx(10)
    sonnet = table.price_for("claude-sonnet-4-5")
    assert (sonnet.input, sonnet.cache_write_5m, sonnet.cache_write_1h, sonnet.cache_read) == (1, 1.25, 2, 0.01)
    assert table.price_for("claude-haiku-4-5").input == 1  # the rest of the table still applies
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"my-model": {"input": 0.5, "output": 1}}))
    settings = Settings.from_env({"MODEL_PRICES": str(path)})
    assert PriceTable(settings.model_prices).price_for("MY-MODEL").output == 1


@pytest.mark.parametrize("value,problem", [
    ("{not json", "must be a JSON object"),
    ("[1, 2]", "must be a JSON object"),
    ('{"m": {"input": 1}}', "'output' is required"),
    ('{"m": {"input": -1, "output": 2}}', "must be a number"),
    ('{"m": {"input": "3", "output": 2}}', "must be a number"),
    ('{"m": {"input": 1, "output": 2, "cache_write": 3}}', "unknown field 'cache_write'"),
    ('{"m": 3}', "must be an object"),
    ("/no/such/prices.json", "no file"),
])
def test_bad_model_prices_is_a_configuration_error(value, problem):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"MODEL_PRICES": value})
    assert str(info.value).startswith("Configuration error: MODEL_PRICES: ") and problem in str(info.value)
    assert "\n" not in str(info.value)


def test_record_cost_uses_the_model_that_served_the_request():
    table = PriceTable(parse_model_prices('{"openai/gpt-4.1": {"input": 2, "output": 8}}'))
    rec = RequestRecord(request_id="r", timestamp=0, domain="d", mode="translation",
                        model_requested="claude-opus-4-1", model_used="openai/gpt-4.1", input_tokens=1_000_000)
    assert record_cost(table, rec) == pytest.approx(2.0)  # the upstream's price, not opus's $15


def test_cache_split_is_read_from_json_answers_and_streams():
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 300,
             "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}}
    u = usage_from_message({"content": [], "usage": usage})
    assert (u.cache_creation_5m_input_tokens, u.cache_creation_1h_input_tokens) == (100, 200)
    rec = RequestRecord(request_id="r", timestamp=0, domain="d", mode="passthrough")
    apply_usage(rec, u)  # the one function that puts usage on the record carries the split
    assert (rec.cache_creation_5m_input_tokens, rec.cache_creation_1h_input_tokens) == (100, 200)
    s = StreamUsage()
    s.feed("message_start", json.dumps({"type": "message_start", "message": {"usage": usage}}))
    s.feed("message_delta", b'{"type":"message_delta","usage":{"output_tokens":9,"cache_creation":null}}')
    assert (s.cache_creation_5m_input_tokens, s.cache_creation_1h_input_tokens, s.output_tokens) == (100, 200, 9)
    assert s.usage().cache_creation_1h_input_tokens == 200


@pytest.mark.parametrize("value,text", [
    (None, "unpriced"), (0, "$0.00"), (0.000123, "$0.000123"), (0.0312, "$0.0312"), (12345.678, "$12,345.68"),
])
def test_format_usd(value, text):
    assert format_usd(value) == text
