"""Task-wise results: record the metrics of a round, read them back per round and task."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.errors import InvalidInput
from coordinator.federations.models import Federation, Task
from coordinator.federations.service import get_federation
from coordinator.institutions.models import Institution
from coordinator.results.models import METRIC_NAME_PATTERN, TaskMetric
from coordinator.rounds.models import Round

_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)


@dataclass(frozen=True)
class MetricValue:
    """One measured value: `metric` of the global model on `task`."""

    task: str
    metric: str
    value: float
    n_samples: int | None = None


@dataclass(frozen=True)
class ResultRow:
    round_number: int
    task: str
    institution: str | None  # None: federation-wide
    metric: str
    value: float
    n_samples: int | None


def record_task_metrics(
    session: Session,
    round_: Round,
    values: Sequence[MetricValue],
    *,
    actor: audit.Actor,
    institution: Institution | None = None,
) -> list[TaskMetric]:
    """Store a round's metrics (per institution or federation-wide), caller's transaction."""
    federation = session.get_one(Federation, round_.federation_id)
    tasks = {task.name: task for task in federation.tasks}
    rows = []
    for item in values:
        task = tasks.get(item.task)
        if task is None:
            raise InvalidInput(f"unknown task '{item.task}' in federation '{federation.name}'")
        if not _METRIC_NAME.match(item.metric):
            raise InvalidInput(f"invalid metric name {item.metric!r}")
        if not math.isfinite(item.value):
            raise InvalidInput(f"metric {item.metric} of task {item.task} is not a finite number")
        if item.n_samples is not None and item.n_samples < 0:
            raise InvalidInput(f"metric {item.metric} of task {item.task}: negative sample count")
        rows.append(
            TaskMetric(
                round_id=round_.id,
                task_id=task.id,
                institution_id=None if institution is None else institution.id,
                metric=item.metric,
                value=item.value,
                n_samples=item.n_samples,
            )
        )
    session.add_all(rows)
    session.flush()
    audit.record(
        session,
        actor,
        AuditAction.TASK_METRICS_RECORDED,
        f"round:{federation.name}/{round_.number}",
        {
            "institution": None if institution is None else institution.name,
            "values": len(rows),
        },
    )
    return rows


def list_results(
    session: Session, federation_name: str, round_number: int | None = None
) -> list[ResultRow]:
    federation = get_federation(session, federation_name)
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
        .order_by(Round.number, Task.position, Institution.name.nulls_first(), TaskMetric.metric)
    )
    if round_number is not None:
        query = query.where(Round.number == round_number)
    return [ResultRow(*row) for row in session.execute(query)]
