"""Real services for integration tests: PostgreSQL and Redis.

URLs come from FMTL_TEST_DATABASE_URL (a database we may create other databases from)
and FMTL_TEST_REDIS_URL. When a service is unreachable the tests that need it are
skipped with the reason, except under CI=true, where that is a failure: CI must run them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} is unreachable ({error})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {message}: integration tests must run in CI", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    import sqlalchemy as sa

    url = os.environ.get("FMTL_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    try:
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        _unavailable(f"PostgreSQL at {url}", exc)
    return url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A brand-new, empty PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = f"fmtl_test_{secrets.token_hex(6)}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    url = os.environ.get("FMTL_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:
        _unavailable(f"Redis at {url}", exc)
    return url


@pytest.fixture
def namespace() -> str:
    """A unique name for queues and keys, so concurrent test runs never share state."""
    return f"fmtl-test-{secrets.token_hex(4)}"
