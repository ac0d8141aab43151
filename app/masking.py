"""The one place that hides secrets: logs, errors, health output, telemetry and Slack all go through it.

Rules (pure functions, no I/O; cheap enough for the access log of every request):

- `mask_secret(value)`: a credential shown for recognition only.
  * Shorter than 12 characters -> ``****`` (nothing recognisable is left to reveal).
  * ``Bearer <token>`` / ``Basic <x>`` -> ``Bearer ****`` (the scheme word stays, the token never shows).
  * A known non-secret prefix is kept (``sk-ant-api03-``, ``sk-ant-oat01-``, ``sk-ant-ort01-``,
    ``sk-ant-``, ``sk-or-v1-``, ``sk-proj-``, ``sk-``, ``github_pat_``, ``ghp_``/``gho_``/…, ``xoxb-``…).
  * The last 4 characters are shown only when at least 20 characters follow the prefix, so at least
    16 unknown characters always stay hidden: ``sk-ant-api03-…(95 chars)`` -> ``sk-ant-api03-...wxyz``;
    a short test key ``sk-ant-api03-team1-key`` -> ``sk-ant-api03-****``.
- `mask_key_tail(value)`: the product's ``...last10chars`` display (Slack ``API Key:`` line):
  ``"..." + last N`` with ``N = min(10, len // 5)``, so a 108-character Anthropic key shows 10 characters
  (98 stay hidden) and a 20-character secret shows 4; under 12 characters -> ``****``.
- Both are idempotent: a value that is already masked (a short prefix, ``...`` or ``****``, at most
  10 trailing characters) is returned unchanged, so layers may mask defensively.
- `mask_headers`: ``authorization``/``proxy-authorization`` -> ``<scheme> ****``; ``x-api-key`` ->
  `mask_secret`; ``cookie``/``set-cookie`` -> ``****``; any header whose name contains ``key``, ``token``,
  ``secret``, ``auth``, ``password``, ``cookie`` or ``session-token`` -> `mask_secret`; other values go through `mask_text`.
- `mask_json`: a copy where every dict key that names a secret (``api_key``, ``apiKey``, ``x-api-key``,
  ``token``, ``access_token``/``accessToken``, ``refresh_token``/``refreshToken``, ``id_token``,
  ``secret``, ``client_secret``, ``password``, ``authorization``, ``cookie``, and any name containing
  ``secret``, ``password``, ``apikey`` or ``token``) has its value replaced by ``****`` at any depth.
  Usage counters are *not* secrets: a name containing ``tokens`` (``input_tokens``, ``max_tokens``,
  ``budget_tokens``, ``inputTokens``, ``prompt_tokens_details``…), ending in ``count``/``limit``/``type``,
  or any number/bool under a ``token`` name is kept. All strings also go through `mask_text`.
- `mask_text`: free text; ``sk-ant-…``, ``sk-or-v1-…``, ``sk-…`` (20+ chars), GitHub (``ghp_``, ``gho_``,
  ``ghu_``, ``ghs_``, ``ghr_``, ``github_pat_``) and Slack (``xox?-``) tokens -> their `mask_secret` form;
  ``Bearer <token>`` -> ``Bearer ****``; Slack webhook paths -> ``https://hooks.slack.com/services/****``;
  ``api_key=…`` / ``"password": "…"``-style pairs -> ``****``; and every secret given to `register_secret`
  (env keys, credential-file keys and OAuth tokens) wherever it occurs, whatever it looks like.
"""
from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any, Iterable, Mapping

STARS = "****"
_MIN_LEN = 12  # shorter secrets reveal nothing at all
_TAIL = 4
_MIN_HIDDEN_FOR_TAIL = 20

# Non-secret prefixes that say which kind of credential it is. Longest alternatives first.
_PREFIX_RE = re.compile(
    r"sk-ant-[a-z]{2,6}\d{2}-|sk-ant-|sk-or-v\d+-|sk-proj-|sk-svcacct-|sk-|github_pat_|gh[pousr]_|xox[abpre]-"
)
_SCHEME_RE = re.compile(r"(?i)(bearer|basic|token)\s+")
# What a masked value looks like: [scheme ]prefix(<=16) + ("..." | "****") + tail(<=10).
_MASKED_RE = re.compile(r"(?:[A-Za-z]+ )?[A-Za-z0-9_-]{0,16}(?:\.\.\.|\*{4,})[A-Za-z0-9_-]{0,10}")


def is_masked(value: str) -> bool:
    """True when `value` is already in a masked form (so masking it again changes nothing)."""
    return _MASKED_RE.fullmatch(value) is not None


