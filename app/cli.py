"""`claude-nexus-proxy`: serve the proxy with gunicorn + gevent, or run `oauth-login`."""
from __future__ import annotations

import argparse
import os
import sys

from .version import __version__

# The package is `app` in a checkout and `claude_nexus_proxy` when installed: gunicorn is pointed at
# this package's own modules, so the installed command works from any working directory.
PACKAGE = __package__ or "app"
CONFIG_MODULE = f"python:{PACKAGE}.gunicorn_conf"
WSGI_APP = f"{PACKAGE}.wsgi:app"

EPILOG = """\
commands:
  (none) | serve            run the proxy (gunicorn with gevent workers)
  oauth-login FILE [--create-api-key]
                            log in to Claude with OAuth and write a credential file
  keys create|list|show|update|revoke ...
                            manage client keys with limits and budgets (see keys --help)

A .env file in the working directory is loaded automatically; real environment variables win.
Examples:
  claude-nexus-proxy
  claude-nexus-proxy --port 8080 --env-file config/.env
  claude-nexus-proxy oauth-login credentials/team2.json --create-api-key
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="claude-nexus-proxy",
        description="Anthropic Messages API proxy: translation to OpenAI-compatible upstreams, or passthrough to Anthropic.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--version", action="version", version=f"claude-nexus-proxy {__version__}")
    parser.add_argument("-p", "--port", type=int, help="port to listen on (default: $PORT or 3000)")
    parser.add_argument("--host", help="interface to bind (default: $HOST or 0.0.0.0)")
    parser.add_argument("-e", "--env-file", metavar="FILE", help="load environment from FILE instead of ./.env")
    parser.add_argument("-w", "--workers", type=int, help="gunicorn worker processes (default: $WEB_CONCURRENCY or 1)")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"], help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "keys":
        from .keys.cli import main as keys_main

        return keys_main(argv[1:])
    if argv and argv[0] == "oauth-login":
        from .oauth_login import main as oauth_main
        from .settings import SettingsError, load_env_files

        try:
            load_env_files(None)  # OAUTH_TOKEN_URL / OAUTH_CLIENT_ID may come from ./.env
        except SettingsError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        return oauth_main(argv[1:])
    args = build_parser().parse_args(argv)
    from .settings import Settings, SettingsError, load_env_files

    try:
        load_env_files(args.env_file)
        overrides = {"PORT": args.port, "HOST": args.host, "WEB_CONCURRENCY": args.workers}
        for name, value in overrides.items():
            if value is not None:
                os.environ[name] = str(value)
        Settings.from_env()  # fail here, with one line and exit 2, rather than inside gunicorn
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    os.environ["NEXUS_ENV_LOADED"] = "1"
    return serve()


def serve() -> int:
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = ["claude-nexus-proxy", "-c", CONFIG_MODULE, "--chdir", os.getcwd(), WSGI_APP]
    WSGIApplication("%(prog)s [OPTIONS]").run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
