#!/usr/bin/env bash
# The first run of a new user, in brand-new virtualenvs (see .ci/first_run.py): the README's first command,
# the Procfile's command and the installed `claude-nexus-proxy`, each answering GET /, one translated
# request, then exiting 0 on SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 .ci/first_run.py "$@"
