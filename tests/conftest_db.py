"""PostgreSQL for tests: a fresh database per test run, a fresh schema per test. No mock database.

The server is the project machines' PostgreSQL (trust auth); `NEXUS_TEST_PG_URL` points elsewhere.
When it is unreachable, PostgreSQL tests fail under CI (env CI=true) and are skipped elsewhere.

Fixtures (import them into tests/conftest.py):
- `pg_database_url` (session): URL of a database created for this run (`nexus_test_<random>`), dropped at the end.
- `pg_url` (function): URL of that database with a fresh schema first on the search_path, dropped after
  the test. Give it to the proxy as DATABASE_URL: every process using it sees the same, empty, store.
"""
from __future__ import annotations

import atexit
import os
import secrets
import urllib.parse

import pytest

ADMIN_URL = os.environ.get("NEXUS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

_state: dict = {"url": None, "name": None, "error": None}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pg_unavailable(reason: str) -> None:
    """Fail under CI (the database is part of the test environment there), skip elsewhere."""
    message = f"PostgreSQL not available at {_redact(ADMIN_URL)}: {reason}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def _admin_connect(url: str = ADMIN_URL):
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=3)


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at another database (query string kept)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + dbname))


def with_schema(url: str, schema: str) -> str:
    """`url` whose sessions put `schema` first on the search_path (libpq `options`)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "options"] + [("options", f"-csearch_path={schema}")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def create_database(prefix: str = "nexus_test") -> str:
    """Create an empty database and return its URL (raises if the server is unreachable)."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with _admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(ADMIN_URL, name)


def drop_database(url: str) -> None:
    name = urllib.parse.urlsplit(url).path.lstrip("/")
    if not name.startswith("nexus_test"):
        raise ValueError(f"refusing to drop {name!r}: not a test database")
    with _admin_connect() as conn:
        # FORCE ends sessions a crashed test process left behind.
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _session_database() -> str:
    """One database per test process, created on first use (several fixture registrations share it)."""
    if _state["url"] is None and _state["error"] is None:
        try:
            _state["url"] = create_database()
            atexit.register(_drop_session_database)
        except Exception as exc:  # unreachable, auth refused, ...
            _state["error"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if _state["url"] is None:
        pg_unavailable(_state["error"])
    return _state["url"]


def _drop_session_database() -> None:
    url, _state["url"] = _state["url"], None
    if url:
        try:
            drop_database(url)
        except Exception:
            pass


@pytest.fixture(scope="session")
def pg_database_url():
    """A database created for this test run (dropped at the end)."""
    yield _session_database()
    _drop_session_database()


@pytest.fixture
def pg_url(pg_database_url):
    """A fresh, empty schema in the run's database, as a DATABASE_URL."""
    schema = f"t_{secrets.token_hex(6)}"
    with _admin_connect(pg_database_url) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield with_schema(pg_database_url, schema)
    try:
        with _admin_connect(pg_database_url) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except Exception:
        pass  # the database is dropped at the end of the run anyway
