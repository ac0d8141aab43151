"""A credential (what goes into the outgoing auth headers) and the credential-file format."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Mapping

from ...masking import mask_secret, register_secret
from ...client_key import presented_key

OAUTH_BETA = "oauth-2025-04-20"
OAUTH_TOKEN_PREFIX = "sk-ant-oat"


def register(*values: object) -> None:
    """Hide these values wherever they would be logged."""
    for v in values:
        if isinstance(v, str) and v:
            register_secret(v)


def host_without_port(host: str | None) -> str:
    """`Example.COM:443` -> `example.com`; `[::1]:3000` -> `::1`; a bare IPv6 literal stays whole."""
    if not host:
        return ""
    host = host.strip()
    if host[:1] == "[":
        end = host.find("]")
        return host[1:end].lower() if end > 0 else host.lower()
    i = host.find(":")
    if i != -1 and host.find(":", i + 1) == -1:  # exactly one colon: host:port
        host = host[:i]
    return host.rstrip(".").lower()


def merge_beta(value: str | None, beta: str = OAUTH_BETA) -> str:
    """The client's `anthropic-beta` list (order kept, duplicates dropped) with `beta` added once."""
    if not value:
        return beta
    parts: list[str] = []
    for p in value.split(","):
        p = p.strip()
        if p and p not in parts:
            parts.append(p)
    if beta not in parts:
        parts.append(beta)
    return ",".join(parts)


@dataclass(frozen=True)
class Credential:
    kind: str  # "api_key" | "oauth"
    secret: str = field(repr=False)  # never logged: repr() leaves it out
    source: str = "env"  # "domain" | "client" | "env"
    domain: str | None = None  # the mapping domain whose file was used
    name: str | None = None  # the credential file's name (what accounting and GET / show), never the secret

    def apply(self, headers: dict[str, str]) -> None:
        """Set the auth headers on an outgoing, lower-case keyed header dict."""
        if self.kind == "oauth":
            headers.pop("x-api-key", None)
            headers["authorization"] = "Bearer " + self.secret
            headers["anthropic-beta"] = merge_beta(headers.get("anthropic-beta"))
        else:
            headers.pop("authorization", None)
            headers["x-api-key"] = self.secret

    @property
    def masked(self) -> str:
        return mask_secret(self.secret)


def client_credential(headers: Mapping[str, str]) -> Credential | None:
    """The client's own credential: the key it presents (`app.client_key`), as an API key or an OAuth token."""
    value = presented_key(headers)
    if not value:
        return None
    kind = "oauth" if value.startswith(OAUTH_TOKEN_PREFIX) else "api_key"
    return Credential(kind, value, "client", None)


def parse_credential(data: object) -> tuple[str, str, int | None]:
    """(kind, secret, expiresAt ms or None) of a credential file's JSON; ValueError with a safe reason."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    kind = data.get("type")
    if kind is None:
        kind = "oauth" if "oauth" in data else "api_key" if "api_key" in data else None
    if kind == "api_key":
        key = data.get("api_key")
        if not isinstance(key, str) or not key.strip():
            raise ValueError('"api_key" is missing or empty')
        return "api_key", key.strip(), None
    if kind == "oauth":
        block = data.get("oauth")
        if not isinstance(block, dict):
            raise ValueError('"oauth" object is missing')
        token = block.get("accessToken")
        if not isinstance(token, str) or not token.strip():
            raise ValueError('"oauth.accessToken" is missing or empty')
        exp = block.get("expiresAt")
        if exp is None:
            expires = None
        elif isinstance(exp, (int, float)) and not isinstance(exp, bool):
            expires = int(exp)
        elif isinstance(exp, str) and exp.strip().isdigit():
            expires = int(exp.strip())
        else:
            raise ValueError('"oauth.expiresAt" is not a number (milliseconds since the epoch)')
        return "oauth", token.strip(), expires
    if kind is None:
        raise ValueError('no "type" field ("api_key" or "oauth")')
    raise ValueError(f'unknown "type" {str(kind)[:20]!r} (expected "api_key" or "oauth")')


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO-8601 UTC, or None."""
    if ms is None:
        return None
    try:
        moment = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or type(exc).__name__
