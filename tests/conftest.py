"""Fixtures shared by the whole suite: a fresh PostgreSQL database per run, the fake upstreams."""
from tests.conftest_db import pg_database_url, pg_url  # noqa: F401
from tests.fakes.server import fake_upstream, fake_upstream_server  # noqa: F401
from tests.conftest_redis import redis_prefix, redis_url  # noqa: F401,E402
