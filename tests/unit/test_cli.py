"""The `fmtl` entry point starts and explains itself."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from fmtl import __version__
from fmtl.cli import app


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


def test_module_entry_point_shows_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fmtl", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "version" in done.stdout
    assert "Traceback" not in done.stderr
