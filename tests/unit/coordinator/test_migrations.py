"""Migrations on SQLite (PostgreSQL: tests/integration/test_migrations.py)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import migrations
from coordinator.db import create_db_engine
from coordinator.schema import metadata


def test_upgrading_an_empty_sqlite_database_gives_the_models_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    migrations.upgrade(url)
    engine = create_db_engine(url)
    with engine.connect() as connection:
        diff = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), metadata
        )
    assert diff == []
    assert migrations.current_revision(engine) == migrations.head_revision()
    migrations.downgrade(url, "base")
    assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    engine.dispose()


def test_the_script_location_is_inside_the_package() -> None:
    assert (migrations.SCRIPT_LOCATION / "env.py").is_file()
    assert migrations.SCRIPT_LOCATION.name == "migrations"
