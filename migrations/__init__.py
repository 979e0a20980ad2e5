"""The coordinator's schema migrations (Alembic), packaged with the code.

The script location is this package's folder, so `fmtl coordinator migrate` works from an
installed wheel as well as from a checkout. Revisions are generated with
`alembic -c migrations/alembic.ini revision --autogenerate -m "..."`, then read and edited
by a person; a test checks that upgrading an empty database yields exactly the models' schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

SCRIPT_LOCATION: Final = Path(__file__).resolve().parent


def alembic_config(url: str, connection: sa.Connection | None = None) -> Config:
    """An Alembic config for `url` (or an open connection), independent of any ini file."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "the migrations folder has no revision"
    return head


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
