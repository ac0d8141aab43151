"""SQL WHERE terms shared by the stores' reads (both placeholder styles: `?` and `%s`)."""
from __future__ import annotations


def time_range(ph: str, since: float | None, until: float | None) -> tuple[list[str], list]:
    """The WHERE terms and params of a [since, until) range on `ts` (None: open on that side)."""
    where: list[str] = []
    params: list = []
    if since is not None:
        where.append(f"ts >= {ph}")
        params.append(float(since))
    if until is not None:
        where.append(f"ts < {ph}")
        params.append(float(until))
    return where, params
