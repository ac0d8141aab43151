"""Who may use the proxy: client keys from any number of key sources, the strict-mapping rule, and admin views.

The rule for `/v1/*`: once any client key exists (in any source), every request needs a key that is valid
for its Host, and that key is never forwarded upstream. With `STRICT_DOMAIN_MAPPING` a Host missing from
the mapping is refused whenever keys are on, in both modes (and in translation mode also without keys
when the operator's upstream key would be lent to it). Admin views (`/token-stats`, the detailed `GET /`)
need an admin identity whenever any key exists: a team's `client_api_key` opens its domain, not the
operator's data.

A key source has `has_keys() -> bool` and `match(presented_key, host) -> Identity | None`; `PROXY_API_KEYS`
and the credential files' `client_api_key` are two, and more can be added with `add_source` (the client keys of
app/keys are one). A source may also have `refusal(presented_key, host) -> ProxyError | None`, the specific
error for a key of its own it does not accept (revoked, expired).
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

from ..client_key import presented_key
from ..errors import ProxyError
from .client_key_files import check_client_key_files  # noqa: F401  (kept light: see there)
from .credentials import CredentialManager, host_without_port
from ..settings import Settings


@dataclass(frozen=True)
class Identity:
    """What a presented key matched: recorded with the request, never forwarded."""

    kind: str  # "proxy_key" (PROXY_API_KEYS), "domain_key" (a file's client_api_key), or a source's own kind
    name: str  # which key: "PROXY_API_KEYS", the domain, or the source's id for it
    domain: str | None = None  # the domain the key is bound to; None: any Host
    admin: bool = False  # may see operator data
    key: str = ""  # the presented value, so callers can strip it; never shown

    def __repr__(self) -> str:  # the key stays out of logs and tracebacks
        return f"Identity(kind={self.kind!r}, name={self.name!r}, domain={self.domain!r}, admin={self.admin})"


class KeySource(Protocol):
    def has_keys(self) -> bool:
        """Whether this source holds at least one key (then every request needs one)."""

    def match(self, presented_key: str, host: str, config=None) -> Identity | None:
        """The identity `presented_key` opens on `host`, else None. Compare in constant time.

        `config` is the host's DomainConfig when the request already resolved it."""


def _matches(raw: bytes, keys: Sequence[bytes]) -> bool:
    # compare against every key so the time taken does not say which one nearly matched
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(raw, key)
    return ok


class ProxyKeys:
    """`PROXY_API_KEYS`: keys for every Host, and the admin keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = tuple(k.encode() for k in keys)

    def has_keys(self) -> bool:
        return bool(self._keys)

    def match(self, presented_key: str, host: str, config=None) -> Identity | None:
        if self._keys and _matches(presented_key.encode(), self._keys):
            return Identity("proxy_key", "PROXY_API_KEYS", None, True, presented_key)
        return None


class DomainKeys:
    """Each mapped credential file's `client_api_key`: a key for that domain only (any of a pool's files).

    A value that is not a non-empty string (a number, a list, blanks) protects its domain with no key
    that could match: refused rather than open. Start-up refuses such a file (`check_client_key_files`).
    """

    def __init__(self, credentials: CredentialManager, domains: Sequence[str]) -> None:
        self._credentials = credentials
        self._domains = tuple(host_without_port(d) for d in domains)

    def has_keys(self) -> bool:
        return self._credentials.any_client_keys()

    def match(self, presented_key: str, host: str, config=None) -> Identity | None:
        values = (config if config is not None else self._credentials.domain_config(host)).client_api_keys
        if not values:
            return None
        keys = tuple(v.encode() if isinstance(v, str) and v.strip() else b"\0unusable" for v in values)
        if _matches(presented_key.encode(), keys):
            return Identity("domain_key", host, host, False, presented_key)
        return None


_UNAUTHORIZED = "Missing or invalid proxy API key (send it as x-api-key or Authorization: Bearer)"


class AccessControl:
    def __init__(self, settings: Settings, credentials: CredentialManager, sources: Sequence[KeySource] = ()) -> None:
        self.credentials = credentials
        mapping = settings.domain_credential_mapping
        self.sources: list[KeySource] = [ProxyKeys(settings.proxy_api_keys), DomainKeys(credentials, tuple(mapping)),
                                         *sources]
        self._strict = settings.strict_domain_mapping and bool(mapping)
        # translation lends the operator's upstream key to every request that passes
        self._lends_server_key = settings.translation and bool(settings.claude_code_proxy_api_key)

    def add_source(self, source: KeySource) -> None:
        self.sources.append(source)

    @property
    def enabled(self) -> bool:
        """Whether any client key exists, in any source."""
        return any(source.has_keys() for source in self.sources)

    def check(self, host: str, headers: Mapping[str, str], config=None) -> Identity | None:
        """The identity of a `/v1/*` request (None when no client key exists); a 401 when it may not pass.

        `headers` have lower-case names; `config` is the host's DomainConfig when the caller has resolved it.
        """
        if config is None:
            config = self.credentials.domain_config(host)
        if config.unreadable:
            # fail closed: the unreadable file may carry the key that protects this domain
            raise ProxyError(401, "The credential file for this domain cannot be read, so its access key is "
                                  "unknown; the proxy refuses its requests until the file is fixed",
                             "authentication_error")
        enabled = self.enabled
        if self._strict and (enabled or self._lends_server_key) and config.pool is None:
            raise ProxyError(401, f"Host '{host[:253]}' is not in DOMAIN_CREDENTIAL_MAPPING, and strict domain "
                                  "mapping is on", "authentication_error")
        if not enabled:
            return None
        key = presented_key(headers)
        identity = self._match(key, host, config) if key else None
        if identity is None:
            for source in self.sources:
                # a source may say why its own key is refused (revoked, expired); an unknown key gets no detail
                refusal = getattr(source, "refusal", None)
                error = refusal(key, host) if refusal is not None and key else None
                if error is not None:
                    raise error
            raise ProxyError(401, _UNAUTHORIZED, "authentication_error")
        return identity

    def is_admin(self, headers: Mapping[str, str]) -> bool:
        """Whether a request may see operator data: always when no client key exists, else an admin key."""
        if not self.enabled:
            return True
        key = presented_key({k.lower(): v for k, v in headers.items()})
        identity = self._match(key, "") if key else None
        return identity is not None and identity.admin

    def require_admin(self, headers: Mapping[str, str]) -> None:
        if not self.is_admin(headers):
            raise ProxyError(401, "This view needs an admin key: one of PROXY_API_KEYS, as x-api-key or "
                                  "Authorization: Bearer", "authentication_error")

    def _match(self, key: str, host: str, config=None) -> Identity | None:
        found = None
        for source in self.sources:  # every source compares, whichever matches
            identity = source.match(key, host, config)
            if identity is not None and (found is None or (identity.admin and not found.admin)):
                found = identity
        return found
