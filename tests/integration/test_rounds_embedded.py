"""The embedded default: `fmtl coordinator serve` alone (SQLite file, blob folder, Celery tasks
on an in-process worker thread) runs a complete round for agents speaking signed HTTP."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from .conftest import CoordinatorEnv, CoordinatorServer, _stop
from .test_rounds import (
    assert_aggregate,
    completed,
    drive,
    make_federation,
    participants,
    spec_document,
    start_round,
    start_server,
)


def test_the_embedded_coordinator_runs_a_complete_round(tmp_path: Path) -> None:
    state_dir = tmp_path / "embedded"
    env = CoordinatorEnv(
        variables={
            "FMTL_STATE_DIR": str(state_dir),
            "FMTL_TOKEN_PEPPER": secrets.token_urlsafe(32),
            "FMTL_LOG_LEVEL": "warning",
            "FMTL_UNMASK_SLICE_COORDINATES": "1024",
            "FMTL_WORK_POLL_INTERVAL_S": "0.2",
        },
        state_dir=state_dir,
    )
    url, process = start_server(env, tmp_path / "serve.log")
    try:
        made = env.cli("create-token", "--role", "admin", "--name", "embedded")
        assert made.returncode == 0, made.stderr
        server = CoordinatorServer(url=url, env=env, process=process, log=tmp_path / "serve.log")
        federation = make_federation(server, made.stdout.strip(), spec_document("embedded"), 3)
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        parts = participants(url, federation)
        number = start_round(url, federation)["number"]
        done = drive(url, federation, parts, number, completed, "the embedded round to complete")
        assert done["stage"] == "completed", done["failure_reason"]
        assert_aggregate(url, federation, federation.works)
        assert (state_dir / "coordinator.sqlite3").exists()
    finally:
        _stop(process)
