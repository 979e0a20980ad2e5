"""Task-wise results of a federation, per institution or federation-wide."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.federations.models import Federation, Task
from coordinator.institutions.models import Institution
from coordinator.results.models import TaskMetric
from coordinator.rounds.models import (
    Round,
)


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


def results_version(session: Session) -> int:
    """Grows with every result recorded anywhere (the primary key's maximum)."""
    return int(session.scalar(sa.select(sa.func.max(TaskMetric.id))) or 0)
