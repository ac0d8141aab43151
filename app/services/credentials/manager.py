"""The credential manager: a domain's whole configuration resolved once per request, and the credential chosen.

Choice order (docs/credentials.md):
1. `DOMAIN_CREDENTIAL_MAPPING` by request host (no port, case-insensitive): wins over the client's headers.
   A list of files is a pool (see `pool.py`).
2. The client's own `x-api-key` or `Authorization: Bearer …` (`sk-ant-oat…` = OAuth access token).
3. An unmapped host when a mapping exists: strict -> 401; lenient -> the first valid mapped credential
   that has no `client_api_key` (warned once per host).
4. `CLAUDE_API_KEY`, then `CLAUDE_CODE_PROXY_API_KEY`.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterable, Mapping

import requests

from ...errors import ProxyError
from .credential import Credential, client_credential, host_without_port, register
from .files import CredentialFile
from .pool import Pool
from .refresh import REFRESH_MARGIN_MS, Refresher
from .state import CredentialState, PoolStates
from .store_sync import StoreSync
from ..oauth import OAuthError
from ...settings import Settings

log = logging.getLogger("app.services.credentials")

_WARNED_HOSTS_MAX = 1024


class DomainConfig:
    """Everything the request's host configures, looked up once: its pool, access keys and Slack override."""

    __slots__ = ("host", "pool", "client_api_keys", "slack", "unreadable")

    def __init__(self, host: str, pool: Pool | None = None, client_api_keys: tuple = (),
                 slack: dict | None = None, unreadable: bool = False) -> None:
        self.host = host
        self.pool = pool
        self.client_api_keys = client_api_keys
        self.slack = slack
        self.unreadable = unreadable  # a file could not be read: whether it holds a client_api_key is unknown


