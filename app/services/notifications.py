"""Telemetry events and Slack posts, sent off the request path.

`submit()` only appends the finished `RequestRecord` to a bounded in-memory queue (O(1), never blocks,
never raises); one background sender per service builds the JSON and POSTs it with a short timeout and
a few retries. A slow or dead endpoint therefore costs the requests nothing: events pile up to the bound,
then further ones are dropped and counted. Counters are shown by `status()` (for `GET /`).

The sender is a `threading.Thread`: under the gunicorn gevent worker (which monkey-patches before the
app is loaded) that is a greenlet and its sockets and sleeps are cooperative; unpatched (tests, scripts)
it is a real thread. The queue is a plain deque polled by the sender, so it is safe whichever world it
was created in and across the fork of a preloading master. Call `start()` in each worker process.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

import requests

from ..masking import mask_key_tail, mask_secret, mask_text, register_secret
from ..records import RequestRecord
from ..settings import Settings

log = logging.getLogger("nexus.notifications")

QUEUE_SIZE = 10_000
POLL_INTERVAL = 0.1  # idle sender wake-up; events go out within this delay
SLACK_TEXT_LIMIT = 3000  # Slack's section/text limit that renders whole; posts are kept under it
TRUNCATED = "… (truncated)"


class _Sender:
    """A bounded queue drained by one background sender that POSTs JSON with retries."""

    name = "sender"
    timeout = 5.0  # seconds per attempt (connect and read)
    attempts = 3
    backoff = (0.5, 1.0, 2.0)  # wait before the 2nd, 3rd, … attempt

    def __init__(self, session: requests.Session | None = None, maxsize: int = QUEUE_SIZE) -> None:
        self._session = session
        self.maxsize = maxsize
        self._queue: collections.deque = collections.deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._deadline = float("inf")
        self._failing = False
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    # -- what subclasses provide
    @property
    def enabled(self) -> bool:
        raise NotImplementedError

    def _messages(self, item: Any) -> list[tuple[str, dict]]:
        """(url, JSON payload) pairs for one queued item."""
        raise NotImplementedError

    # -- request path
    def _enqueue(self, item: Any) -> None:
        if len(self._queue) >= self.maxsize:
            self.dropped += 1
            return
        self._queue.append(item)

    # -- lifecycle
    def start(self) -> None:
        """Start the background sender (once per worker process; again after `stop()` is fine)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping = False
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name=f"nexus-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what can be sent within `timeout` seconds, then stop; what is left counts as dropped."""
        self._stopping = True
        self._deadline = time.monotonic() + max(0.0, timeout)
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout + POLL_INTERVAL * 2)
        if thread is None or not thread.is_alive():
            self._drop_remaining()

    def status(self) -> dict:
        return {
            "enabled": self.enabled,
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
            "queued": len(self._queue),
        }

    # -- sender
    def _http(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
        return self._session

    def _drop_remaining(self) -> None:
        while self._queue:
            try:
                self._queue.popleft()
            except IndexError:
                break
            self.dropped += 1

    def _out_of_time(self) -> bool:
        return self._stopping and time.monotonic() >= self._deadline

    def _run(self) -> None:
        while True:
            if self._out_of_time():
                self._drop_remaining()
                return
            try:
                item = self._queue.popleft()
            except IndexError:
                if self._stopping:
                    return
                time.sleep(POLL_INTERVAL)
                continue
            try:
                messages = self._messages(item)
            except Exception as exc:  # a bad record must not kill the sender
                self.failed += 1
                log.warning("%s: could not build a message (%s)", self.name, type(exc).__name__)
                continue
            for url, payload in messages:
                self._post(url, payload)

    def _post(self, url: str, payload: dict) -> bool:
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                if self._out_of_time():
                    break
                time.sleep(self.backoff[min(attempt - 1, len(self.backoff) - 1)])
            try:
                resp = self._http().post(url, json=payload, timeout=(min(self.timeout, 3.0), self.timeout))
            except requests.RequestException as exc:
                # Only the exception's class: its text carries the URL, and a webhook URL is a secret.
                problem = type(exc).__name__
                continue
            status = resp.status_code
            resp.close()
            if status < 300:
                self.sent += 1
                if self._failing:
                    self._failing = False
                    log.info("%s delivery recovered", self.name)
                return True
            problem = f"HTTP {status}"
            if status != 429 and status < 500:
                break  # a client error will not clear by retrying
        self.failed += 1
        if not self._failing:
            self._failing = True
            log.warning("%s delivery failing (%s); failed events are counted in GET /", self.name, problem)
        return False


# ---------------------------------------------------------------- telemetry

def iso_utc(epoch: float) -> str:
    """``2024-01-15T10:30:00.123Z`` (the JavaScript `toISOString()` form)."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _error_text(rec: RequestRecord) -> str | None:
    if rec.error_type and rec.error_message:
        return mask_text(f"{rec.error_type}: {rec.error_message}")
    if rec.error_type or rec.error_message:
        return mask_text(rec.error_type or rec.error_message or "")
    return None


def telemetry_event(rec: RequestRecord) -> dict:
    """The product's telemetry event for one request, plus domain, mode, toolCallCount, requestType."""
    return {
        "timestamp": iso_utc(rec.timestamp),
        "requestId": rec.request_id,
        "method": rec.method,
        "path": rec.path,
        "apiKey": mask_secret(rec.api_key_masked) if rec.api_key_masked else None,
        "model": rec.model_used or rec.model_requested,
        "inputTokens": rec.input_tokens,
        "outputTokens": rec.output_tokens,
        "duration": int(round(rec.duration_ms)),
        "status": rec.status,
        "error": _error_text(rec),
        "domain": rec.domain,
        "mode": rec.mode,
        "toolCallCount": rec.tool_calls,
        "requestType": rec.request_type,
        "costUsd": rec.cost_usd,
        "keyName": rec.key_name,
    }


class Telemetry(_Sender):
    """One JSON event per request to `TELEMETRY_ENDPOINT`; disabled (a no-op) without it."""

    name = "telemetry"

    def __init__(self, settings: Settings, session: requests.Session | None = None, maxsize: int = QUEUE_SIZE) -> None:
        super().__init__(session, maxsize)
        self.endpoint: str | None = settings.telemetry_endpoint or None

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None

    def submit(self, rec: RequestRecord) -> None:
        """Queue the event for `rec` (O(1); never blocks or raises)."""
        if self.endpoint is not None:
            self._enqueue(rec)

    def start(self) -> None:
        if self.enabled:
            super().start()

    def _messages(self, rec: RequestRecord) -> list[tuple[str, dict]]:
        return [(self.endpoint, telemetry_event(rec))]


# ---------------------------------------------------------------- Slack

def _cut(text: str, limit: int) -> str:
    """`text` masked and cut to `limit` characters with a marker (masked first: a cut never shows half a secret)."""
    # Masking is linear; cap what it reads at a size that still leaves any secret whole below the final cut.
    text = mask_text(text[: limit * 3 + 512])
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(TRUNCATED))].rstrip() + TRUNCATED


