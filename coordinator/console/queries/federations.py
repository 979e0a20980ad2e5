"""Federations, who holds which task, institutions and their latest spend."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.console.queries.paging import (
    INSTITUTIONS_PER_PAGE,
    Page,
    count_rows,
    page_of,
)
from coordinator.federations.models import Federation, Task
from coordinator.institutions.models import Institution, institution_tasks
from coordinator.ledger.models import PrivacySpend
from coordinator.rounds.models import (
    Round,
)


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
    total = count_rows(session, Institution, Institution.federation_id == federation.id)
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
    total = count_rows(session, Institution, Institution.federation_id == federation.id)
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
    """Each institution's latest ledger entry and its count of flagged mismatches.

    The latest entry is the one of the highest round id: a federation's rounds are created
    one after the other (one open round at a time), so ids grow with round numbers.
    """
    if not institution_ids:
        return {}
    per = (
        sa.select(
            PrivacySpend.institution_id.label("institution_id"),
            sa.func.max(PrivacySpend.round_id).label("round_id"),
            sa.func.sum(sa.case((PrivacySpend.mismatch.is_(True), 1), else_=0)).label("bad"),
        )
        .where(PrivacySpend.institution_id.in_(institution_ids))
        .group_by(PrivacySpend.institution_id)
        .subquery()
    )
    query = (
        sa.select(
            PrivacySpend.institution_id,
            Round.number,
            PrivacySpend.reported_epsilon,
            PrivacySpend.recomputed_epsilon,
            PrivacySpend.budget_epsilon,
            per.c.bad,
        )
        .join(
            per,
            sa.and_(
                per.c.institution_id == PrivacySpend.institution_id,
                per.c.round_id == PrivacySpend.round_id,
            ),
        )
        .join(Round, PrivacySpend.round_id == Round.id)
    )
    return {
        institution_id: Spend(
            round_number=number,
            reported_epsilon=reported,
            recomputed_epsilon=recomputed,
            budget_epsilon=budget,
            mismatches=int(bad or 0),
        )
        for institution_id, number, reported, recomputed, budget, bad in session.execute(query)
    }
