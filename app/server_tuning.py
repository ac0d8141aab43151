"""Per-request work in gunicorn that gives the same answer every time within a worker, done once.

Each function below replaces one step of gunicorn's request handling with a cached form of itself: the
result is the same, only computed less often. They run in the worker after the fork (the master's own
objects are untouched), and each one leaves gunicorn as it is if the name it wraps is not there (another
gunicorn version), so an upgrade can make a request dearer, never wrong.

- Settings: gunicorn reads its configuration through `Config.__getattr__`, a dict lookup and a call per
  read, about thirty times per request. A worker's settings never change (a reload forks new workers), so
  their values are stored on the object, where Python finds them before it falls back to `__getattr__`.
- The `Date` header: formatted by the email package for every response, though it changes once a second.
- Forwarded-header trust: whether the peer may set `X-Forwarded-*` is an `ipaddress` parse and a network
  scan per request, for the same few peers (nginx, localhost) again and again.
"""
from __future__ import annotations

import time

_TRUST_CACHE_SIZE = 1024  # distinct peer addresses remembered; the cache starts over when full


def tune_gunicorn(cfg: object) -> None:
    freeze_settings(cfg)
    cache_date_header()
    cache_forwarded_trust()


def freeze_settings(cfg: object) -> None:
    """Store each setting's current value on `cfg` itself (gunicorn's `Config`)."""
    settings = getattr(cfg, "settings", None)
    if not isinstance(settings, dict):
        return
    own = vars(cfg)
    for name, setting in settings.items():
        # A name the class defines (a property such as `worker_class`, a method) keeps its meaning.
        if hasattr(type(cfg), name) or name in own:
            continue
        try:
            own[name] = setting.get()
        except Exception:  # a setting gunicorn computes lazily and cannot yet: leave it to __getattr__
            continue


def cache_date_header() -> None:
    """`gunicorn.util.http_date()`, formatted once per second."""
    from gunicorn import util

    original = getattr(util, "http_date", None)
    if original is None or getattr(original, "nexus_cached", False):
        return
    last = [-1, ""]

    def http_date(timestamp: float | None = None) -> str:
        if timestamp is not None:
            return original(timestamp)
        now = int(time.time())
        if last[0] != now:
            # The header has whole seconds, so the second's start formats the same as any time within it.
            last[1] = original(now)
            last[0] = now
        return last[1]

    http_date.nexus_cached = True  # type: ignore[attr-defined]
    util.http_date = http_date


def cache_forwarded_trust() -> None:
    """`gunicorn.http.message._ip_in_allow_list`, remembered per peer address and allow list."""
    from gunicorn.http import message

    original = getattr(message, "_ip_in_allow_list", None)
    if original is None or getattr(original, "nexus_cached", False):
        return
    known: dict = {}

    def _ip_in_allow_list(ip_str, allow_list, networks) -> bool:
        # The lists come from the worker's configuration, the same objects for every request; the entry
        # holds them, so their ids cannot be reused by other lists while it exists.
        key = (ip_str, id(allow_list), id(networks))
        entry = known.get(key)
        if entry is None:
            if len(known) >= _TRUST_CACHE_SIZE:
                known.clear()
            entry = known[key] = (original(ip_str, allow_list, networks), allow_list, networks)
        return entry[0]

    _ip_in_allow_list.nexus_cached = True  # type: ignore[attr-defined]
    message._ip_in_allow_list = _ip_in_allow_list
