"""Embedded mode: `serve` alone runs tasks on an in-process worker with a tick loop."""

from __future__ import annotations

import time
from datetime import timedelta

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from coordinator.app import create_app
from coordinator.auth.models import SignatureNonce
from coordinator.db import utcnow
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from coordinator.worker import TICK_TASK

from .conftest import EnrolledAgent

DEADLINE_S = 20.0


def wait_for_expired_nonces_removed(runtime: Runtime) -> int:
    """Poll until the tick has removed every stored nonce; the number left at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    remaining = 1
    while time.monotonic() < deadline:
        with runtime.db.scope() as probe:
            remaining = probe.scalar(sa.select(sa.func.count()).select_from(SignatureNonce)) or 0
        if remaining == 0:
            break
        time.sleep(0.05)
    return remaining


def test_the_in_process_worker_runs_the_periodic_tick(
    settings: Settings, runtime: Runtime, session: Session, enrolled_agent: EnrolledAgent
) -> None:
    session.add(
        SignatureNonce(
            institution_id=enrolled_agent.institution.id,
            nonce="ab" * 16,
            expires_at=utcnow() - timedelta(seconds=1),
        )
    )
    session.commit()
    fast = settings.model_copy(update={"tick_interval_s": 0.2})
    with TestClient(create_app(fast)) as client:
        assert client.get("/readyz").json()["broker"] == "ok"
        remaining = wait_for_expired_nonces_removed(runtime)
    assert remaining == 0, "the tick never ran on the embedded worker"


def test_the_in_process_worker_runs_countdown_tasks(
    settings: Settings, runtime: Runtime, session: Session, enrolled_agent: EnrolledAgent
) -> None:
    """Stage deadlines are countdown tasks; Celery runs them on its timer thread."""
    session.add(
        SignatureNonce(
            institution_id=enrolled_agent.institution.id,
            nonce="cd" * 16,
            expires_at=utcnow() - timedelta(seconds=1),
        )
    )
    session.commit()
    slow_tick = settings.model_copy(update={"tick_interval_s": 3600.0})
    app = create_app(slow_tick)
    with TestClient(app) as client:
        assert client.get("/readyz").json()["broker"] == "ok"
        celery = app.state.celery
        celery.send_task(TICK_TASK, countdown=0.3)
        remaining = wait_for_expired_nonces_removed(runtime)
    assert remaining == 0, "a countdown task never ran on the embedded worker"
