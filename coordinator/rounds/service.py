"""Rounds: reads for the API, and the building blocks the round engine composes.

Reading functions (`list_rounds`, `get_round`, `overdue_rounds`) are used as they are.
`open_round` is a complete command and commits. The building blocks (`select_participants`,
`enter_stage`, `record_message`, `record_round_message`, `record_masked_update`,
`mark_dropped`) change state *in the caller's transaction* and never commit: the engine
combines them into one transaction per protocol step, so a step happens entirely or not at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.blobs.store import BlobRef
from coordinator.db import utcnow
from coordinator.errors import InvalidInput, NotFound, StateConflict
from coordinator.federations.models import Federation
from coordinator.federations.service import get_federation
from coordinator.institutions.models import EnrollmentState, Institution
from coordinator.rounds.events import mark_changed
from coordinator.rounds.models import (
    STAGE_ORDER,
    TERMINAL_STAGES,
    MaskedUpdate,
    Participant,
    ParticipantStatus,
    ProtocolMessageKind,
    ProtocolRecord,
    Round,
    RoundRecord,
    RoundRecordKind,
    RoundStage,
    RoundStageRecord,
)
from coordinator.rounds.state import subject


def list_rounds(session: Session, federation_name: str) -> list[Round]:
    federation = get_federation(session, federation_name)
    query = (
        sa.select(Round)
        .where(Round.federation_id == federation.id)
        .order_by(Round.number)
        .options(selectinload(Round.participants))
    )
    return list(session.scalars(query))


def get_round(session: Session, federation_name: str, number: int) -> Round:
    federation = get_federation(session, federation_name)
    query = (
        sa.select(Round)
        .where(Round.federation_id == federation.id, Round.number == number)
        .options(selectinload(Round.participants), selectinload(Round.stages))
    )
    found = session.scalars(query).first()
    if found is None:
        raise NotFound(f"federation '{federation_name}' has no round {number}")
    return found


def overdue_rounds(session: Session, now: datetime | None = None) -> list[Round]:
    """Open rounds whose current stage's deadline has passed (for the periodic tick)."""
    query = (
        sa.select(Round)
        .where(
            Round.stage.not_in(TERMINAL_STAGES),
            Round.stage_deadline.is_not(None),
            Round.stage_deadline < (now or utcnow()),
        )
        .order_by(Round.stage_deadline)
    )
    return list(session.scalars(query))


def open_round(
    session: Session,
    federation: Federation,
    *,
    actor: audit.Actor,
    scheduled_for: datetime | None = None,
    commit: bool = True,
) -> Round:
    """Create the federation's next round in stage SCHEDULED (one open round at a time).

    With `commit=False` the round stays in the caller's transaction, so that the engine can
    open it and select its participants atomically (no tick can see it half-made).
    """
    open_numbers = session.scalars(
        sa.select(Round.number).where(
            Round.federation_id == federation.id, Round.stage.not_in(TERMINAL_STAGES)
        )
    ).all()
    if open_numbers:
        raise StateConflict(
            f"federation '{federation.name}' already has round {open_numbers[0]} in progress"
        )
    last = session.scalar(
        sa.select(sa.func.max(Round.number)).where(Round.federation_id == federation.id)
    )
    created = Round(
        federation_id=federation.id,
        number=1 if last is None else last + 1,
        stage=RoundStage.SCHEDULED,
        scheduled_for=scheduled_for,
    )
    session.add(created)
    try:
        session.flush()
    except sa.exc.IntegrityError:  # a concurrent request opened the same round number
        session.rollback()
        raise StateConflict(f"federation '{federation.name}' is opening a round already") from None
    session.add(RoundStageRecord(round_id=created.id, stage=RoundStage.SCHEDULED))
    audit.record(
        session,
        actor,
        AuditAction.ROUND_CREATED,
        subject(federation, created),
        {"scheduled_for": None if scheduled_for is None else scheduled_for.isoformat()},
    )
    if commit:
        session.commit()
    return created


def select_participants(
    session: Session, round_: Round, institutions: Sequence[Institution], *, threshold: int
) -> list[Participant]:
    """Give each selected institution its secure-aggregation id 1..n and fix t."""
    selected = session.scalar(
        sa.select(sa.func.count()).select_from(Participant).where(Participant.round_id == round_.id)
    )
    if round_.stage is not RoundStage.SCHEDULED or selected:
        raise StateConflict(f"round {round_.number} already has its participants")
    if not 1 <= threshold <= len(institutions):
        raise InvalidInput(f"threshold {threshold} is not within 1..{len(institutions)}")
    for institution in institutions:
        if institution.state is not EnrollmentState.ENROLLED:
            raise InvalidInput(f"institution '{institution.name}' is not enrolled")
        if institution.federation_id != round_.federation_id:
            raise InvalidInput(f"institution '{institution.name}' is in another federation")
    participants = [
        Participant(round_id=round_.id, institution_id=institution.id, secagg_id=index)
        for index, institution in enumerate(institutions, start=1)
    ]
    round_.participants.extend(participants)
    round_.threshold = threshold
    session.flush()
    return participants


