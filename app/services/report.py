"""The console token report: the product's table, as pure text (no I/O)."""
from __future__ import annotations

from datetime import datetime

WIDTH = 97
DOMAIN_WIDTH = 25


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


def _row(domain: str, reqs, query, infer, tools, errors, inp, out, total) -> str:
    # Every column after the first keeps one separating space even when a value outgrows it,
    # and a domain longer than 25 characters is shown in full (the rest of the row shifts).
    return (f"{domain:<{DOMAIN_WIDTH}} {reqs:>4} {query:>6} {infer:>6} {tools:>6} {errors:>6}"
            f" {inp:>11} {out:>12} {total:>12}")


def _cells(values: list[int]) -> list[str]:
    # Counts plain, token columns with thousands separators (as the product prints them).
    reqs, query, infer, tools, errors, inp, out = values
    return [str(reqs), str(query), str(infer), str(tools), str(errors), f"{inp:,}", f"{out:,}", f"{inp + out:,}"]


def format_report(stats: dict[str, dict], *, now: datetime, uptime_seconds: float) -> str:
    """The product's table for per-domain stats (camelCase keys as in /token-stats), with failed requests counted.

    Rows are sorted by domain name; Total Tok = Input Tok + Output Tok, as in the product.
    """
    lines = [
        "=" * WIDTH,
        f"Token Usage Report - {format_local_time(now)} (Uptime: {format_uptime(uptime_seconds)})",
        "=" * WIDTH,
        _row("Domain", "Reqs", "Query", "Infer", "Tools", "Errors", "Input Tok", "Output Tok", "Total Tok"),
        "-" * WIDTH,
    ]
    sums = [0] * 7
    for domain in sorted(stats):
        s = stats[domain]
        values = [
            int(s.get("requestCount") or 0),
            int(s.get("queryEvaluationCount") or 0),
            int(s.get("inferenceCount") or 0),
            int(s.get("toolCallCount") or 0),
            int(s.get("errorCount") or 0),
            int(s.get("inputTokens") or 0),
            int(s.get("outputTokens") or 0),
        ]
        sums = [a + b for a, b in zip(sums, values)]
        lines.append(_row(domain, *_cells(values)))
    lines.append("-" * WIDTH)
    lines.append(_row("TOTAL", *_cells(sums)))
    lines.append("=" * WIDTH)
    return "\n".join(lines)


def format_started(interval: float) -> str:
    """The line printed when a process starts reporting."""
    shown = f"{interval:g}"
    return f"Token usage tracking started (reporting every {shown}s)"
