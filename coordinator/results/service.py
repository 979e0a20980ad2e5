"""Task-wise results: record the metrics of a round, read them back per round and task.

Two kinds of rows (docs/rounds.md, "What leaves an institution"):

- **federation-wide** (`institution` none): computed from the round's secure-aggregation
  sum of every survivor's validation statistics (`federation.metrics`), i.e. the metric over
  the union of their validation splits. A task evaluated by fewer than
  `MIN_INSTITUTIONS_PER_FIGURE` institutions is not recorded: its "federation-wide" figure
  would be one institution's own.
- **per institution**: what an institution that opted in sent in clear.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

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
from federation.metrics import TaskMetrics

_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)
#: Fewest institutions whose validation data a federation-wide figure may rest on.
MIN_INSTITUTIONS_PER_FIGURE: Final = 2
#: The metric row holding the largest error of a binned federation-wide AUC.
AUC_ERROR_BOUND: Final = "auc_error_bound"


@dataclass(frozen=True)
class MetricValue:
    """One measured value: `metric` of the global model on `task`."""

    task: str
    metric: str
    value: float
    n_samples: int | None = None
    institutions: int | None = None


@dataclass(frozen=True)
class ResultRow:
    round_number: int
    task: str
    institution: str | None  # None: federation-wide
    metric: str
    value: float
    n_samples: int | None
    institutions: int | None


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
        if institution is not None and (item.n_samples, item.institutions) != (None, None):
            raise InvalidInput("an institution's own row holds no sizes")
        rows.append(
            TaskMetric(
                round_id=round_.id,
                task_id=task.id,
                institution_id=None if institution is None else institution.id,
                metric=item.metric,
                value=item.value,
                n_samples=item.n_samples,
                institutions=item.institutions,
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


def record_federation_metrics(
    session: Session, round_: Round, found: Mapping[str, TaskMetrics]
) -> list[TaskMetric]:
    """Store the federation-wide metrics of a round's summed statistics, per task.

    Tasks nobody evaluated are left out; so are those fewer than
    `MIN_INSTITUTIONS_PER_FIGURE` institutions evaluated and those whose summed counts do
    not fit together (a participant sent statistics no evaluation produces): an audit
    entry names them and says why.
    """
    values: list[MetricValue] = []
    withheld: dict[str, str] = {}
    for task, result in found.items():
        if result.problem is not None:
            withheld[task] = f"inconsistent statistics: {result.problem}"
            continue
        if result.n == 0:
            continue
        if result.institutions < MIN_INSTITUTIONS_PER_FIGURE:
            withheld[task] = f"fewer than {MIN_INSTITUTIONS_PER_FIGURE} institutions evaluated"
            continue
        scores = dict(result.values)
        if result.auc_error_bound is not None:
            scores[AUC_ERROR_BOUND] = result.auc_error_bound
        values += [
            MetricValue(task, metric, value, result.n, result.institutions)
            for metric, value in sorted(scores.items())
        ]
    if withheld:
        federation = session.get_one(Federation, round_.federation_id)
        audit.record(
            session,
            audit.SYSTEM,
            AuditAction.TASK_METRICS_RECORDED,
            f"round:{federation.name}/{round_.number}",
            {
                "institution": None,
                "values": 0,
                "withheld": [f"{task}: {why}" for task, why in sorted(withheld.items())],
            },
        )
    if not values:
        return []
    return record_task_metrics(session, round_, values, actor=audit.SYSTEM)


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
            TaskMetric.institutions,
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
