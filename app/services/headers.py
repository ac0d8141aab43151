"""Every header set the proxy sends out, built side by side: passthrough's forwarded request and relayed
answer, translation's upstream request, and the OAuth token endpoint's request."""
from __future__ import annotations

from typing import Mapping

from app.version import __version__

ANTHROPIC_VERSION = "2023-06-01"
USER_AGENT = f"claude-nexus-proxy/{__version__}"
# The OAuth endpoints see the product name alone, as the login command has always sent it.
OAUTH_USER_AGENT = "claude-nexus-proxy"

# RFC 9110 hop-by-hop headers, plus what the HTTP client sets itself.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})
# The client's credential headers are replaced by the chosen credential; accept-encoding by what we decode.
_REQUEST_DROP = _HOP_BY_HOP | {"authorization", "x-api-key", "accept-encoding"}
# Response headers the WSGI server sets itself, or that no longer hold once the body is decoded.
_RESPONSE_DROP = _HOP_BY_HOP | {"content-encoding", "date", "server", "set-cookie", "alt-svc"}
# Encodings urllib3 decodes with the standard library alone; the client gets the decoded bytes.
UPSTREAM_ACCEPT_ENCODING = "gzip, deflate"


def forward_headers(client_headers: Mapping[str, str], credential) -> dict[str, str]:
    """Passthrough: the client's own headers, minus hop-by-hop ones, with the chosen credential applied.

    The one place for the passthrough header rules (README: "Passthrough headers").
    """
    drop = _REQUEST_DROP
    listed = client_headers.get("connection")
    if listed:
        # RFC 9110 7.6.1: the fields a Connection header names are hop-by-hop too
        drop = drop | {name.strip().lower() for name in listed.split(",")}
    headers = {k: v for k, v in client_headers.items() if k not in drop}
    headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    headers["content-type"] = "application/json"
    headers["accept-encoding"] = UPSTREAM_ACCEPT_ENCODING
    credential.apply(headers)
    return headers


def response_headers(upstream_headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Passthrough: the upstream answer's headers as relayed to the client."""
    return [(k, v) for k, v in upstream_headers.items() if k.lower() not in _RESPONSE_DROP]


def translation_headers(key: str, stream: bool) -> dict[str, str]:
    """Translation: the OpenAI-compatible upstream's request headers."""
    return {
        "authorization": "Bearer " + key,
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        "user-agent": USER_AGENT,
    }


def token_endpoint_headers(bearer: str | None = None) -> dict[str, str]:
    """OAuth: the token endpoint's (and the API-key creation endpoint's) request headers."""
    headers = {"content-type": "application/json", "accept": "application/json", "user-agent": OAUTH_USER_AGENT}
    if bearer:
        headers["authorization"] = "Bearer " + bearer
    return headers
