"""The console report reproduces the product's table."""
from __future__ import annotations

from datetime import datetime

import pytest

from app.services.report import format_local_time, format_report, format_started, format_uptime

# The example from the product's README ("Console Output Example"), from the report's first rule.
PRODUCT_EXAMPLE = """\
==========================================================================================
Token Usage Report - 1/13/2025, 3:45:23 PM (Uptime: 2m 15s)
==========================================================================================
Domain                    Reqs  Query  Infer  Tools   Input Tok   Output Tok    Total Tok
------------------------------------------------------------------------------------------
claude-1.example.com        12      8      4      3       5,234        8,921       14,155
claude-2.example.com         8      5      3      0       3,456        6,789       10,245
localhost                    3      2      1      2         892        1,234        2,126
------------------------------------------------------------------------------------------
TOTAL                       23     15      8      5       9,582       16,944       26,526
=========================================================================================="""

PRODUCT_STATS = {
    "localhost": {"inputTokens": 892, "outputTokens": 1234, "requestCount": 3, "queryEvaluationCount": 2,
                  "inferenceCount": 1, "toolCallCount": 2, "lastUpdated": 1705157123000},
    "claude-2.example.com": {"inputTokens": 3456, "outputTokens": 6789, "requestCount": 8,
                             "queryEvaluationCount": 5, "inferenceCount": 3, "toolCallCount": 0,
                             "lastUpdated": 1705157120789},
    "claude-1.example.com": {"inputTokens": 5234, "outputTokens": 8921, "requestCount": 12,
                             "queryEvaluationCount": 8, "inferenceCount": 4, "toolCallCount": 3,
                             "lastUpdated": 1705157123456},
}


def test_matches_the_product_example_line_for_line():
    text = format_report(PRODUCT_STATS, now=datetime(2025, 1, 13, 15, 45, 23), uptime_seconds=135)
    assert text.splitlines() == PRODUCT_EXAMPLE.splitlines()


def test_rules_are_90_wide_and_columns_line_up():
    lines = format_report(PRODUCT_STATS, now=datetime(2025, 1, 13, 15, 45, 23), uptime_seconds=1).splitlines()
    assert {len(line) for line in lines if set(line) in ({"="}, {"-"})} == {90}
    header = lines[3]
    for row in lines[5:8] + [lines[-2]]:
        # Every right-aligned column ends where its header ends.
        for title in ("Reqs", "Query", "Infer", "Tools", "Input Tok", "Output Tok", "Total Tok"):
            end = header.index(title) + len(title)
            assert row[end - 1] != " " and (end == len(row) or row[end] == " ")


def test_empty_stats_give_a_zero_total():
    lines = format_report({}, now=datetime(2025, 1, 1, 0, 0, 0), uptime_seconds=0).splitlines()
    assert lines[1] == "Token Usage Report - 1/1/2025, 12:00:00 AM (Uptime: 0s)"
    assert lines[-2].split() == ["TOTAL", "0", "0", "0", "0", "0", "0", "0"]


def test_big_numbers_get_thousands_separators_and_missing_keys_count_as_zero():
    stats = {"team.example.com": {"inputTokens": 123456789, "outputTokens": 1000000, "requestCount": 4321}}
    row = format_report(stats, now=datetime(2025, 6, 1, 12, 0, 0), uptime_seconds=5).splitlines()[5]
    assert row.split() == ["team.example.com", "4321", "0", "0", "0", "123,456,789", "1,000,000", "124,456,789"]


def test_long_domain_is_shown_in_full_and_stays_separated():
    domain = "a-very-long-subdomain.of.some.example.com"
    row = format_report({domain: {"requestCount": 1}}, now=datetime(2025, 1, 1), uptime_seconds=0).splitlines()[5]
    assert row.split()[0] == domain and row.split()[1] == "1"


def test_rows_are_sorted_by_domain():
    stats = {"b.com": {}, "a.com": {}, "c.com": {}}
    lines = format_report(stats, now=datetime(2025, 1, 1), uptime_seconds=0).splitlines()
    assert [line.split()[0] for line in lines[5:8]] == ["a.com", "b.com", "c.com"]


@pytest.mark.parametrize("seconds,text", [
    (0, "0s"), (45, "45s"), (59.9, "59s"), (60, "1m 0s"), (135, "2m 15s"), (3723, "1h 2m 3s"),
    (3600, "1h 0m 0s"), (90061, "25h 1m 1s"), (-3, "0s"),
])
def test_format_uptime(seconds, text):
    assert format_uptime(seconds) == text


@pytest.mark.parametrize("when,text", [
    (datetime(2025, 1, 13, 15, 45, 23), "1/13/2025, 3:45:23 PM"),
    (datetime(2025, 12, 31, 0, 5, 9), "12/31/2025, 12:05:09 AM"),
    (datetime(2025, 7, 4, 12, 0, 0), "7/4/2025, 12:00:00 PM"),
    (datetime(2025, 7, 4, 11, 59, 59), "7/4/2025, 11:59:59 AM"),
])
def test_local_time_like_the_product(when, text):
    assert format_local_time(when) == text


def test_started_line():
    assert format_started(10) == "Token usage tracking started (reporting every 10s)"
    assert format_started(2.5) == "Token usage tracking started (reporting every 2.5s)"


def test_cost_column_once_the_store_knows_prices_and_unpriced_requests_are_marked():
    stats = {"a.com": {"requestCount": 3, "inputTokens": 100, "costUsd": 1234.5, "unpricedRequests": 0},
             "b.com": {"requestCount": 2, "inputTokens": 5, "costUsd": 0.0, "unpricedRequests": 2},
             "c.com": {"requestCount": 4, "costUsd": 0.0123, "unpricedRequests": 1}}
    lines = format_report(stats, now=datetime(2025, 1, 1), uptime_seconds=0).splitlines()
    header = lines[3]
    assert header.endswith("Total Tok        Cost")
    assert lines[5].endswith(" $1,234.50") and lines[6].endswith(" unpriced") and lines[7].endswith(" $0.0123*")
    assert lines[9].startswith("TOTAL") and lines[9].endswith(" $1,234.51*")
    assert lines[-1] == ("* 3 request(s) used a model without a price and are not in the cost "
                         "(MODEL_PRICES adds prices)")
    assert {len(line) for line in lines if set(line) in ({"="}, {"-"})} == {len(header) + 1}  # as the product
