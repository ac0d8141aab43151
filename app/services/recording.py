"""Hands each finished request to accounting, metrics, telemetry, Slack and the access log: once, never raising.

The relay also tells it, for the metrics, when a stream opens and when its first token goes out.
"""
from __future__ import annotations

import logging
import time

from ..logs import log_access_record
from ..pricing import PriceTable, record_cost
from ..records import RequestRecord
from ..usage import TEXT_CAP

log = logging.getLogger("nexus")


class Recorder:
    def __init__(self, accounting, telemetry, slack, credentials, prices: PriceTable | None = None,
                 client_keys=None, metrics=None) -> None:
        self.accounting = accounting
        self.telemetry = telemetry
        self.slack = slack
        self.credentials = credentials
        self.prices = prices if prices is not None else PriceTable()
        self.client_keys = client_keys
        self.metrics = metrics

    def finish(self, rec: RequestRecord) -> None:
        rec.duration_ms = round((time.perf_counter() - rec.started) * 1000, 3)
        try:
            # Priced once, here: the row and the counters keep this figure whatever the prices become.
            rec.cost_usd = record_cost(self.prices, rec)
        except Exception:
            log.exception("pricing request %s failed", rec.request_id)
        if rec.admission is not None and self.client_keys is not None:
            try:  # the end of the request frees its concurrency slot, counts its tokens and its cost
                self.client_keys.finish(rec)
            except Exception:
                log.exception("releasing the key limits of %s failed", rec.request_id)
        try:
            self.accounting.record(rec)
            if self.metrics is not None:
                self.metrics.request_finished(rec)
            self.telemetry.submit(rec)
            self.slack.submit(rec, rec.slack_override)
            log_access_record(rec)
        except Exception:  # accounting must never break a request
            log.exception("recording request %s failed", rec.request_id)

    def begin(self, rec: RequestRecord) -> None:
        """The upstream is about to be called (the accounting journals it, in case the worker dies)."""
        try:
            self.accounting.begin(rec)
        except Exception:
            log.exception("journaling request %s failed", rec.request_id)

    def stream_opened(self, rec: RequestRecord) -> None:
        if self.metrics is not None:
            self.metrics.stream_opened(rec)

    def first_token(self, rec: RequestRecord) -> None:
        if self.metrics is not None:
            self.metrics.first_token(rec, time.perf_counter() - rec.started)


def last_user_text(body: dict) -> str | None:
    """The text of the last user turn (for Slack), without tool results or images."""
    messages = body.get("messages")
    if not isinstance(messages, list):  # the upstream judges a wrong type; the side parser only skips it
        return None
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content[:TEXT_CAP]
        if isinstance(content, list):
            texts = [b["text"] for b in content
                     if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)]
            if texts:
                return "\n".join(texts)[:TEXT_CAP]
        return None
    return None