class CredentialManager:
    """Chooses the credential of each passthrough request and keeps OAuth credentials fresh."""

    def __init__(self, settings: Settings, store=None, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time, state_store=None,
                 on_change: Callable[[str, str | None, str, CredentialState], None] | None = None) -> None:
        self._clock = clock
        self._strict = bool(settings.strict_domain_mapping)
        self._warned_hosts: set[str] = set()
        self.sync = StoreSync(store)
        self.refresher = Refresher(settings, self.sync, session, clock)
        self.states = PoolStates(state_store, clock, on_change)
        self._pools: dict[str, Pool] = {}
        self.files: list[CredentialFile] = []  # each file once, in mapping order
        by_path: dict[str, CredentialFile] = {}
        names: set[str] = set()
        switch_at = settings.pool_switch_at
        for domain, configured in (settings.domain_credential_mapping or {}).items():
            host = host_without_port(domain)
            if not host or host in self._pools:
                continue
            files = []
            for item in (configured if isinstance(configured, list) else [configured]):
                path = os.path.abspath(os.path.expanduser(str(item)))
                f = by_path.get(path)
                if f is None:
                    name = os.path.basename(path) or str(item)
                    if name in names:
                        name = str(item)  # two files of one name in different folders: the path tells them apart
                    names.add(name)
                    f = by_path[path] = CredentialFile(path, str(item), host, name, self.sync)
                    self.files.append(f)
                if f not in files:
                    files.append(f)
            self._pools[host] = Pool(host, files, self.states, switch_at)
        self._by_name = {f.name: f for f in self.files}
        self._env: Credential | None = None
        for key in (settings.claude_api_key, settings.claude_code_proxy_api_key):
            if key and key.strip():
                self._env = Credential("api_key", key.strip(), "env", None)
                register(key.strip())
                break

    # ------------------------------------------------------------ once per request

    def domain_config(self, host: str) -> DomainConfig:
        """The host's whole configuration (files re-checked at most once a second)."""
        name = host_without_port(host)
        pool = self._pools.get(name)
        if pool is None:
            return DomainConfig(name)
        now = self._clock()
        keys: list[str] = []
        slack = None
        unreadable = False
        for f in pool.files:
            f.check_due(now)
            if f.data is None:
                unreadable = True
                continue
            key = f.data.get("client_api_key")
            if key is not None and key not in keys:
                keys.append(key)  # as the file holds it: access control refuses a value that is not a key
            block = f.data.get("slack")
            if slack is None and isinstance(block, dict):
                slack = block
        return DomainConfig(name, pool, tuple(keys), slack, unreadable)

    def choose(self, config: DomainConfig, headers: Mapping[str, str], conversation: str | None = None,
               exclude: Iterable[CredentialFile] = ()) -> tuple[Credential, CredentialFile | None]:
        """The credential for one try of a request, and its file when it is a domain's."""
        pool = config.pool
        if pool is not None:
            if pool.size == 1:
                f = pool.files[0]
                return self._file_credential(f, pool.domain), f
            now = self._clock()
            tried = list(exclude)
            while True:
                f = pool.pick(conversation, tried, now)
                if f is None:
                    raise pool.unavailable(now)
                try:
                    return self._file_credential(f, pool.domain), f
                except ProxyError:  # its token expired and could not be refreshed: the next one
                    tried.append(f)
        client = client_credential(headers)
        if client is not None:
            return client, None
        if self._pools:
            if self._strict:
                raise ProxyError(401, f"No credential is configured for host '{config.host[:253]}' (strict domain "
                                      "mapping is on) and the request carries no credential of its own",
                                 "authentication_error")
            found = self._lenient_fallback(config.host)
            if found is not None:
                return found
        if self._env is not None:
            return self._env, None
        raise ProxyError(401, "No credential available: no domain mapping for this host, no x-api-key or "
                              "Authorization header, and neither CLAUDE_API_KEY nor CLAUDE_CODE_PROXY_API_KEY is set",
                         "authentication_error")

    def resolve(self, host: str, headers: Mapping[str, str]) -> Credential:
        """The credential for one request (see the module docstring for the order)."""
        return self.choose(self.domain_config(host), headers)[0]

    def refresh_after_unauthorized(self, cred: Credential) -> Credential | None:
        """After an upstream 401 on a domain OAuth credential: a refreshed credential, or None (relay the 401)."""
        if cred.kind != "oauth" or cred.source != "domain" or not cred.domain:
            return None
        f = self._by_name.get(cred.name) if cred.name else None
        if f is None:
            pool = self._pools.get(cred.domain)
            if pool is None:
                return None
            f = next((x for x in pool.files if x.secret == cred.secret), pool.files[0])
        try:
            self.refresher.refresh(f, cred.domain, stale=cred.secret)
        except OAuthError:
            return None
        if f.kind != "oauth" or f.secret is None or f.secret == cred.secret:
            return None
        return f.credential(cred.domain)

    # thin views of domain_config, for callers that need one field
    def client_api_key_for(self, host: str) -> str | None:
        keys = [k for k in self.domain_config(host).client_api_keys if isinstance(k, str) and k]
        return keys[0] if keys else None

    def file_field(self, host: str, name: str):
        """A top-level field of the host's (first) mapped credential file that has it, as the file holds it."""
        pool = self._pools.get(host_without_port(host))
        if pool is None:
            return None
        now = self._clock()
        for f in pool.files:
            f.check_due(now)
            value = f.get(name)
            if value is not None:
                return value
        return None

    def is_mapped(self, host: str) -> bool:
        return host_without_port(host) in self._pools

    def any_client_keys(self) -> bool:
        """Whether any mapped file carries a `client_api_key` (then every request needs a key)."""
        now = self._clock()
        for f in self.files:
            f.check_due(now)
            if f.get("client_api_key") is not None:
                return True
        return False

    def mapped_but_unreadable(self, host: str) -> bool:
        return self.domain_config(host).unreadable

    def slack_override_for(self, host: str) -> dict | None:
        return self.domain_config(host).slack

    def slack_for_credential(self, name: str) -> dict | None:
        """The Slack override of the file a credential notice is about."""
        f = self._by_name.get(name)
        block = f.get("slack") if f is not None else None
        return block if isinstance(block, dict) else None

    def pool_for(self, host: str) -> Pool | None:
        return self._pools.get(host_without_port(host))

    # ------------------------------------------------------------ start-up and health

    def validate_all(self) -> list[str]:
        """Load every mapped file; log and return the problems found. Never raises."""
        warnings: list[str] = []
        loaded: set[int] = set()
        for domain, pool in self._pools.items():
            for f in pool.files:
                try:
                    if id(f) not in loaded:
                        loaded.add(id(f))
                        with f.lock:
                            f.check(self._clock())
                    warnings.extend(f.problems(domain))
                except Exception as exc:  # a start-up check must never stop the proxy
                    warnings.append(f"Credential file for '{domain}' could not be checked ({type(exc).__name__})")
        for w in warnings:
            log.warning("%s", w)
        if self._pools and not self._strict:
            log.info("Requests for hosts missing from DOMAIN_CREDENTIAL_MAPPING that bring no credential of their "
                     "own use the first valid mapped credential (STRICT_DOMAIN_MAPPING=true refuses them)")
        return warnings

    def status(self, usage: dict | None = None) -> dict:
        """Per mapped domain, for `GET /`: a file's status, or a pool's per-credential view. Never a secret."""
        now = self._clock()
        out = {}
        for domain, pool in self._pools.items():
            if pool.size == 1:
                # the file's status first, then what its answers told (windows, cooling, broken, usage)
                out[domain] = pool.view(now, usage)[0]
            else:
                out[domain] = {"pool": pool.view(now, usage)}
        return out

    def oauth_expiry(self) -> dict[str, int]:
        """Mapped domain -> when its (first) OAuth access token expires (epoch ms), for the metrics."""
        now = self._clock()
        out = {}
        for domain, pool in self._pools.items():
            for f in pool.files:
                f.check_due(now)
                if f.kind == "oauth" and f.expires_ms is not None:
                    out[domain] = f.expires_ms
                    break
        return out

    def credential_view(self, usage: dict | None = None) -> dict:
        """Per credential file (by name), for `GET /`: status, windows, cooling, broken, requests and tokens."""
        now = self._clock()
        seen = {}
        for pool in self._pools.values():
            for item in pool.view(now, usage):
                seen.setdefault(item["name"], item)
        return seen

    # ------------------------------------------------------------ internals

    def _file_credential(self, f: CredentialFile, domain: str) -> Credential:
        now = self._clock()
        f.check_due(now)
        if f.kind == "oauth" and f.expires_ms is not None and f.expires_ms - now * 1000 <= REFRESH_MARGIN_MS:
            self._refresh_for_request(f, domain, now)
        if f.secret is None:
            raise ProxyError(401, f"The credential configured for '{domain}' is not usable: {f.error}",
                             "authentication_error")
        return f.credential(domain)

    def _refresh_for_request(self, f: CredentialFile, domain: str, now: float) -> None:
        still_valid = f.expires_ms > now * 1000
        if f.refreshing and still_valid:
            return  # another greenlet is refreshing; the current token works for a few more seconds
        try:
            self.refresher.refresh(f, domain, stale=None)
        except OAuthError as exc:
            if f.kind == "oauth" and f.secret and f.expires_ms is not None \
                    and f.expires_ms > self._clock() * 1000:
                return  # not expired yet: use it while it lasts (the failure is in status())
            raise ProxyError(401, f"OAuth token refresh failed for {domain}: {exc}",
                             "authentication_error") from None

    def _lenient_fallback(self, host: str) -> tuple[Credential, CredentialFile] | None:
        now = self._clock()
        for domain, pool in self._pools.items():
            for f in pool.files:
                f.check_due(now)
                # a file with client_api_key is protected: lending it to another host would bypass that key
                if f.secret is None or f.get("client_api_key"):
                    continue
                if host not in self._warned_hosts:
                    if len(self._warned_hosts) >= _WARNED_HOSTS_MAX:
                        self._warned_hosts.clear()
                    self._warned_hosts.add(host)
                    log.warning("No credential mapping found for host '%s'; using the credential of '%s' "
                                "(STRICT_DOMAIN_MAPPING=true refuses unmapped hosts)", host[:253], domain)
                log.debug("Unmapped host '%s' uses the credential of '%s'", host[:253], domain)
                return self._file_credential(f, domain), f
        return None
