"""The real services the integration suite relies on are reachable and usable."""

from __future__ import annotations

import sqlalchemy as sa


def test_fresh_postgres_database_is_empty_and_writable(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        tables = connection.execute(
            sa.text("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
        ).scalar_one()
        connection.execute(sa.text("CREATE TABLE probe (x int)"))
        connection.execute(sa.text("INSERT INTO probe VALUES (42)"))
        assert connection.execute(sa.text("SELECT x FROM probe")).scalar_one() == 42
    engine.dispose()
    assert tables == 0


def test_redis_round_trips_a_value(redis_url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    key = f"{namespace}:probe"
    client.set(key, b"\x00\xff", ex=30)
    assert client.get(key) == b"\x00\xff"
    client.delete(key)
