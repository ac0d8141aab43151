"""Client keys, the pure parts: key shape and hash, flag values, periods, model globs, admission arithmetic."""
from __future__ import annotations

import hashlib
from datetime import datetime

import pytest

from app.keys import limits
from app.keys.keyformat import PREFIX, generate_key, hash_key
from app.keys.limits import Limits
from app.keys.rules import (ClientKey, RuleError, iso_minute, parse_budget, parse_expires, parse_models,
                            parse_positive_int, period_bounds)


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_key_has_prefix_and_at_least_128_random_bits():
    keys = {generate_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith(PREFIX)
        body = key[len(PREFIX):]
        assert len(body) * 6 >= 128  # url-safe base64: 6 bits per character
    key = next(iter(keys))
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()


@pytest.mark.parametrize("value, expected", [("50/month", (50.0, "month")), ("0.05/day", (0.05, "day")),
                                             ("$3/week", (3.0, "week")), ("7/MONTH", (7.0, "month"))])
def test_budget_values(value, expected):
    assert parse_budget(value) == expected


@pytest.mark.parametrize("value", ["50", "50/year", "-1/day", "0/day", "abc/day", "nan/day", "inf/month", "/day"])
def test_bad_budget_values_say_what_is_expected(value):
    with pytest.raises(RuleError, match="--budget: must be DOLLARS/day"):
        parse_budget(value)


@pytest.mark.parametrize("value", ["0", "-3", "x", "1.5", ""])
def test_bad_limit_values(value):
    with pytest.raises(RuleError, match="--rpm"):
        parse_positive_int("--rpm", value)


def test_expires_date_and_time():
    assert parse_expires("2027-01-31") == ts("2027-01-31T00:00:00Z")
    assert parse_expires("2027-01-31T12:30Z") == ts("2027-01-31T12:30:00Z")
    with pytest.raises(RuleError, match="--expires"):
        parse_expires("next tuesday")


@pytest.mark.parametrize("period, now, start, end", [
    ("day", "2026-12-31T23:59:59Z", "2026-12-31T00:00:00Z", "2027-01-01T00:00:00Z"),
    ("month", "2026-12-15T10:00:00Z", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    ("month", "2027-02-28T10:00:00Z", "2027-02-01T00:00:00Z", "2027-03-01T00:00:00Z"),
    ("week", "2026-12-03T10:00:00Z", "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z"),  # Thursday -> Monday
])
def test_calendar_periods_in_utc(period, now, start, end):
    assert period_bounds(period, ts(now)) == (ts(start), ts(end))
    assert iso_minute(ts(end)) == end[:16] + "Z"


def test_model_globs_match_case_insensitively_on_the_requested_model():
    key = ClientKey("key_1", "alice", "h", "abcd", models=parse_models("claude-*sonnet*, claude-*haiku*"))
    assert key.allows_model("claude-sonnet-4-5")
    assert key.allows_model("Claude-3-5-Haiku-latest")
    assert not key.allows_model("claude-opus-4-1")
    assert not key.allows_model(None)
    assert ClientKey("key_2", "bob", "h", "abcd").allows_model("anything")


# --- admission arithmetic -------------------------------------------------------------------------

def test_rpm_is_exact_over_a_sliding_minute_and_says_when_it_frees():
    state: dict = {}
    lim = Limits(rpm=3)
    t0 = 1000.2
    assert limits.admit(state, lim, t0, None).allowed
    assert limits.admit(state, lim, t0 + 10, None).allowed
    assert limits.admit(state, lim, t0 + 20, None).allowed
    refused = limits.admit(state, lim, t0 + 30, None)
    assert not refused.allowed and refused.reason == "requests"
    # the first request leaves the window at the end of its second + 60 s
    assert refused.retry_after == pytest.approx(1060 - (t0 + 30))
    headers = limits.refusal_headers(lim, refused)
    assert headers["retry-after"] == "30"
    assert headers["anthropic-ratelimit-requests-limit"] == "3"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"] == "1970-01-01T00:17:40Z"
    # refusals are not counted: once the first leaves, exactly one more gets in
    assert limits.admit(state, lim, 1060.0, None).allowed
    assert not limits.admit(state, lim, 1060.5, None).allowed


def test_tpm_counts_finished_requests():
    state: dict = {}
    lim = Limits(tpm=100)
    assert limits.admit(state, lim, 10.0, None).allowed
    limits.finish(state, None, 120, 11.0, count_tokens=True)
    refused = limits.admit(state, lim, 12.0, None)
    assert refused.reason == "tokens" and refused.tokens_used == 120
    headers = limits.refusal_headers(lim, refused)
    assert headers["anthropic-ratelimit-tokens-limit"] == "100"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert int(headers["retry-after"]) == 59
    assert limits.admit(state, lim, 71.0, None).allowed


def test_concurrency_leases_release_and_expire():
    state: dict = {}
    lim = Limits(concurrency=2)
    assert limits.admit(state, lim, 0.0, "a").allowed
    assert limits.admit(state, lim, 0.0, "b").allowed
    refused = limits.admit(state, lim, 1.0, "c")
    assert refused.reason == "concurrency" and refused.retry_after == 1.0
    limits.finish(state, "a", 0, 2.0, count_tokens=False)
    assert limits.admit(state, lim, 2.0, "c").allowed
    # a worker that died never releases: its lease expires unless renewed
    limits.renew(state, ["c"], 20.0)
    assert limits.admit(state, lim, 31.0, "d").allowed  # b was never renewed: expired at 30
    assert not limits.admit(state, lim, 31.0, "e").allowed  # c (renewed until 50) and d hold both slots
    state2: dict = {}
    limits.admit(state2, lim, 0.0, "x")
    limits.admit(state2, lim, 0.0, "y")
    assert limits.admit(state2, lim, limits.LEASE_TTL + 0.1, "z").allowed