def mask_secret(value: str | None) -> str:
    """A credential reduced to a known prefix and at most 4 trailing characters (see module doc)."""
    if not value:
        return ""
    value = str(value).strip()
    if is_masked(value):
        return value
    scheme = _SCHEME_RE.match(value)
    if scheme:
        return scheme.group(1).capitalize() + " " + STARS
    if len(value) < _MIN_LEN:
        return STARS
    m = _PREFIX_RE.match(value)
    prefix = m.group(0) if m else ""
    body = len(value) - len(prefix)
    if body >= _MIN_HIDDEN_FOR_TAIL:
        return prefix + "..." + value[-_TAIL:]
    return prefix + STARS


def mask_key_tail(value: str | None) -> str:
    """The product's ``...last10chars`` display: ``"..." + last min(10, len // 5)`` characters."""
    if not value:
        return STARS
    value = str(value).strip()
    if is_masked(value):
        return value
    scheme = _SCHEME_RE.match(value)
    if scheme:
        value = value[scheme.end():]
    if len(value) < _MIN_LEN:
        return STARS
    return "..." + value[-min(10, len(value) // 5):]


# ---------------------------------------------------------------- headers

_HEADER_NAME_HINTS = ("key", "token", "secret", "auth", "password", "cookie")


@lru_cache(maxsize=512)
def _header_rule(name: str) -> str:
    n = name.lower()
    if n in ("authorization", "proxy-authorization"):
        return "scheme"
    if n in ("cookie", "set-cookie"):
        return "stars"
    if any(h in n for h in _HEADER_NAME_HINTS):
        return "secret"
    return "text"


def _mask_auth_value(value: str) -> str:
    scheme = _SCHEME_RE.match(value)
    if scheme:
        return scheme.group(1).capitalize() + " " + STARS
    if " " in value.strip():
        return value.strip().split(" ", 1)[0] + " " + STARS
    return STARS


def mask_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> dict:
    """A plain dict of the headers with credentials masked (names keep their spelling)."""
    if headers is None:
        return {}
    items = headers.items() if hasattr(headers, "items") else headers
    out: dict = {}
    for name, value in items:
        if not isinstance(value, str):
            out[name] = value
            continue
        rule = _header_rule(str(name))
        if rule == "scheme":
            out[name] = _mask_auth_value(value)
        elif rule == "stars":
            out[name] = STARS
        elif rule == "secret":
            out[name] = mask_secret(value) if value else value
        else:
            out[name] = mask_text(value)
    return out


# ---------------------------------------------------------------- JSON

_NOT_SECRET, _SECRET, _TOKENISH = 0, 1, 2
_SECRET_NAMES = frozenset({
    "apikey", "xapikey", "token", "accesstoken", "refreshtoken", "idtoken", "secret", "clientsecret",
    "password", "passwd", "authorization", "proxyauthorization", "cookie", "setcookie", "privatekey",
    "secretkey", "accesskey", "auth", "credential", "webhookurl",
})


@lru_cache(maxsize=4096)
def _key_kind(name: str) -> int:
    n = name.lower().replace("-", "").replace("_", "")
    if n in _SECRET_NAMES:
        return _TOKENISH if n in ("token", "accesstoken", "refreshtoken", "idtoken") else _SECRET
    if "secret" in n or "password" in n or "passwd" in n or "apikey" in n or "authorization" in n:
        return _SECRET
    if "token" in n:
        # Usage counters and limits ("input_tokens", "max_tokens", "budget_tokens", "tokenCount") are not secrets.
        if "tokens" in n or n.endswith(("count", "limit", "type", "usage")):
            return _NOT_SECRET
        return _TOKENISH
    return _NOT_SECRET


def _cut(text: str, max_str: int | None) -> str:
    if max_str is not None and len(text) > max_str:
        return f"{text[:max_str]}... ({len(text)} chars)"
    return text


def mask_json(obj: Any, max_str: int | None = None) -> Any:
    """A masked copy of a JSON-like value (dicts, lists, strings at any depth; see module doc).

    `max_str` also cuts long strings (after masking, so a cut never leaves half a secret visible).
    """
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            kind = _key_kind(k) if isinstance(k, str) else _NOT_SECRET
            if kind and v is not None and v != "" and not (
                kind == _TOKENISH and isinstance(v, (int, float, bool))
            ):
                out[k] = STARS
            else:
                out[k] = mask_json(v, max_str)
        return out
    if isinstance(obj, (list, tuple)):
        return [mask_json(v, max_str) for v in obj]
    if isinstance(obj, str):
        return _cut(mask_text(obj), max_str)
    return obj


# ---------------------------------------------------------------- free text

_KV_NAMES = (
    r"x-api-key|api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|id[_-]?token|auth[_-]?token"
    r"|client[_-]?secret|secret|password|passwd|token"
)
_TEXT_RE = re.compile(
    # Bearer/Basic <token>: the scheme stays.
    r"(?P<scheme>\b(?i:bearer|basic)\s+)(?P<stok>[A-Za-z0-9._~+/=-]{8,})"
    # Recognisable key formats.
    r"|(?P<key>\b(?:sk-ant-[A-Za-z0-9_-]+|sk-or-v\d+-[A-Za-z0-9]+|sk-[A-Za-z0-9_-]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abpre]-[A-Za-z0-9-]{10,}))"
    # user:password@ in a URL (DATABASE_URL, proxies): the password goes.
    r"|(?P<uinfo>\b[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]+:)(?P<upw>[^/@\s]+)(?=@)"
    # Slack webhook URLs carry their secret in the path.
    r"|(?P<slack>hooks\.slack\.com/(?:services|workflows|triggers)/)(?P<spath>[A-Za-z0-9/_-]{4,})"
    # name: "value" / name=value pairs (JSON text, form bodies, query strings, reprs).
    r"|(?P<kvq>(?<![A-Za-z0-9_])(?i:" + _KV_NAMES + r")\\?[\"']?\s*[:=]\s*(?P<q>\\?[\"']))"
    r"(?P<qval>(?:(?!(?P=q)).){1,2000}?)(?P=q)"
    r"|(?P<kv>(?<![A-Za-z0-9_])(?i:" + _KV_NAMES + r")\s*[:=]\s*)(?!(?i:bearer|basic)\s)"
    r"(?P<val>[^\s\"',;&}\]\\]{4,})"
)


def _mask_value(value: str) -> str:
    if is_masked(value):
        return value
    if _SCHEME_RE.match(value):
        return _mask_auth_value(value)
    if _PREFIX_RE.match(value):
        return mask_secret(value)
    return STARS


def _text_sub(m: re.Match) -> str:
    group = m.lastgroup
    if group == "stok":
        return m.group("scheme") + STARS
    if group == "key":
        key = m.group("key")
        pm = _PREFIX_RE.match(key)
        if pm and pm.end() == len(key):  # only a prefix, e.g. the start of an already-masked "sk-ant-****"
            return key
        return mask_secret(key)
    if group == "spath":
        return m.group("slack") + STARS
    if group == "upw":
        return m.group("uinfo") + STARS
    if m.group("kvq") is not None:
        return m.group("kvq") + _mask_value(m.group("qval")) + m.group("q")
    return m.group("kv") + _mask_value(m.group("val"))


# Registered secrets: one alternation regex, rebuilt (and swapped in atomically) on registration.
_registered: dict[str, None] = {}  # insertion-ordered set
_registered_re: re.Pattern | None = None
_registered_lock = threading.Lock()
_MAX_REGISTERED = 2000  # refreshed OAuth tokens accumulate; the oldest are long expired
_MIN_REGISTERED_LEN = 8  # shorter strings would mask ordinary words


def register_secret(value: str | None) -> None:
    """Mask `value` wherever it appears in text from now on (call for every key/token loaded or refreshed)."""
    global _registered_re
    if not value or not isinstance(value, str):
        return
    value = value.strip()
    if len(value) < _MIN_REGISTERED_LEN or value in _registered:
        return
    with _registered_lock:
        _registered[value] = None
        while len(_registered) > _MAX_REGISTERED:
            del _registered[next(iter(_registered))]
        # Longest first, so a secret that contains another is replaced whole.
        alternation = "|".join(re.escape(s) for s in sorted(_registered, key=len, reverse=True))
        _registered_re = re.compile(alternation)


def clear_registered_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _registered_re
    with _registered_lock:
        _registered.clear()
        _registered_re = None


def _registered_sub(m: re.Match) -> str:
    return mask_secret(m.group(0))


# Every _TEXT_RE match contains one of these (lower-cased); checking them first is ~10x cheaper than
# scanning, and most log lines (the access line included) contain none.
_TRIGGERS = ("sk-", "bearer", "basic", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox",
             "hooks.slack", "key", "token", "secret", "passw", "://")


def mask_text(text: str) -> str:
    """Free text with every recognisable or registered secret masked (see module doc)."""
    if not text:
        return text
    pattern = _registered_re
    if pattern is not None:
        text = pattern.sub(_registered_sub, text)
    low = text.lower()
    for trigger in _TRIGGERS:
        if trigger in low:
            return _TEXT_RE.sub(_text_sub, text)
    return text


def mask_url(url: str | None) -> str:
    """A URL fit to show (start-up banner): any user-info becomes ``****``, secret-looking query values too.

    Some upstreams take their key in the URL (``https://user:key@host``, ``https://key@host``,
    ``?api_key=…``); the host, port and path stay readable.
    """
    if not url:
        return ""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = STARS + "@" + netloc.rsplit("@", 1)[1]
    return mask_text(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
