"""Signed audit checkpoints anchor the hash chain (issue 11, point 5).

The attack: whoever can write the database rewrites an entry and recomputes every later
hash, so the unkeyed chain verifies again. The checkpoints the coordinator signed with its
key (kept outside the database) and an expected head an auditor kept must catch it.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from coordinator import tasks
from coordinator.audit import checkpoints
from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction, AuditCheckpointRecord, AuditEntry
from coordinator.auth.models import Role
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from coordinator.signing import verify_signature
from federation.attestation import AUDIT_CHECKPOINT_DOMAIN, GENESIS_HASH

from .conftest import TEST_ACTOR, bearer


def _append(runtime: Runtime, count: int, start: int = 0) -> None:
    with runtime.db.scope() as session:
        for index in range(start, start + count):
            audit.record(
                session, TEST_ACTOR, AuditAction.FEDERATION_CREATED, f"federation:f{index}", {}
            )
        session.commit()


def _head(runtime: Runtime) -> str:
    with runtime.db.scope() as session:
        return audit.verify(session).head_hash


def _rewrite_from(runtime: Runtime, seq: int) -> None:
    """What a database writer can do to an unkeyed chain: change entry `seq` and recompute
    the hash of it and of every later entry, so that every link holds again."""
    with runtime.db.scope() as session:
        entries = list(
            session.scalars(
                sa.select(AuditEntry).where(AuditEntry.seq >= seq).order_by(AuditEntry.seq)
            )
        )
        previous = session.scalars(
            sa.select(AuditEntry.entry_hash).where(AuditEntry.seq == seq - 1)
        ).first()
        previous = previous or GENESIS_HASH
        # Free the unique hashes first, then write the new chain.
        for entry in entries:
            entry.prev_hash = f"{entry.seq:064x}"
            entry.entry_hash = f"{entry.seq + 10**9:064x}"
        session.flush()
        for entry in entries:
            if entry.seq == seq:
                entry.details = json.dumps({"rewritten": True}, separators=(",", ":"))
            entry.prev_hash = previous
            entry.entry_hash = audit.entry_hash(
                seq=entry.seq,
                recorded_at=entry.recorded_at,
                actor=entry.actor,
                action=str(entry.action),
                subject=entry.subject,
                details=entry.details,
                prev_hash=previous,
            )
            previous = entry.entry_hash
        session.commit()


def _verify(client: TestClient, headers: dict[str, str], expect_head: str | None = None) -> dict:  # type: ignore[type-arg]
    params = {} if expect_head is None else {"expect_head": expect_head}
    answer = client.get("/api/v1/audit/verify", headers=headers, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_a_history_rewritten_by_a_database_writer_fails_verification_with_the_anchor(
    runtime: Runtime, session: Session, settings: Settings, client: TestClient
) -> None:
    auditor = bearer(session, settings, Role.AUDITOR)
    _append(runtime, 5)
    assert tasks.tick(runtime).checkpoint == 1
    intact = _verify(client, auditor)
    assert intact["ok"], intact
    assert intact["checkpoints"] == 1
    assert intact["latest_checkpoint"]["head_hash"] == intact["head_hash"]
    _rewrite_from(runtime, 3)
    with runtime.db.scope() as check:
        assert audit.verify(check).ok  # the unkeyed chain alone no longer notices
    found = _verify(client, auditor)
    assert not found["ok"]
    assert "no longer has the hash checkpoint 1 signed" in found["reason"]


def test_verification_against_an_expected_head(
    runtime: Runtime, session: Session, settings: Settings, client: TestClient
) -> None:
    auditor = bearer(session, settings, Role.AUDITOR)
    _append(runtime, 4)
    seen = _head(runtime)
    _append(runtime, 2, start=4)  # the log grows: the head seen is still in it
    assert _verify(client, auditor, expect_head=seen)["ok"]
    _rewrite_from(runtime, 2)  # no checkpoint was signed yet: only the expected head tells
    found = _verify(client, auditor, expect_head=seen)
    assert not found["ok"]
    assert "is not in the audit log" in found["reason"]
    refused = client.get(
        "/api/v1/audit/verify", headers=auditor, params={"expect_head": "not-a-hash"}
    )
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")


def test_the_tick_signs_a_linked_checkpoint_when_the_log_grew_and_the_interval_passed(
    runtime: Runtime, settings: Settings
) -> None:
    runtime.settings = settings.model_copy(update={"audit_checkpoint_interval_s": 3600.0})
    assert tasks.sign_audit_checkpoint(runtime) is None  # nothing to sign yet
    _append(runtime, 2)
    assert tasks.sign_audit_checkpoint(runtime) == 1
    _append(runtime, 1, start=2)
    assert tasks.sign_audit_checkpoint(runtime) is None  # not an hour old yet
    runtime.settings = settings.model_copy(update={"audit_checkpoint_interval_s": 0.0})
    assert tasks.sign_audit_checkpoint(runtime) == 2
    assert tasks.sign_audit_checkpoint(runtime) is None  # the log did not grow
    with runtime.db.scope() as session:
        first, second = checkpoints.page(session)
    assert (first.audit_seq, second.audit_seq) == (2, 3)
    assert second.prev_checkpoint_hash == first.checkpoint_hash
    key = runtime.signing_key
    assert second.key_id == key.key_id
    assert verify_signature(
        key.public_key, AUDIT_CHECKPOINT_DOMAIN, second.payload(), second.signature
    )


def test_no_checkpoint_is_signed_over_a_rewritten_history(
    runtime: Runtime, settings: Settings
) -> None:
    runtime.settings = settings.model_copy(update={"audit_checkpoint_interval_s": 0.0})
    _append(runtime, 3)
    assert tasks.sign_audit_checkpoint(runtime) == 1
    _rewrite_from(runtime, 2)
    _append(runtime, 1, start=3)
    assert tasks.sign_audit_checkpoint(runtime) is None
    with runtime.db.scope() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(AuditCheckpointRecord)) == 1


def test_a_forged_checkpoint_is_named(
    runtime: Runtime, session: Session, settings: Settings, client: TestClient
) -> None:
    auditor = bearer(session, settings, Role.AUDITOR)
    _append(runtime, 3)
    assert tasks.tick(runtime).checkpoint == 1
    _rewrite_from(runtime, 2)
    with runtime.db.scope() as writer:  # the writer also "fixes" the checkpoint's head
        row = writer.get_one(AuditCheckpointRecord, 1)
        row.head_hash = audit.verify(writer).head_hash
        writer.commit()
    found = _verify(client, auditor)
    assert not found["ok"]
    assert "checkpoint 1 is not signed by the coordinator's key" in found["reason"]
