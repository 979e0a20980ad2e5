"""`fmtl coordinator ...`: bootstrap tokens, one-line errors, embedded vs production commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from coordinator.auth import service as tokens
from coordinator.auth.models import Role
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from fmtl.cli import app

from .conftest import PEPPER


def _env(settings: Settings) -> dict[str, str]:
    return {"FMTL_STATE_DIR": str(settings.state_dir), "FMTL_TOKEN_PEPPER": PEPPER}


def test_create_token_bootstraps_an_admin_and_prints_only_the_token_on_stdout(
    runtime: Runtime, settings: Settings, session: Session
) -> None:
    result = CliRunner().invoke(
        app,
        ["coordinator", "create-token", "--role", "admin", "--name", "first admin"],
        env=_env(settings),
    )
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert secret.startswith("fmtl_api_")
    assert "\n" not in secret
    assert "shown once" in result.stderr
    assert tokens.authenticate(session, settings.pepper, secret).role is Role.ADMIN


def test_create_token_on_a_fresh_embedded_state_dir_migrates_first(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["coordinator", "create-token", "--role", "auditor"],
        env={"FMTL_STATE_DIR": str(tmp_path / "new")},
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "coordinator.sqlite3").exists()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["worker"], {}, "needs a redis:// broker"),
        (["beat"], {}, "needs a redis:// broker"),
        (["migrate"], {"FMTL_DATABASE_URL": "mysql://db"}, "FMTL_DATABASE_URL"),
        (["create-token", "--role", "admin", "--name", "bad\nname"], {}, "invalid token name"),
        (
            ["audit-verify"],
            {"FMTL_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"},
            "database error",
        ),
    ],
)
def test_failures_are_one_readable_line_and_a_non_zero_status(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = CliRunner().invoke(
        app, ["coordinator", *args], env={"FMTL_STATE_DIR": str(tmp_path), **env}
    )
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert message in lines[0]


def test_production_processes_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["coordinator", "worker"],
        env={"FMTL_STATE_DIR": str(tmp_path), "FMTL_BROKER_URL": "redis://127.0.0.1:1/0"},
    )
    assert result.exit_code == 1
    assert "run `fmtl coordinator migrate` first" in result.stderr