def enter_stage(
    session: Session,
    round_: Round,
    stage: RoundStage,
    *,
    actor: audit.Actor,
    deadline: datetime | None = None,
    responders: int | None = None,
    reason: str | None = None,
) -> None:
    """Close the current stage (with how many answered) and open `stage`, audited.

    Stages only move forward; FAILED may follow any open stage (with a `reason`).
    """
    current = round_.stage
    if current in TERMINAL_STAGES:
        raise StateConflict(f"round {round_.number} is already {current.value}")
    if stage is RoundStage.FAILED:
        if not reason:
            raise InvalidInput("a failed round needs a reason")
    elif STAGE_ORDER.index(stage) <= STAGE_ORDER.index(current):
        raise StateConflict(
            f"round {round_.number} cannot go from {current.value} back to {stage.value}"
        )
    now = utcnow()
    closing = session.scalars(
        sa.select(RoundStageRecord).where(
            RoundStageRecord.round_id == round_.id, RoundStageRecord.stage == current
        )
    ).first()
    if closing is not None:
        closing.closed_at = now
        closing.responders = responders
    session.add(RoundStageRecord(round_id=round_.id, stage=stage, opened_at=now, deadline=deadline))
    mark_changed(session, round_.federation_id)  # agents long-polling learn of it on commit
    round_.stage = stage
    round_.stage_deadline = deadline
    if current is RoundStage.SCHEDULED:
        round_.started_at = now
    if stage in TERMINAL_STAGES:
        round_.finished_at = now
        round_.failure_reason = reason
    federation = session.get_one(Federation, round_.federation_id)
    audit.record(
        session,
        actor,
        AuditAction.ROUND_STAGE_CHANGED,
        subject(federation, round_),
        {"from": current.value, "to": stage.value, "responders": responders, "reason": reason},
    )
    session.flush()


def mark_dropped(session: Session, participant: Participant, stage: RoundStage) -> None:
    """The participant missed `stage`'s deadline; it takes no further part."""
    participant.status = ParticipantStatus.DROPPED
    participant.dropped_at_stage = stage
    session.flush()


def record_message(
    session: Session, participant: Participant, kind: ProtocolMessageKind, body: bytes
) -> ProtocolRecord:
    """Store a participant's message; resending identical bytes is a no-op (idempotent)."""
    digest = hashlib.sha256(body).hexdigest()
    existing = session.scalars(
        sa.select(ProtocolRecord).where(
            ProtocolRecord.participant_id == participant.id, ProtocolRecord.kind == kind
        )
    ).first()
    if existing is not None:
        if existing.sha256 != digest:
            raise StateConflict(f"a different {kind.value} message was already received")
        return existing
    record = ProtocolRecord(participant_id=participant.id, kind=kind, body=body, sha256=digest)
    participant.last_seen_at = utcnow()
    session.add(record)
    session.flush()
    return record


def record_round_message(
    session: Session, round_: Round, kind: RoundRecordKind, body: bytes
) -> RoundRecord:
    """Store a message the coordinator derived for the round; stored once, never changed."""
    digest = hashlib.sha256(body).hexdigest()
    existing = session.scalars(
        sa.select(RoundRecord).where(RoundRecord.round_id == round_.id, RoundRecord.kind == kind)
    ).first()
    if existing is not None:
        if existing.sha256 != digest:
            raise StateConflict(f"round {round_.number} already has a different {kind.value}")
        return existing
    record = RoundRecord(round_id=round_.id, kind=kind, body=body, sha256=digest)
    session.add(record)
    session.flush()
    return record


def record_masked_update(session: Session, participant: Participant, blob: BlobRef) -> MaskedUpdate:
    """Reference a stored masked update; re-uploading the same bytes is a no-op."""
    existing = session.scalars(
        sa.select(MaskedUpdate).where(MaskedUpdate.participant_id == participant.id)
    ).first()
    if existing is not None:
        if existing.sha256 != blob.sha256:
            raise StateConflict("a different masked update was already received")
        return existing
    update = MaskedUpdate(
        participant_id=participant.id, blob_key=blob.key, sha256=blob.sha256, size_bytes=blob.size
    )
    participant.last_seen_at = utcnow()
    session.add(update)
    session.flush()
    return update
