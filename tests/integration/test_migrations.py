"""Migrations on PostgreSQL: an empty database upgraded to head is exactly the models' schema."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import migrations
from coordinator.schema import metadata


def _diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, metadata))


def test_upgrade_of_an_empty_database_matches_the_models_and_downgrade_works(
    postgres_url: str,
) -> None:
    engine = sa.create_engine(postgres_url)
    try:
        migrations.upgrade(postgres_url)
        assert migrations.current_revision(engine) == migrations.head_revision()
        assert _diff(engine) == []
        tables = set(sa.inspect(engine).get_table_names())
        assert tables == set(metadata.tables) | {"alembic_version"}

        migrations.downgrade(postgres_url, "base")
        assert sa.inspect(engine).get_table_names() == ["alembic_version"]
        assert migrations.current_revision(engine) is None

        migrations.upgrade(postgres_url)  # and back up again, cleanly
        assert _diff(engine) == []
    finally:
        engine.dispose()
