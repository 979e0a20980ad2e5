"""What the console's pages read: paged, aggregated in SQL, one query per table per page.

The REST API's reads return whole lists (a federation's rounds, its ledger); the console
must stay fast with 1,000 rounds and 100 institutions, so its pages read pages: rounds by
number range, audit entries by `seq` (keyset paging on the primary key), the ledger for a
page of institutions, counts grouped in the database. Every query runs on an index that
the schema already has (the unique constraints lead with `round_id`/`federation_id`).

These are reads only; nothing here changes state or decides anything.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit.models import AuditEntry
from coordinator.federations.models import Federation, Task
from coordinator.institutions.models import Institution, institution_tasks
from coordinator.ledger.models import PrivacySpend
from coordinator.results.models import TaskMetric
from coordinator.rounds.models import (
    TERMINAL_STAGES,
    Participant,
    ParticipantStatus,
    Round,
    RoundStage,
    RoundStageRecord,
)

ROUNDS_PER_PAGE: Final = 25
AUDIT_PER_PAGE: Final = 50
INSTITUTIONS_PER_PAGE: Final = 25
LEDGER_INSTITUTIONS_PER_CHART: Final = 10
MAX_LISTED_MISMATCHES: Final = 200


@dataclass(frozen=True)
class Page:
    """Which page of how many (1-based)."""

    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages


def page_of(number: int, size: int, total: int) -> Page:
    last = max(1, -(-total // size))
    return Page(number=min(max(1, number), last), size=size, total=total)


# -- federations ------------------------------------------------------------------------


@dataclass(frozen=True)
class FederationLine:
    name: str
    status: str
    tasks: list[str]
    institutions: int
    rounds: int
    last_round_stage: str | None
    created_at: datetime


def federation_lines(session: Session) -> list[FederationLine]:
    federations = session.scalars(sa.select(Federation).order_by(Federation.name)).all()
    institutions = dict(
        session.execute(
            sa.select(Institution.federation_id, sa.func.count()).group_by(
                Institution.federation_id
            )
        ).all()
    )
    rounds = {
        federation_id: (count, last)
        for federation_id, count, last in session.execute(
            sa.select(Round.federation_id, sa.func.count(), sa.func.max(Round.number)).group_by(
                Round.federation_id
            )
        )
    }
    stages = dict(
        session.execute(
            sa.select(Round.federation_id, Round.stage).where(
                sa.tuple_(Round.federation_id, Round.number).in_(
                    [(fid, last) for fid, (_, last) in rounds.items()]
                )
            )
        ).all()
    )
    tasks: dict[int, list[str]] = defaultdict(list)
    for federation_id, name in session.execute(
        sa.select(Task.federation_id, Task.name).order_by(Task.federation_id, Task.position)
    ):
        tasks[federation_id].append(name)
    return [
        FederationLine(
            name=f.name,
            status=f.status.value,
            tasks=tasks[f.id],
            institutions=institutions.get(f.id, 0),
            rounds=rounds.get(f.id, (0, None))[0],
            last_round_stage=None if f.id not in stages else stages[f.id].value,
            created_at=f.created_at,
        )
        for f in federations
    ]


@dataclass(frozen=True)
class Holding:
    """An institution and, per task of the federation, whether it holds labels for it."""

    name: str
    state: str
    holds: list[bool]


def holdings(session: Session, federation: Federation, page: int) -> tuple[Page, list[Holding]]:
    total = _count(session, Institution, Institution.federation_id == federation.id)
    paging = page_of(page, INSTITUTIONS_PER_PAGE, total)
    rows = session.execute(
        sa.select(Institution.id, Institution.name, Institution.state)
        .where(Institution.federation_id == federation.id)
        .order_by(Institution.name)
        .offset(paging.offset)
        .limit(paging.size)
    ).all()
    held: dict[int, set[int]] = defaultdict(set)
    for institution_id, task_id in session.execute(
        sa.select(institution_tasks.c.institution_id, institution_tasks.c.task_id).where(
            institution_tasks.c.institution_id.in_([row.id for row in rows])
        )
    ):
        held[institution_id].add(task_id)
    task_ids = [task.id for task in federation.tasks]
    return paging, [
        Holding(row.name, row.state.value, [task_id in held[row.id] for task_id in task_ids])
        for row in rows
    ]


# -- institutions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Spend:
    """An institution's latest ledger entry (cumulative ε) and its budget."""

    round_number: int
    reported_epsilon: float
    recomputed_epsilon: float
    budget_epsilon: float | None
    mismatches: int

    @property
    def left(self) -> float | None:
        if self.budget_epsilon is None:
            return None
        return max(0.0, self.budget_epsilon - self.recomputed_epsilon)


