"""Optional client authentication: the proxy's own keys (PROXY_API_KEYS, or a domain's `client_api_key`)."""
from __future__ import annotations

import hmac
from typing import Mapping

from app.errors import ProxyError


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: `x-api-key`, else `Authorization: Bearer …`."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


class AccessControl:
    def __init__(self, settings, credentials) -> None:
        self.global_keys = tuple(k.encode() for k in settings.proxy_api_keys)
        self.credentials = credentials
        self.domains = tuple(settings.domain_credential_mapping)

    def enabled_for(self, host: str) -> bool:
        return bool(self.global_keys) or bool(self.credentials.domain_config(host).client_api_keys)

    @property
    def enabled(self) -> bool:
        return bool(self.global_keys) or any(self.credentials.domain_config(d).client_api_keys for d in self.domains)

    def check(self, host: str, headers: Mapping[str, str], config=None) -> str | None:
        """Return the matching proxy key (so it is not forwarded), None when access control is off.

        Raises a 401 when it is on and the request carries no matching key. `config` is the host's
        resolved configuration when the caller already has it.
        """
        if config is None:
            config = self.credentials.domain_config(host)
        keys = self.global_keys
        if config.client_api_keys:
            keys = keys + tuple(k.encode() for k in config.client_api_keys)
        if not keys:
            if config.unreadable:
                # fail closed: the unreadable file may carry the key that protects this domain
                raise ProxyError(401, "The credential file for this domain cannot be read, so its access key is "
                                      "unknown; the proxy refuses its requests until the file is fixed",
                                 "authentication_error")
            return None
        given = presented_key(headers)
        if given:
            raw = given.encode()
            # compare against every key so the time taken does not say which one nearly matched
            ok = False
            for key in keys:
                ok |= hmac.compare_digest(raw, key)
            if ok:
                return given
        raise ProxyError(401, "Missing or invalid proxy API key (send it as x-api-key or Authorization: Bearer)",
                         "authentication_error")

    def allows(self, host: str, headers: Mapping[str, str]) -> bool:
        """Whether a request may see operator data (/token-stats, the detailed health)."""
        try:
            self.check(host, {k.lower(): v for k, v in headers.items()})
            return True
        except ProxyError:
            return False

    def require_admin(self, host: str, headers: Mapping[str, str]) -> None:
        self.check(host, {k.lower(): v for k, v in headers.items()})
