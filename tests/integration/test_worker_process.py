"""Production path: a real `fmtl coordinator worker` process on PostgreSQL and Redis runs a
real task, whose effect lands in the database."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from coordinator.auth.models import SignatureNonce
from coordinator.db import Database, utcnow
from coordinator.worker import TICK_TASK, create_celery

from .conftest import AgentIdentity, CoordinatorEnv, WorkerProcess, wait_until


def test_worker_process_runs_the_tick_against_the_database(
    coordinator_env: CoordinatorEnv, celery_worker: WorkerProcess, agent_identity: AgentIdentity
) -> None:
    settings = coordinator_env.settings()
    database = Database(settings.resolved_database_url)
    institution_id = agent_identity.profile.institution_id
    with database.scope() as session:
        session.add_all(
            [
                SignatureNonce(
                    institution_id=institution_id,
                    nonce="0" * 32,
                    expires_at=utcnow() - timedelta(seconds=5),
                ),
                SignatureNonce(
                    institution_id=institution_id,
                    nonce="1" * 32,
                    expires_at=utcnow() + timedelta(hours=1),
                ),
            ]
        )
        session.commit()

    def nonces() -> set[str]:
        with database.scope() as session:
            return set(session.scalars(sa.select(SignatureNonce.nonce)))

    producer = create_celery(settings)
    try:
        producer.send_task(TICK_TASK)
        wait_until(lambda: "0" * 32 not in nonces(), 60, "the worker to purge the expired nonce")
        assert "1" * 32 in nonces()  # a nonce that can still be replayed is kept
    finally:
        producer.close()
        database.dispose()
    assert celery_worker.process.poll() is None