def _model_label(rec: RequestRecord) -> str:
    asked, used = rec.model_requested, rec.model_used
    if asked and used and asked != used:
        return f"{asked} → {used}"
    return asked or used or "unknown"


def slack_user_text(rec: RequestRecord, limit: int = SLACK_TEXT_LIMIT) -> str | None:
    """The user post: ``👤 User | Request <id>``, ``Domain: … | Model: …``, a blank line, the user's text."""
    if not rec.user_text:
        return None
    head = f"👤 User | Request {rec.request_id}\nDomain: {rec.domain} | Model: {_model_label(rec)}\n\n"
    head = mask_text(head)
    return head + _cut(rec.user_text, limit - len(head))


def slack_assistant_text(rec: RequestRecord, limit: int = SLACK_TEXT_LIMIT) -> str:
    """The product's assistant post (header lines exactly as the product's, then text, tool calls, error)."""
    key = mask_key_tail(rec.api_key_masked) if rec.api_key_masked else "none"
    head = mask_text(
        f"🤖 Assistant | Request {rec.request_id}\n"
        f"Domain: {rec.domain} | Model: {_model_label(rec)}\n"
        f"API Key: {key} | Tokens: In: {rec.input_tokens}, Out: {rec.output_tokens}\n\n"
    )
    tail_lines = []
    if rec.tool_names:
        tail_lines.append("🔧 Tool calls: " + ", ".join(rec.tool_names))
    error = _error_text(rec)
    if error:
        tail_lines.append(f"❌ Error: {error}")
    tail = _cut("\n".join(tail_lines), 1000) if tail_lines else ""
    body_limit = limit - len(head) - (len(tail) + 2 if tail else 0)
    body = _cut(rec.assistant_text, body_limit) if rec.assistant_text else ""
    if body and tail:
        return head + body + "\n\n" + tail
    return head + (body or tail or "(no text)")


