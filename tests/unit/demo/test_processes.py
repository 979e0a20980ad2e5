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


def test_the_demo_reads_each_rounds_local_work_from_the_agents_own_log_lines(
    tmp_path: Path,
) -> None:
    """The agent's real text formatter writes the lines; the demo finds round 2's, only."""
    import io
    import logging

    from agent.logging import TextFormatter, event
    from fmtl.demo.run import training_seconds

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    log = logging.getLogger("test.demo.training_seconds")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    event(log, "training_started", round=2, steps=3)
    event(log, "training_finished", round=1, steps=3, seconds=0.5, local_s=0.75)
    event(log, "training_finished", round=2, steps=3, seconds=1.0, local_s=1.5)
    event(log, "training_finished", round=12, steps=3, seconds=2.0, local_s=9.0)
    log.removeHandler(handler)
    path = tmp_path / "agent-cleveland.log"
    path.write_text(stream.getvalue())
    assert training_seconds(path, 2) == [1.5]
    assert training_seconds(path, 1) == [0.75]
    assert training_seconds(path, 3) == []
    assert training_seconds(tmp_path / "missing.log", 2) == []
