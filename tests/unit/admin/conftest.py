"""The admin client is tested against the real coordinator app on SQLite (its fixtures)."""

from tests.unit.coordinator.conftest import (  # noqa: F401 - fixtures, re-exported
    admin,
    app,
    client,
    runtime,
    session,
    settings,
)
