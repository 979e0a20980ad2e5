"""The demo's short child commands."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fmtl.demo.processes import ChildFailed, run_once


def test_a_command_past_its_time_is_one_line_naming_a_log_that_holds_its_output(
    tmp_path: Path,
) -> None:
    slow = (
        "import sys, time; sys.stderr.write('loading the data\\n'); sys.stderr.flush(); "
        "time.sleep(30)"
    )
    with pytest.raises(ChildFailed, match="did not finish in 2 s") as failed:
        run_once("slow", [sys.executable, "-c", slow], {}, tmp_path, timeout_s=2.0)
    log = tmp_path / "slow.log"
    assert str(log) in str(failed.value)
    assert "loading the data" in log.read_text()
