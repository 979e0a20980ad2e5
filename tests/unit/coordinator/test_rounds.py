"""Round building blocks: numbering, selection, forward-only stages, idempotent records, tick."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction, AuditEntry
from coordinator.blobs.store import BlobRef
from coordinator.db import utcnow
from coordinator.errors import InvalidInput, StateConflict
from coordinator.federations.models import Federation
from coordinator.rounds import service
from coordinator.rounds.models import ProtocolMessageKind, RoundRecordKind, RoundStage
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from coordinator.tasks import tick

from .conftest import TEST_ACTOR, EnrolledAgent, enroll_agent


def test_rounds_are_numbered_and_one_is_open_at_a_time(
    session: Session, federation: Federation
) -> None:
    first = service.open_round(session, federation, actor=TEST_ACTOR)
    assert first.number == 1
    assert first.stage is RoundStage.SCHEDULED
    with pytest.raises(StateConflict, match="round 1 in progress"):
        service.open_round(session, federation, actor=TEST_ACTOR)
    service.enter_stage(session, first, RoundStage.FAILED, actor=TEST_ACTOR, reason="test")
    session.commit()
    assert service.open_round(session, federation, actor=TEST_ACTOR).number == 2


def test_stages_only_move_forward_and_every_change_is_audited(
    session: Session, federation: Federation
) -> None:
    round_ = service.open_round(session, federation, actor=TEST_ACTOR)
    deadline = utcnow() + timedelta(minutes=5)
    service.enter_stage(
        session, round_, RoundStage.ADVERTISE_KEYS, actor=TEST_ACTOR, deadline=deadline
    )
    service.enter_stage(
        session, round_, RoundStage.SHARE_KEYS, actor=TEST_ACTOR, deadline=deadline, responders=3
    )
    with pytest.raises(StateConflict, match="back to advertise_keys"):
        service.enter_stage(session, round_, RoundStage.ADVERTISE_KEYS, actor=TEST_ACTOR)
    with pytest.raises(InvalidInput, match="reason"):
        service.enter_stage(session, round_, RoundStage.FAILED, actor=TEST_ACTOR)
    service.enter_stage(session, round_, RoundStage.FAILED, actor=TEST_ACTOR, reason="below t")
    session.commit()
    with pytest.raises(StateConflict, match="already failed"):
        service.enter_stage(session, round_, RoundStage.UNMASKING, actor=TEST_ACTOR)
    stored = service.get_round(session, "heart", 1)
    assert [record.stage for record in stored.stages] == [
        RoundStage.SCHEDULED,
        RoundStage.ADVERTISE_KEYS,
        RoundStage.SHARE_KEYS,
        RoundStage.FAILED,
    ]
    assert stored.stages[1].responders == 3
    assert stored.stages[1].closed_at is not None
    assert stored.failure_reason == "below t"
    assert stored.finished_at is not None
    changes = session.scalars(
        sa.select(AuditEntry).where(AuditEntry.action == AuditAction.ROUND_STAGE_CHANGED)
    ).all()
    assert len(changes) == 3
    assert audit.verify(session).ok


def test_participants_get_secagg_ids_one_to_n(
    session: Session, settings: Settings, federation: Federation, enrolled_agent: EnrolledAgent
) -> None:
    other = enroll_agent(session, settings, "heart", "hungarian", ("disease",))
    round_ = service.open_round(session, federation, actor=TEST_ACTOR)
    participants = service.select_participants(
        session, round_, [enrolled_agent.institution, other.institution], threshold=2
    )
    assert [p.secagg_id for p in participants] == [1, 2]
    assert round_.threshold == 2
    with pytest.raises(StateConflict):
        service.select_participants(session, round_, [other.institution], threshold=1)


def test_protocol_records_are_idempotent_and_never_overwritten(
    session: Session, federation: Federation, enrolled_agent: EnrolledAgent
) -> None:
    round_ = service.open_round(session, federation, actor=TEST_ACTOR)
    (participant,) = service.select_participants(
        session, round_, [enrolled_agent.institution], threshold=1
    )
    first = service.record_message(
        session, participant, ProtocolMessageKind.ADVERTISE_KEYS, b"\x01keys"
    )
    again = service.record_message(
        session, participant, ProtocolMessageKind.ADVERTISE_KEYS, b"\x01keys"
    )
    assert again.id == first.id
    with pytest.raises(StateConflict):
        service.record_message(
            session, participant, ProtocolMessageKind.ADVERTISE_KEYS, b"\x02other"
        )
    service.record_round_message(session, round_, RoundRecordKind.SURVIVOR_SET, b"\x00\x01")
    with pytest.raises(StateConflict):
        service.record_round_message(session, round_, RoundRecordKind.SURVIVOR_SET, b"\x00\x02")
    blob = BlobRef(key="masked/1/1.bin", size=8, sha256="ab" * 32)
    assert service.record_masked_update(session, participant, blob).size_bytes == 8
    with pytest.raises(StateConflict):
        service.record_masked_update(session, participant, BlobRef(blob.key, 8, "cd" * 32))


def test_tick_finds_overdue_rounds_and_purges_dead_nonces(
    runtime: Runtime, session: Session, federation: Federation
) -> None:
    round_ = service.open_round(session, federation, actor=TEST_ACTOR)
    service.enter_stage(
        session,
        round_,
        RoundStage.ADVERTISE_KEYS,
        actor=TEST_ACTOR,
        deadline=utcnow() - timedelta(seconds=1),
    )
    session.commit()
    report = tick(runtime)
    assert report.overdue_rounds == (round_.id,)
    assert report.nonces_purged == 0