class Slack(_Sender):
    """User and assistant posts to an incoming webhook, globally or per domain (credential file `slack` block)."""

    name = "slack"

    def __init__(self, settings: Settings, session: requests.Session | None = None, maxsize: int = QUEUE_SIZE) -> None:
        super().__init__(session, maxsize)
        self.webhook_url: str | None = settings.slack_webhook_url or None
        self.global_enabled = bool(self.webhook_url) and settings.slack_enabled
        self.channel: str | None = settings.slack_channel or None
        self.username: str = settings.slack_username
        self.icon_emoji: str = settings.slack_icon_emoji
        register_secret(self.webhook_url)

    @property
    def enabled(self) -> bool:
        return self.global_enabled

    def target(self, slack_override: dict | None = None) -> dict | None:
        """Where and how a request's posts go: {url, channel, username, icon_emoji}, or None (not sent).

        A domain's block wins field by field; ``enabled: false`` in it turns Slack off for that domain,
        and its own ``webhook_url`` is used even when the global webhook is unset or disabled.
        """
        o = slack_override if isinstance(slack_override, dict) else {}
        if o.get("enabled") is False or str(o.get("enabled", "")).lower() == "false":
            return None
        if o.get("webhook_url"):
            url = o["webhook_url"]
        elif self.global_enabled:
            url = self.webhook_url
        else:
            return None
        return {
            "url": url,
            "channel": o.get("channel") or self.channel,
            "username": o.get("username") or self.username,
            "icon_emoji": o.get("icon_emoji") or self.icon_emoji,
        }

    def submit(self, rec: RequestRecord, slack_override: dict | None = None) -> None:
        """Queue the posts for `rec` (O(1); never blocks or raises)."""
        if not self.global_enabled and not slack_override:
            return
        target = self.target(slack_override)
        if target is not None:
            self._enqueue((rec, target))

    def _payload(self, text: str, target: dict) -> dict:
        payload = {"text": text, "username": target["username"], "icon_emoji": target["icon_emoji"]}
        if target["channel"]:
            payload["channel"] = target["channel"]
        return payload

    def payloads(self, rec: RequestRecord, slack_override: dict | None = None) -> list[tuple[str, dict]]:
        """The (webhook URL, JSON payload) pairs one request produces (pure; what the sender posts)."""
        target = self.target(slack_override)
        return self._build(rec, target) if target else []

    def _build(self, rec: RequestRecord, target: dict) -> list[tuple[str, dict]]:
        register_secret(target["url"])  # a domain's own webhook URL must not show in logs either
        out = []
        user = slack_user_text(rec)
        if user:
            out.append((target["url"], self._payload(user, target)))
        out.append((target["url"], self._payload(slack_assistant_text(rec), target)))
        return out

    def notice(self, text: str, slack_override: dict | None = None) -> None:
        """Queue one operator notice (a credential's change of state), masked like every post."""
        target = self.target(slack_override)
        if target is not None:
            self._enqueue((_Notice(mask_text(text)[:SLACK_TEXT_LIMIT]), target))

    def _messages(self, item: tuple) -> list[tuple[str, dict]]:
        rec, target = item
        if isinstance(rec, _Notice):
            register_secret(target["url"])
            return [(target["url"], self._payload(rec.text, target))]
        return self._build(rec, target)


class _Notice:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def credential_notice(name: str, previous: str | None, phase: str, state) -> str:
    """The Slack text for a credential's change of state (its name only, never its secret)."""
    if phase == "cooling":
        until = datetime.fromtimestamp(state.cooling_until, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"⏸️ Credential {name} is cooling down until {until} ({state.cooling_reason or 'rate limited'})"
    if phase == "broken":
        return f"⛔ Credential {name} is broken: {state.broken or 'refused'}; it stays out until its file changes"
    return f"✅ Credential {name} has recovered (was {previous or 'unknown'})"
