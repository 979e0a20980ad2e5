"""Rounds with their stages, participant counts and dropouts, a page at a time."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.console.queries.paging import (
    ROUNDS_PER_PAGE,
    Page,
    count_rows,
    page_of,
)
from coordinator.federations.models import Federation
from coordinator.institutions.models import Institution
from coordinator.rounds.models import (
    TERMINAL_STAGES,
    Participant,
    ParticipantStatus,
    Round,
    RoundStage,
    RoundStageRecord,
)


@dataclass(frozen=True)
class StageLine:
    stage: str
    opened_at: datetime
    deadline: datetime | None
    closed_at: datetime | None
    responders: int | None

    @property
    def duration_s(self) -> float | None:
        if self.closed_at is None:
            return None
        return (self.closed_at - self.opened_at).total_seconds()


@dataclass(frozen=True)
class RoundLine:
    number: int
    stage: str
    threshold: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    failure_reason: str | None
    counts: dict[str, int]
    stages: list[StageLine] = field(default_factory=list)
    dropouts: list[str] = field(default_factory=list)

    @property
    def participants(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> bool:
        return RoundStage(self.stage) in TERMINAL_STAGES

    @property
    def wall_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


def _roundcount_rows(session: Session, federation: Federation) -> int:
    return count_rows(session, Round, Round.federation_id == federation.id)


def round_lines(
    session: Session, federation: Federation, page: int
) -> tuple[Page, list[RoundLine]]:
    """A page of rounds, newest first, with their stages, participant counts and dropouts."""
    paging = page_of(page, ROUNDS_PER_PAGE, _roundcount_rows(session, federation))
    rounds = session.scalars(
        sa.select(Round)
        .where(Round.federation_id == federation.id)
        .order_by(Round.number.desc())
        .offset(paging.offset)
        .limit(paging.size)
    ).all()
    return paging, _lines(session, federation, list(rounds))


def round_line(session: Session, federation: Federation, number: int) -> RoundLine | None:
    found = session.scalars(
        sa.select(Round).where(Round.federation_id == federation.id, Round.number == number)
    ).first()
    return None if found is None else _lines(session, federation, [found])[0]


def _lines(session: Session, federation: Federation, rounds: list[Round]) -> list[RoundLine]:
    ids = [r.id for r in rounds]
    stages: dict[int, list[StageLine]] = defaultdict(list)
    for record in session.scalars(
        sa.select(RoundStageRecord)
        .where(RoundStageRecord.round_id.in_(ids))
        .order_by(RoundStageRecord.id)
    ):
        stages[record.round_id].append(
            StageLine(
                record.stage.value,
                record.opened_at,
                record.deadline,
                record.closed_at,
                record.responders,
            )
        )
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    for round_id, status, count in session.execute(
        sa.select(Participant.round_id, Participant.status, sa.func.count())
        .where(Participant.round_id.in_(ids))
        .group_by(Participant.round_id, Participant.status)
    ):
        counts[round_id][status.value] = count
    dropouts: dict[int, list[str]] = defaultdict(list)
    for round_id, name, status, at in session.execute(
        sa.select(
            Participant.round_id, Institution.name, Participant.status, Participant.dropped_at_stage
        )
        .join(Institution, Participant.institution_id == Institution.id)
        .where(
            Participant.round_id.in_(ids),
            Participant.status.in_([ParticipantStatus.DROPPED, ParticipantStatus.DECLINED]),
        )
        .order_by(Institution.name)
    ):
        dropouts[round_id].append(
            f"{name} declined"
            if status is ParticipantStatus.DECLINED
            else f"{name} dropped at {at}"
        )
    return [
        RoundLine(
            number=r.number,
            stage=r.stage.value,
            threshold=r.threshold,
            created_at=r.created_at,
            started_at=r.started_at,
            finished_at=r.finished_at,
            failure_reason=r.failure_reason,
            counts=counts[r.id],
            stages=stages[r.id],
            dropouts=dropouts[r.id],
        )
        for r in rounds
    ]


@dataclass(frozen=True)
class ParticipantLine:
    institution: str
    secagg_id: int
    status: str
    dropped_at_stage: str | None
    last_seen_at: datetime | None


def participant_lines(
    session: Session, federation: Federation, number: int
) -> list[ParticipantLine]:
    rows = session.execute(
        sa.select(Institution.name, Participant)
        .join(Round, Participant.round_id == Round.id)
        .join(Institution, Participant.institution_id == Institution.id)
        .where(Round.federation_id == federation.id, Round.number == number)
        .order_by(Participant.secagg_id)
    )
    return [
        ParticipantLine(
            institution=name,
            secagg_id=p.secagg_id,
            status=p.status.value,
            dropped_at_stage=None if p.dropped_at_stage is None else p.dropped_at_stage.value,
            last_seen_at=p.last_seen_at,
        )
        for name, p in rows
    ]
