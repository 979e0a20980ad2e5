"""Concurrent appends to the audit log on PostgreSQL keep one unbroken chain."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.db import Database

WRITERS = 8
ENTRIES_EACH = 10


def test_concurrent_writers_all_succeed_and_the_chain_verifies(migrated_postgres_url: str) -> None:
    database = Database(migrated_postgres_url)

    def write(writer: int) -> None:
        for index in range(ENTRIES_EACH):
            with database.scope() as session:
                audit.record(
                    session,
                    audit.Actor(audit.ActorKind.SYSTEM, f"writer-{writer}"),
                    AuditAction.ROUND_STAGE_CHANGED,
                    f"round:test/{writer}",
                    {"index": index},
                )
                session.commit()

    try:
        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(write, range(WRITERS)))  # re-raises any writer's error
        with database.scope() as session:
            result = audit.verify(session)
            seqs = [entry.seq for entry in audit.list_entries(session, limit=1000)]
    finally:
        database.dispose()
    assert result.ok, result.reason
    assert result.entries == WRITERS * ENTRIES_EACH
    assert seqs == list(range(1, WRITERS * ENTRIES_EACH + 1))
