"""Where the files shipped with the proxy are: in a checkout, and when installed as a package."""
from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def shipped_client_setup_dir() -> str:
    """`client-setup/` next to the package in a checkout (and the Docker image); inside it once installed."""
    installed = os.path.join(_HERE, "client_setup")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(_HERE), "client-setup")


def client_setup_dir(configured: str | None) -> str:
    """CLIENT_SETUP_DIR (relative to the working directory) when set, else the shipped folder."""
    return os.path.abspath(configured) if configured else shipped_client_setup_dir()
