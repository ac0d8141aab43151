"""Passthrough credentials, one concern per module:

- `credential`: the credential, the client's own, and the credential-file format;
- `files`: one cached file and its reload;
- `refresh`: OAuth refresh as a single flight;
- `store_sync`: the shared store's copy of refreshed credentials (a fleet);
- `state` and `pool`: what each answer says about a credential, and the choice among a domain's pool;
- `manager`: a domain's whole configuration resolved once per request, and the choice order.
"""
from .credential import (
    OAUTH_BETA, OAUTH_TOKEN_PREFIX, Credential, client_credential, host_without_port, merge_beta, parse_credential,
)
from .manager import CredentialManager, DomainConfig

__all__ = [
    "OAUTH_BETA", "OAUTH_TOKEN_PREFIX", "Credential", "CredentialManager", "DomainConfig", "client_credential",
    "host_without_port", "merge_beta", "parse_credential",
]
