"""`claude-nexus-proxy keys create|list|show|update|revoke`: manage client keys in the server's own store.

It works on the store the server uses (USAGE_DB_PATH, or DATABASE_URL), while the server runs: servers
pick up every change within KEYS_REFRESH_INTERVAL. A bad flag value is one line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from . import rules
from .rules import RuleError

_UNSET = ("none", "off", "unlimited", "")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the usage too)
        print(f"claude-nexus-proxy keys: {message}", file=sys.stderr)
        raise SystemExit(2)


def _limit_flags(p: argparse.ArgumentParser, creating: bool) -> None:
    p.add_argument("--name", required=creating, help="who or what uses the key")
    p.add_argument("--team", help="a team label for reports")
    p.add_argument("--models", help="comma-separated model globs the key may use, e.g. 'claude-*sonnet*'")
    p.add_argument("--rpm", help="requests per minute")
    p.add_argument("--tpm", help="input + output tokens per minute")
    p.add_argument("--concurrency", help="requests in flight at once")
    p.add_argument("--budget", help="dollars per calendar day, week or month (UTC), e.g. 50/month")
    p.add_argument("--expires", help="a date (the key stops at 00:00 UTC that day) or time, e.g. 2027-01-31")
    p.add_argument("--domain", help="the only host the key may be used on")
    if not creating:
        p.epilog = "Give a limit the value 'none' to remove it."


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="claude-nexus-proxy keys", description="Manage client keys (limits, budgets, models).")
    parser.add_argument("-e", "--env-file", metavar="FILE", help="load environment from FILE instead of ./.env")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    create = sub.add_parser("create", help="create a key (printed once)")
    _limit_flags(create, creating=True)
    create.add_argument("--json", action="store_true")
    lst = sub.add_parser("list", help="list keys (never the keys themselves)")
    lst.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="a key's limits, usage and spend")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    update = sub.add_parser("update", help="change a key's limits")
    update.add_argument("id")
    _limit_flags(update, creating=False)
    update.add_argument("--json", action="store_true")
    revoke = sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("id")
    revoke.add_argument("--json", action="store_true")
    return parser


def changes_from(args: argparse.Namespace) -> dict:
    """The record fields the flags set; RuleError (one line) on a bad value."""
    out: dict = {}

    def take(flag: str, parse: Callable, *fields: str) -> None:
        value = getattr(args, flag, None)
        if value is None:
            return
        if not getattr(args, "_creating", False) and str(value).strip().lower() in _UNSET and flag != "name":
            for f in fields:
                out[f] = () if f == "models" else None
            return
        parsed = parse(value)
        if len(fields) == 1:
            out[fields[0]] = parsed
        else:
            out.update(zip(fields, parsed))

    take("name", lambda v: rules.parse_name("--name", v), "name")
    take("team", lambda v: rules.parse_name("--team", v), "team")
    take("models", rules.parse_models, "models")
    take("rpm", lambda v: rules.parse_positive_int("--rpm", v), "rpm")
    take("tpm", lambda v: rules.parse_positive_int("--tpm", v), "tpm")
    take("concurrency", lambda v: rules.parse_positive_int("--concurrency", v), "concurrency")
    take("budget", rules.parse_budget, "budget_usd", "budget_period")
    take("expires", rules.parse_expires, "expires_at")
    take("domain", rules.parse_domain, "domain")
    return out


def _limits_text(d: dict) -> str:
    parts = [f"{k}={d[k]}" for k in ("rpm", "tpm", "concurrency") if d.get(k)]
    if d.get("budget"):
        parts.append(f"budget={d['budget']}")
    if d.get("models"):
        parts.append("models=" + ",".join(d["models"]))
    if d.get("expires"):
        parts.append(f"expires={d['expires']}")
    if d.get("domain"):
        parts.append(f"domain={d['domain']}")
    return " ".join(parts) or "-"


def _table(keys) -> str:
    rows = [("ID", "NAME", "TEAM", "KEY", "STATUS", "LIMITS")]
    for k in keys:
        d = k.limits_dict()
        rows.append((d["id"], d["name"], d["team"] or "-", "..." + d["last4"],
                     "revoked" if d["revoked"] else "active", _limits_text(d)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(widths[i]) if i < 5 else c for i, c in enumerate(r)).rstrip() for r in rows)


def _open(env_file: str | None):
    from .service import ClientKeys
    from ..storage import open_storage
    from ..settings import Settings, load_env_files

    load_env_files(env_file)
    settings = Settings.from_env()
    storage = open_storage(settings)
    storage.migrate()
    return ClientKeys(settings, storage), storage


def main(argv: list[str]) -> int:
    from ..storage import StorageError
    from ..settings import SettingsError

    args = build_parser().parse_args(argv)
    args._creating = args.command == "create"
    try:
        changes = changes_from(args) if args.command in ("create", "update") else {}
    except RuleError as exc:
        print(f"claude-nexus-proxy keys: {exc}", file=sys.stderr)
        return 2
    try:
        service, storage = _open(args.env_file)
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"claude-nexus-proxy keys: the store cannot be opened: {exc}", file=sys.stderr)
        return 1
    try:
        return _run(args, changes, service)
    except StorageError as exc:
        print(f"claude-nexus-proxy keys: store error: {exc}", file=sys.stderr)
        return 1
    finally:
        storage.close()


def _run(args, changes: dict, service) -> int:
    store = service.store
    if args.command == "create":
        name = changes.pop("name")
        key, record = store.create(name, **changes)
        if args.json:
            print(json.dumps({"key": key, **record.limits_dict()}))
        else:
            print(f"Created key {record.id} for {record.name}. It is shown only now; store it safely:\n\n  {key}\n")
        return 0
    if args.command == "list":
        keys = store.all()
        print(json.dumps([k.limits_dict() for k in keys]) if args.json else _table(keys))
        return 0
    record = store.get(args.id)
    if record is None:
        print(f"claude-nexus-proxy keys: no key with id {args.id!r}", file=sys.stderr)
        return 1
    if args.command == "update":
        record = store.update(args.id, changes)
    elif args.command == "revoke":
        record = store.revoke(args.id)
    d = record.limits_dict()
    if args.command == "show":
        try:
            d["usage"] = service.usage(record)
        except Exception as exc:  # the rate-limit store may be down; limits and spend still show
            d["usage"] = {"error": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}
    if args.json:
        print(json.dumps(d))
        return 0
    verb = {"update": "Updated", "revoke": "Revoked", "show": "Key"}[args.command]
    print(f"{verb} {d['id']} ({d['name']}{', team ' + d['team'] if d['team'] else ''}), key ...{d['last4']},"
          f" {'revoked' if d['revoked'] else 'active'}")
    print(f"  limits: {_limits_text(d)}")
    usage = d.get("usage")
    if usage and "error" not in usage:
        print(f"  last minute: {usage['requestsLastMinute']} requests, {usage['tokensLastMinute']} tokens;"
              f" in flight: {usage['inFlight']}")
        print(f"  spent: today ${usage['spentDayUsd']:.4f}, this week ${usage['spentWeekUsd']:.4f},"
              f" this month ${usage['spentMonthUsd']:.4f}"
              + (f"; budget renews {usage['budgetRenews']}" if usage.get("budgetRenews") else ""))
    elif usage:
        print(f"  usage: unavailable ({usage['error']})")
    return 0
