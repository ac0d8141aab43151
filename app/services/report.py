"""The console token report: the product's table, as pure text (no I/O)."""
from __future__ import annotations

from datetime import datetime

from app.pricing import format_usd

WIDTH = 90
DOMAIN_WIDTH = 25
COST_WIDTH = 12  # the Cost column, shown once the store knows prices (" $1,234.56*")


def format_uptime(seconds: float) -> str:
    """"45s", "2m 15s", "1h 2m 3s" (hours keep counting past a day, like the product)."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def format_local_time(now: datetime) -> str:
    """en-US `toLocaleString()` style: "1/13/2025, 3:45:23 PM"."""
    hour = now.hour % 12 or 12
    suffix = "AM" if now.hour < 12 else "PM"
    return f"{now.month}/{now.day}/{now.year}, {hour}:{now.minute:02d}:{now.second:02d} {suffix}"


def _row(domain: str, reqs, query, infer, tools, inp, out, total) -> str:
    # Every column after the first keeps one separating space even when a value outgrows it,
    # and a domain longer than 25 characters is shown in full (the rest of the row shifts).
    return (f"{domain:<{DOMAIN_WIDTH}} {reqs:>4} {query:>6} {infer:>6} {tools:>6}"
            f" {inp:>11} {out:>12} {total:>12}")


def _cells(values: list[int]) -> list[str]:
    # Counts plain, token columns with thousands separators (as the product prints them).
    reqs, query, infer, tools, inp, out = values
    return [str(reqs), str(query), str(infer), str(tools), f"{inp:,}", f"{out:,}", f"{inp + out:,}"]


def _cost_cell(cost: float, unpriced: int, requests: int) -> str:
    # A domain whose every request is unpriced has no dollar figure at all; a partial one is marked.
    if unpriced and unpriced >= requests and not cost:
        return "unpriced"
    return format_usd(cost) + ("*" if unpriced else "")


def format_report(stats: dict[str, dict], *, now: datetime, uptime_seconds: float) -> str:
    """The product's table for per-domain stats (camelCase keys as in /token-stats).

    Rows are sorted by domain name; Total Tok = Input Tok + Output Tok, as in the product. When the stats
    carry costs (`costUsd`), a Cost column follows; `*` marks a cost that leaves unpriced requests out.
    """
    with_cost = any("costUsd" in s for s in stats.values())
    width = WIDTH + (COST_WIDTH if with_cost else 0)
    header = _row("Domain", "Reqs", "Query", "Infer", "Tools", "Input Tok", "Output Tok", "Total Tok")
    lines = [
        "=" * width,
        f"Token Usage Report - {format_local_time(now)} (Uptime: {format_uptime(uptime_seconds)})",
        "=" * width,
        header + (f" {'Cost':>{COST_WIDTH - 1}}" if with_cost else ""),
        "-" * width,
    ]
    sums = [0] * 6
    cost_sum, unpriced_sum = 0.0, 0
    for domain in sorted(stats):
        s = stats[domain]
        values = [
            int(s.get("requestCount") or 0),
            int(s.get("queryEvaluationCount") or 0),
            int(s.get("inferenceCount") or 0),
            int(s.get("toolCallCount") or 0),
            int(s.get("inputTokens") or 0),
            int(s.get("outputTokens") or 0),
        ]
        sums = [a + b for a, b in zip(sums, values)]
        line = _row(domain, *_cells(values))
        if with_cost:
            cost, unpriced = float(s.get("costUsd") or 0.0), int(s.get("unpricedRequests") or 0)
            cost_sum += cost
            unpriced_sum += unpriced
            line += f" {_cost_cell(cost, unpriced, values[0]):>{COST_WIDTH - 1}}"
        lines.append(line)
    lines.append("-" * width)
    total = _row("TOTAL", *_cells(sums))
    if with_cost:
        total += f" {_cost_cell(cost_sum, unpriced_sum, sums[0]):>{COST_WIDTH - 1}}"
    lines.append(total)
    lines.append("=" * width)
    if with_cost and unpriced_sum:
        lines.append(f"* {unpriced_sum:,} request(s) used a model without a price and are not in the cost "
                     "(MODEL_PRICES adds prices)")
    return "\n".join(lines)


def format_started(interval: float) -> str:
    """The line printed when a process starts reporting."""
    shown = f"{interval:g}"
    return f"Token usage tracking started (reporting every {shown}s)"