@dataclass(frozen=True)
class InstitutionLine:
    id: int
    name: str
    state: str
    tasks: list[str]
    invited_at: datetime
    enrolled_at: datetime | None
    revoked_at: datetime | None
    last_seen_at: datetime | None
    spend: Spend | None = None


def institution_lines(
    session: Session,
    federation: Federation,
    page: int,
    *,
    with_spend: bool,
    size: int = INSTITUTIONS_PER_PAGE,
) -> tuple[Page, list[InstitutionLine]]:
    """A page of the federation's institutions; their spend only when the reader may see it."""
    total = _count(session, Institution, Institution.federation_id == federation.id)
    paging = page_of(page, size, total)
    rows = session.scalars(
        sa.select(Institution)
        .where(Institution.federation_id == federation.id)
        .order_by(Institution.name)
        .offset(paging.offset)
        .limit(paging.size)
    ).all()
    ids = [row.id for row in rows]
    names = {task.id: task.name for task in federation.tasks}
    tasks: dict[int, list[str]] = defaultdict(list)
    for institution_id, task_id in session.execute(
        sa.select(institution_tasks.c.institution_id, institution_tasks.c.task_id).where(
            institution_tasks.c.institution_id.in_(ids)
        )
    ):
        tasks[institution_id].append(names[task_id])
    spends = latest_spend(session, ids) if with_spend else {}
    return paging, [
        InstitutionLine(
            id=row.id,
            name=row.name,
            state=row.state.value,
            tasks=sorted(tasks[row.id], key=lambda name: list(names.values()).index(name)),
            invited_at=row.invited_at,
            enrolled_at=row.enrolled_at,
            revoked_at=row.revoked_at,
            last_seen_at=row.last_seen_at,
            spend=spends.get(row.id),
        )
        for row in rows
    ]


def latest_spend(session: Session, institution_ids: Sequence[int]) -> dict[int, Spend]:
    """Each institution's latest ledger entry and its count of flagged mismatches."""
    if not institution_ids:
        return {}
    per = (
        sa.select(
            PrivacySpend.institution_id.label("institution_id"),
            sa.func.max(Round.number).label("number"),
            sa.func.sum(sa.case((PrivacySpend.mismatch.is_(True), 1), else_=0)).label("bad"),
        )
        .join(Round, PrivacySpend.round_id == Round.id)
        .where(PrivacySpend.institution_id.in_(institution_ids))
        .group_by(PrivacySpend.institution_id)
        .subquery()
    )
    query = (
        sa.select(PrivacySpend, Round.number, per.c.bad)
        .join(Round, PrivacySpend.round_id == Round.id)
        .join(
            per,
            sa.and_(
                per.c.institution_id == PrivacySpend.institution_id, per.c.number == Round.number
            ),
        )
    )
    return {
        spend.institution_id: Spend(
            round_number=number,
            reported_epsilon=spend.reported_epsilon,
            recomputed_epsilon=spend.recomputed_epsilon,
            budget_epsilon=spend.budget_epsilon,
            mismatches=int(bad or 0),
        )
        for spend, number, bad in session.execute(query)
    }


# -- rounds -----------------------------------------------------------------------------


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


def _round_count(session: Session, federation: Federation) -> int:
    return _count(session, Round, Round.federation_id == federation.id)


def round_lines(
    session: Session, federation: Federation, page: int
) -> tuple[Page, list[RoundLine]]:
    """A page of rounds, newest first, with their stages, participant counts and dropouts."""
    paging = page_of(page, ROUNDS_PER_PAGE, _round_count(session, federation))
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


# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultPoint:
    round_number: int
    task: str
    institution: str | None
    metric: str
    value: float
    n_samples: int | None


def result_points(session: Session, federation: Federation) -> list[ResultPoint]:
    """Every task-wise result of the federation (per institution where one was recorded)."""
    query = (
        sa.select(
            Round.number,
            Task.name,
            Institution.name,
            TaskMetric.metric,
            TaskMetric.value,
            TaskMetric.n_samples,
        )
        .join(Round, TaskMetric.round_id == Round.id)
        .join(Task, TaskMetric.task_id == Task.id)
        .outerjoin(Institution, TaskMetric.institution_id == Institution.id)
        .where(Round.federation_id == federation.id)
        .order_by(Round.number)
    )
    return [ResultPoint(*row) for row in session.execute(query)]


