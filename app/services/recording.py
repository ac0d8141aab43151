"""Hands each finished request to accounting, telemetry, Slack and the access log: once, never raising."""
from __future__ import annotations

import logging
import time

from app.logs import log_access_record
from app.records import RequestRecord

log = logging.getLogger("nexus")


class Recorder:
    def __init__(self, accounting, telemetry, slack, credentials) -> None:
        self.accounting = accounting
        self.telemetry = telemetry
        self.slack = slack
        self.credentials = credentials

    def finish(self, rec: RequestRecord, started: float) -> None:
        rec.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        try:
            self.accounting.record(rec)
            self.telemetry.submit(rec)
            self.slack.submit(rec, rec.slack_override)
            log_access_record(rec)
        except Exception:  # accounting must never break a request
            log.exception("recording request %s failed", rec.request_id)


def last_user_text(body: dict) -> str | None:
    """The text of the last user turn (for Slack), without tool results or images."""
    for message in reversed(body.get("messages") or []):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content[:4000]
        if isinstance(content, list):
            texts = [b["text"] for b in content
                     if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)]
            if texts:
                return "\n".join(texts)[:4000]
        return None
    return None
