"""The domain a request is accounted under, so that no client can grow the store by choosing Hosts.

A refused request goes to one `unauthenticated` bucket, whatever Host it named (a mapped team's counts
are not the sender's to inflate). An accepted request on a mapped domain is that domain's; on an
unmapped Host it keeps its host name while fewer than
`USAGE_MAX_UNMAPPED_HOSTS` such names are tracked (the ones already in the store count), then joins
`other-hosts`.
"""
from __future__ import annotations

import logging

from app.services.credentials import CredentialManager

log = logging.getLogger("nexus")

UNAUTHENTICATED = "unauthenticated"
OTHER_HOSTS = "other-hosts"
NO_HOST = "unknown"


class DomainNames:
    def __init__(self, credentials: CredentialManager, storage, limit: int) -> None:
        self._credentials = credentials
        self._storage = storage
        self._limit = limit
        self._known: set[str] | None = None

    def for_request(self, host: str, refused: bool) -> str:
        if refused:  # whoever sent it, it is not the team's traffic, and its Host is the sender's choice
            return UNAUTHENTICATED
        if host and self._credentials.is_mapped(host):
            return host
        name = host or NO_HOST
        known = self._known if self._known is not None else self._load()
        if name in known:
            return name
        if len(known) < self._limit:
            known.add(name)
            return name
        return OTHER_HOSTS

    def _load(self) -> set[str]:
        """The unmapped names the store already counts: a restart does not open the bound again."""
        try:
            names = set(self._storage.domain_stats())
        except Exception as exc:  # the store may be down: count from nothing, it only loosens the bound
            log.debug("usage store unavailable for the domain list (%s)", type(exc).__name__)
            names = set()
        self._known = {n for n in names if not self._credentials.is_mapped(n)
                       and n not in (UNAUTHENTICATED, OTHER_HOSTS)}
        return self._known
