"""The key a client presents, read by one rule for everyone who reads it: access control, passthrough's
choice of credential and translation's choice of upstream key."""
from __future__ import annotations

from typing import Mapping


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The client's key: `x-api-key`, else the token of `Authorization: Bearer <token>`; None without one.

    Header names are lower-case. Values are stripped, and a blank one (empty or only spaces) counts as
    absent, so a blank `x-api-key` next to a Bearer token presents the Bearer token. When both carry a
    value, `x-api-key` wins. An `Authorization` header of another scheme (Basic, …) presents nothing.
    """
    value = headers.get("x-api-key")
    if value:
        value = value.strip()
        if value:
            return value
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None
