"""The start-up check of the credential files' `client_api_key`, kept apart from the access classes.

The gunicorn master runs it before forking, so this module imports nothing that pulls in `requests` or
`urllib3`: a master that had imported them would hand the workers a urllib3 bound to the unpatched `ssl`
(gevent patches each worker after the fork), and TLS to the upstream would block a whole worker.
"""
from __future__ import annotations

import json
import os

from ..settings import Settings, SettingsError


def check_client_key_files(settings: Settings) -> None:
    """Start-up check: a `client_api_key` that is not a non-empty string is a configuration error.

    Left alone it would protect nothing the operator meant it to. Unreadable files are not judged here:
    they are warned about, and their domain is refused until they can be read.
    """
    for domain, configured in settings.credential_files:
        _check_file(domain, configured)


def _check_file(domain: str, configured: str) -> None:
    path = os.path.abspath(os.path.expanduser(str(configured)))
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return
    if not isinstance(data, dict) or "client_api_key" not in data:
        return
    value = data["client_api_key"]
    if not isinstance(value, str) or not value.strip():
        found = "a blank string" if isinstance(value, str) else f"a {type(value).__name__}"
        raise SettingsError("DOMAIN_CREDENTIAL_MAPPING", f"{configured} ({domain}): client_api_key must be a "
                                                         f"non-empty string, not {found}")
