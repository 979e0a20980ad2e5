"""The audit log is a hash chain: every change is recorded, and tampering is found and named."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from coordinator.audit import service as audit
from coordinator.audit.models import GENESIS_HASH, AuditAction, AuditEntry
from coordinator.cli import app as cli
from coordinator.runtime import Runtime
from coordinator.settings import Settings

from .conftest import PEPPER, TEST_ACTOR


def _append(session: Session, count: int) -> None:
    for index in range(count):
        audit.record(
            session,
            TEST_ACTOR,
            AuditAction.FEDERATION_CREATED,
            f"federation:f{index}",
            {"i": index},
        )
    session.commit()


def test_entries_chain_each_to_the_previous_hash(session: Session) -> None:
    _append(session, 3)
    entries = audit.list_entries(session)
    assert [entry.seq for entry in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS_HASH
    assert entries[1].prev_hash == entries[0].entry_hash
    assert entries[2].prev_hash == entries[1].entry_hash
    result = audit.verify(session)
    assert result.ok
    assert result.entries == 3
    assert result.head_hash == entries[2].entry_hash


def test_an_empty_log_verifies(session: Session) -> None:
    result = audit.verify(session)
    assert result.ok
    assert result.entries == 0
    assert result.head_hash == GENESIS_HASH


def test_entry_is_written_only_with_its_state_change(session: Session) -> None:
    audit.record(session, TEST_ACTOR, AuditAction.TOKEN_CREATED, "token:1", {})
    session.rollback()
    assert audit.list_entries(session) == []


def test_altered_details_are_detected_at_that_entry(session: Session) -> None:
    _append(session, 4)
    session.execute(sa.update(AuditEntry).where(AuditEntry.seq == 2).values(details='{"i":99}'))
    session.commit()
    result = audit.verify(session)
    assert not result.ok
    assert result.first_broken_seq == 2
    assert result.entries == 1
    assert "altered" in (result.reason or "")


def test_rehashed_entry_breaks_the_next_link(session: Session) -> None:
    _append(session, 3)
    entry = session.get_one(AuditEntry, 2)
    entry.actor = "token:666"
    entry.entry_hash = audit.entry_hash(
        seq=entry.seq,
        recorded_at=entry.recorded_at,
        actor=entry.actor,
        action=entry.action.value,
        subject=entry.subject,
        details=entry.details,
        prev_hash=entry.prev_hash,
    )
    session.commit()
    result = audit.verify(session)
    assert result.first_broken_seq == 3
    assert "does not link" in (result.reason or "")


def test_deleted_entry_is_named(session: Session) -> None:
    _append(session, 4)
    session.execute(sa.delete(AuditEntry).where(AuditEntry.seq == 3))
    session.commit()
    result = audit.verify(session)
    assert result.first_broken_seq == 3
    assert "missing" in (result.reason or "")


def test_an_action_overwritten_with_garbage_is_reported_not_crashed_on(session: Session) -> None:
    _append(session, 2)
    session.execute(sa.text("UPDATE audit_log SET action = 'nothing.happened' WHERE seq = 1"))
    session.commit()
    result = audit.verify(session)
    assert result.first_broken_seq == 1


def test_cli_audit_verify_names_the_first_broken_entry(
    runtime: Runtime, settings: Settings, session: Session
) -> None:
    env = {"FMTL_STATE_DIR": str(settings.state_dir), "FMTL_TOKEN_PEPPER": PEPPER}
    _append(session, 3)
    intact = CliRunner().invoke(cli, ["audit-verify"], env=env)
    assert intact.exit_code == 0, intact.output
    assert "3 entries" in intact.stdout
    session.execute(sa.update(AuditEntry).where(AuditEntry.seq == 2).values(subject="x"))
    session.commit()
    broken = CliRunner().invoke(cli, ["audit-verify"], env=env)
    assert broken.exit_code == 3
    assert "entry 2" in broken.stderr
    assert "Traceback" not in broken.output


def test_concurrent_writers_on_sqlite_keep_one_chain(runtime: Runtime) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def write(writer: int) -> None:
        for index in range(5):
            with runtime.db.scope() as session:
                audit.record(
                    session, TEST_ACTOR, AuditAction.SPEND_RECORDED, f"w{writer}", {"i": index}
                )
                session.commit()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    with runtime.db.scope() as session:
        result = audit.verify(session)
    assert result.ok
    assert result.entries == 20