# -- ledger -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerPoint:
    institution: str
    round_number: int
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    reported_epsilon: float
    recomputed_epsilon: float
    budget_epsilon: float | None
    mismatch: bool
    recorded_at: datetime


def _ledger_query(federation: Federation) -> sa.Select[str, int, PrivacySpend]:
    return (
        sa.select(Institution.name, Round.number, PrivacySpend)
        .join(Round, PrivacySpend.round_id == Round.id)
        .join(Institution, PrivacySpend.institution_id == Institution.id)
        .where(Round.federation_id == federation.id)
    )


def _point(name: str, number: int, spend: PrivacySpend) -> LedgerPoint:
    return LedgerPoint(
        institution=name,
        round_number=number,
        accountant=spend.accountant.value,
        noise_multiplier=spend.noise_multiplier,
        sample_rate=spend.sample_rate,
        steps=spend.steps,
        delta=spend.delta,
        reported_epsilon=spend.reported_epsilon,
        recomputed_epsilon=spend.recomputed_epsilon,
        budget_epsilon=spend.budget_epsilon,
        mismatch=spend.mismatch,
        recorded_at=spend.recorded_at,
    )


def ledger_points(
    session: Session,
    federation: Federation,
    institution_ids: Sequence[int] | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[LedgerPoint]:
    """Ledger entries, per institution then round, optionally of some institutions or dates."""
    query = _ledger_query(federation).order_by(Institution.name, Round.number)
    if institution_ids is not None:
        query = query.where(PrivacySpend.institution_id.in_(institution_ids))
    if since is not None:
        query = query.where(PrivacySpend.recorded_at >= since)
    if until is not None:
        query = query.where(PrivacySpend.recorded_at < until)
    return [_point(name, number, spend) for name, number, spend in session.execute(query)]


def ledger_mismatches(session: Session, federation: Federation) -> list[LedgerPoint]:
    query = (
        _ledger_query(federation)
        .where(PrivacySpend.mismatch.is_(True))
        .order_by(Round.number, Institution.name)
        .limit(MAX_LISTED_MISMATCHES)
    )
    return [_point(name, number, spend) for name, number, spend in session.execute(query)]


# -- audit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    action: str | None = None
    actor: str | None = None
    subject: str | None = None  # a prefix, e.g. "round:heart/"
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = []
        if self.action:
            clauses.append(sa.type_coerce(AuditEntry.action, sa.String) == self.action)
        if self.actor:
            clauses.append(AuditEntry.actor == self.actor)
        if self.subject:
            escaped = self.subject.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append(AuditEntry.subject.like(escaped + "%", escape="\\"))
        if self.since:
            clauses.append(AuditEntry.recorded_at >= self.since)
        if self.until:
            clauses.append(AuditEntry.recorded_at < self.until)
        return clauses


@dataclass(frozen=True)
class AuditLine:
    seq: int
    recorded_at: datetime
    actor: str
    action: str
    subject: str
    details: str
    entry_hash: str


@dataclass(frozen=True)
class AuditPage:
    lines: list[AuditLine]
    #: `before` of the next (older) page, and of the newer page, when they exist.
    older: int | None
    newer: int | None


def audit_page(session: Session, where: AuditFilter, before: int | None) -> AuditPage:
    """Up to AUDIT_PER_PAGE entries with seq < `before` (newest first), keyset-paged."""
    clauses = where.where()
    query = sa.select(
        AuditEntry.seq,
        AuditEntry.recorded_at,
        AuditEntry.actor,
        sa.type_coerce(AuditEntry.action, sa.String),
        AuditEntry.subject,
        AuditEntry.details,
        AuditEntry.entry_hash,
    ).where(*clauses)
    if before is not None:
        query = query.where(AuditEntry.seq < before)
    rows = session.execute(query.order_by(AuditEntry.seq.desc()).limit(AUDIT_PER_PAGE + 1)).all()
    lines = [AuditLine(*row) for row in rows[:AUDIT_PER_PAGE]]
    older = lines[-1].seq if len(rows) > AUDIT_PER_PAGE else None
    newer = None
    if lines and before is not None:
        newest = session.execute(
            sa.select(AuditEntry.seq)
            .where(*clauses, AuditEntry.seq > lines[0].seq)
            .order_by(AuditEntry.seq)
            .limit(AUDIT_PER_PAGE)
        ).all()
        if newest:
            newer = newest[-1][0] + 1
    return AuditPage(lines=lines, older=older, newer=newer)


def _count(session: Session, model: type[object], *where: sa.ColumnElement[bool]) -> int:
    return int(session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0)
