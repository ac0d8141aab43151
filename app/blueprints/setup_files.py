"""GET /client-setup/<filename>: static files for clients, safe from traversal."""
from __future__ import annotations

import os

from flask import Blueprint, current_app, send_file

from ..errors import ProxyError

bp = Blueprint("setup_files", __name__)

_NOT_FOUND = "File not found"


@bp.get("/client-setup/<filename>")
def setup_file(filename: str):
    base = current_app.extensions["nexus"].setup_dir
    path = safe_setup_path(base, filename)
    if path is None:
        raise ProxyError(404, _NOT_FOUND, "not_found_error")
    return send_file(path, conditional=True, max_age=3600, etag=True)


def safe_setup_path(base: str, filename: str) -> str | None:
    """The real path of `filename` inside `base`, or None for anything that could leave it.

    Rejects separators of either kind, dotfiles (and so `..`), NUL, and symlinks whose target is
    outside the folder; only regular files are served (no directory listing).
    """
    if not filename or filename.startswith(".") or "/" in filename or "\\" in filename or "\x00" in filename:
        return None
    real_base = os.path.realpath(base)
    real = os.path.realpath(os.path.join(real_base, filename))
    if os.path.dirname(real) != real_base or not os.path.isfile(real):
        return None
    return real
