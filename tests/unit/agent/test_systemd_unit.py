"""The systemd unit stays true to the agent: its command, its exit codes, its shutdown."""

from __future__ import annotations

import configparser
from pathlib import Path

from typer.testing import CliRunner

from agent.cli import EXIT_INPUT, app
from agent.config import DaemonSection

UNIT = Path(__file__).resolve().parents[3] / "deploy" / "systemd" / "fmtl-agent.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_exec_start_is_a_command_the_agent_has() -> None:
    service = _unit()["Service"]
    command = service["ExecStart"].split()
    assert command[1:4] == ["agent", "run", "--config"]
    help_text = CliRunner().invoke(app, ["run", "--help"]).stdout
    assert "--config" in help_text


def test_shutdown_and_restart_policy_match_the_daemon() -> None:
    service = _unit()["Service"]
    assert service["KillSignal"] == "SIGTERM"
    grace = DaemonSection().shutdown_grace_s
    assert float(service["TimeoutStopSec"]) > grace
    assert service["RestartPreventExitStatus"] == str(EXIT_INPUT)
    assert service["UMask"] == "0077"
    assert service["StateDirectoryMode"] == "0700"
    assert service["EnvironmentFile"].startswith("-")  # the passphrase file is optional
