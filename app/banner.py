"""The start-up banner: what a user just started, as lines of text (pure: settings in, lines out).

The gunicorn master prints it once when it is ready. Each line is one fact; other capabilities append
their own (a URL to open, an endpoint to scrape) by adding to `banner_lines`. Secrets never appear:
URLs go through `masking.mask_url`, and keys are reported as set or not set only.
"""
from __future__ import annotations

import ipaddress
import json
import os

from .masking import mask_url
from .version import __version__

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a socket bound to `host`."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def listen_url(host: str, port: int) -> str:
    """The URL a client on this machine uses (a wildcard bind is reached through localhost)."""
    name = host.strip("[]")
    if name in ("", "0.0.0.0", "::"):
        name = "localhost"
    elif ":" in name:
        name = f"[{name}]"
    return f"http://{name}:{port}"


def _files_with_client_key(settings) -> int:
    """How many mapped credential files carry a `client_api_key` (unreadable files count as none)."""
    count = 0
    for path in {path for _, path in settings.credential_files}:
        try:
            with open(os.path.expanduser(str(path)), encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("client_api_key"), str) and data["client_api_key"].strip():
            count += 1
    return count


def _upstream_key_line(settings) -> str:
    if settings.translation:
        if settings.claude_code_proxy_api_key:
            return "set (CLAUDE_CODE_PROXY_API_KEY): every request uses the proxy's key"
        return "not set: each client's own key is sent upstream (set CLAUDE_CODE_PROXY_API_KEY to share one)"
    names = [name for name, value in (("DOMAIN_CREDENTIAL_MAPPING", settings.domain_credential_mapping),
                                      ("CLAUDE_API_KEY", settings.claude_api_key),
                                      ("CLAUDE_CODE_PROXY_API_KEY", settings.claude_code_proxy_api_key)) if value]
    if names:
        return "set (" + ", then ".join(names) + "), else the client's own key"
    return "not set: each client's own Anthropic key is sent upstream"


def _storage_line(settings) -> str:
    if settings.database_url:
        return f"PostgreSQL {mask_url(settings.database_url)}"
    return f"SQLite {os.path.abspath(settings.usage_db_path)}"


def _claude_code_line(settings, base_url: str) -> str:
    if settings.proxy_api_keys:
        token = "<a key from PROXY_API_KEYS>"
    elif settings.translation and settings.claude_code_proxy_api_key:
        token = "unused"
    elif settings.translation:
        token = "<your upstream key>"
    else:
        token = "<your Anthropic key or OAuth token>"
    return f"ANTHROPIC_BASE_URL={base_url} ANTHROPIC_AUTH_TOKEN={token} claude"


def spends_a_shared_key(settings) -> bool:
    """The proxy holds a credential of its own, so any caller it lets in spends it."""
    return bool(settings.claude_code_proxy_api_key or settings.domain_credential_mapping
                or (not settings.translation and settings.claude_api_key))


def banner_lines(settings, *, workers: int | None = None) -> list[str]:
    """The lines printed once at start-up, in order."""
    base_url = listen_url(settings.host, settings.port)
    workers = settings.workers if workers is None else workers
    upstream = settings.anthropic_proxy_base_url if settings.translation else settings.anthropic_base_url
    domain_keys = _files_with_client_key(settings)
    if settings.proxy_api_keys:
        access = f"on ({len(settings.proxy_api_keys)} key(s) in PROXY_API_KEYS)"
    elif domain_keys:
        access = f"on for the {domain_keys} credential file(s) with a client_api_key, off elsewhere"
    else:
        access = "off: anyone who reaches the port can use the proxy"
    lines = [
        f"claude-nexus-proxy {__version__} listening on {base_url} (bound to {settings.host}:{settings.port}, "
        f"{workers} worker{'s' if workers != 1 else ''})",
        f"  mode:           {settings.proxy_mode}, upstream {mask_url(upstream)}",
        f"  upstream key:   {_upstream_key_line(settings)}",
        f"  access control: {access}",
        f"  usage stored:   {_storage_line(settings)}",
        f"  Claude Code:    {_claude_code_line(settings, base_url)}",
    ]
    if not is_loopback(settings.host) and spends_a_shared_key(settings) and not settings.proxy_api_keys \
            and not domain_keys:
        lines.append(f"WARNING: listening on {settings.host} with an upstream credential and no client keys: anyone "
                     f"who can reach port {settings.port} can spend it. Set PROXY_API_KEYS=<key> to turn access "
                     "control on (or HOST=127.0.0.1 to listen on this machine only).")
    return lines
