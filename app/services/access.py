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
    def __init__(self, settings, credentials, client_keys=None) -> None:
        self.global_keys = tuple(k.encode() for k in settings.proxy_api_keys)
        self.credentials = credentials
        self.domains = tuple(settings.domain_credential_mapping)
        self.client_keys = client_keys  # app.keys.service.ClientKeys: per-person keys with limits

    def _client_keys_on(self) -> bool:
        return self.client_keys is not None and self.client_keys.any_keys

    def enabled_for(self, host: str) -> bool:
        return bool(self.global_keys) or bool(self.credentials.client_api_key_for(host)) or self._client_keys_on()

    @property
    def enabled(self) -> bool:
        return (bool(self.global_keys) or any(self.credentials.client_api_key_for(d) for d in self.domains)
                or self._client_keys_on())

    def identify(self, host: str, headers: Mapping[str, str]):
        """(the matching key, so it is not forwarded; the client key record when it is one of those)."""
        if self.client_keys is not None:
            client = self.client_keys.identify(presented_key(headers), host)
            if client is not None:
                return presented_key(headers), client
        return self._check_static(host, headers, self._client_keys_on()), None

    def check(self, host: str, headers: Mapping[str, str]) -> str | None:
        """Return the matching proxy key (so it is not forwarded), None when access control is off.

        Raises a 401 when it is on and the request carries no matching key.
        """
        return self.identify(host, headers)[0]

    def _check_static(self, host: str, headers: Mapping[str, str], required: bool) -> str | None:
        keys = self.global_keys
        domain_key = self.credentials.client_api_key_for(host)
        if domain_key:
            keys = keys + (domain_key.encode(),)
        if not keys and not required:
            if self.credentials.mapped_but_unreadable(host):
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
            self.require_admin(host, headers)
            return True
        except ProxyError:
            return False

    def require_admin(self, host: str, headers: Mapping[str, str]) -> None:
        # Client keys spend; they do not see other people's usage: operator data takes a static key.
        self._check_static(host, {k.lower(): v for k, v in headers.items()}, self._client_keys_on())
