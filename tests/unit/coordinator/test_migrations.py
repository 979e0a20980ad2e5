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


def test_the_upgrade_drops_the_sizes_institutions_sent_in_earlier_rounds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    migrations.upgrade(url, "5c24a7ef1d96")
    engine = sa.create_engine(url)  # no foreign keys enforced: only task_metrics matters
    rows = [  # (institution_id, metric, n_samples)
        (7, "auc", 61),
        (7, "n", 61),
        (None, "auc", 185),
    ]
    with engine.begin() as connection:
        for number, (institution, metric, n) in enumerate(rows, start=1):
            connection.execute(
                sa.text(
                    "INSERT INTO task_metrics (id, round_id, task_id, institution_id, metric, "
                    "value, n_samples, recorded_at) VALUES (:id, 1, 1, :i, :m, 0.5, :n, "
                    "'2026-11-30 00:00:00')"
                ),
                {"id": number, "i": institution, "m": metric, "n": n},
            )
    migrations.upgrade(url)
    with engine.connect() as connection:
        kept = connection.execute(
            sa.text(
                "SELECT institution_id, metric, n_samples, institutions FROM task_metrics "
                "ORDER BY id"
            )
        ).all()
    assert [tuple(row) for row in kept] == [(7, "auc", None, None), (None, "auc", 185, None)]
    engine.dispose()
