"""Task-wise results: per round, task and metric, per institution or federation-wide."""

from __future__ import annotations

from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import Base, UTCDateTime, utcnow

#: Metric names are short identifiers ("auc", "accuracy", "mae", "rmse", "loss").
METRIC_NAME_PATTERN: Final = r"^[a-z][a-z0-9_]{0,31}$"


class TaskMetric(Base):
    """One metric of the global model on one task, as evaluated at the start of a round.

    `institution_id` is the institution whose validation split it was measured on, sent in
    clear because that institution opted in; none means the federation-wide figure,
    computed from the secure-aggregation sum of every survivor's validation statistics
    (`federation.metrics`): the metric over the union of their validation splits, with
    `n_samples` samples from `institutions` institutions behind it. No institution's own
    size is stored: a per-institution row has no `n_samples`.
    """

    __tablename__ = "task_metrics"
    __table_args__ = (sa.UniqueConstraint("round_id", "task_id", "institution_id", "metric"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(
        sa.ForeignKey("rounds.id", ondelete="CASCADE"), index=True
    )
    task_id: Mapped[int] = mapped_column(sa.ForeignKey("tasks.id", ondelete="CASCADE"))
    institution_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("institutions.id", ondelete="CASCADE")
    )
    metric: Mapped[str] = mapped_column(sa.String(32))
    value: Mapped[float] = mapped_column(sa.Float)
    n_samples: Mapped[int | None] = mapped_column(sa.Integer)
    institutions: Mapped[int | None] = mapped_column(sa.Integer)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
