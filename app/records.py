"""The record of one proxied request: what accounting, telemetry and Slack are told."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestRecord:
    request_id: str
    timestamp: float  # epoch seconds when the request arrived
    domain: str  # request host without port, lower-case
    mode: str  # "translation" | "passthrough"
    started: float = 0.0  # time.perf_counter() when the request arrived: duration_ms is measured from it
    method: str = "POST"
    path: str = "/v1/messages"
    model_requested: str | None = None
    model_used: str | None = None
    request_type: str = "query"  # "query" | "inference" (see app.usage.classify_request)
    stream: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    tool_calls: int = 0
    status: int = 0  # HTTP status the client got (200 for a stream that later failed)
    error_type: str | None = None  # Anthropic error type, or "client_disconnected"
    error_message: str | None = None
    duration_ms: float = 0.0
    api_key_masked: str | None = None  # already masked; never the raw key
    auth_type: str | None = None  # "api_key" | "oauth" | None
    upstream_error: str | None = None  # how the upstream failed, if it did (app.services.metrics kinds)
    # For Slack only; kept short by the producer.
    user_text: str | None = None
    assistant_text: str | None = None
    tool_names: list[str] = field(default_factory=list)
    # Cost: the cache writes split by TTL (their sum is at most cache_creation_input_tokens) and the
    # dollars computed once when the request is recorded (None: tokens on a model without a price).
    cache_creation_5m_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    cost_usd: float | None = None
    # The client key (app/keys) the request came with: its id and labels, never the key itself.
    key_id: str | None = None
    key_name: str | None = None
    key_team: str | None = None
    # What the key's limiter holds for this request (a concurrency slot), released once when it is finished.
    admission: object = field(default=None, repr=False, compare=False)
    # Credential pools and fallback upstreams: which credential file (by name) or upstream served it. (Fields
    # are added at the end: the usage journal stores them by position, and older lines are a prefix.)
    credential: str | None = None
    # The domain's own Slack settings (its webhook is a secret: never journaled or stored)
    slack_override: dict | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return self.error_type is not None or self.status >= 400
