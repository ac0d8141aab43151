"""Redis for tests: the project machines' server at 127.0.0.1:6379, with a key prefix of its own per test.

`NEXUS_TEST_REDIS_URL` points elsewhere. When Redis is unreachable the tests that need it fail under CI
(env CI=true) and are skipped elsewhere, like the PostgreSQL ones (tests/conftest_db.py).

Fixtures (import them into tests/conftest.py):
- `redis_url` (session): the server's URL, checked once.
- `redis_prefix` (function): a fresh prefix (`nexus-test-<random>:`); every key under it is deleted after the test.
"""
from __future__ import annotations

import os
import secrets
from typing import Iterator

import pytest

from tests.conftest_db import in_ci

REDIS_URL = os.environ.get("NEXUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_state: dict = {"checked": False, "error": None}


def redis_unavailable(reason: str) -> None:
    message = f"Redis not available at {REDIS_URL}: {reason}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not _state["checked"]:
        _state["checked"] = True
        try:
            import redis

            redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "absent"
            _state["error"] = f"{type(exc).__name__}: {exc}"
    if _state["error"]:
        redis_unavailable(_state["error"])
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"nexus-test-{secrets.token_hex(6)}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
