"""Task metrics: the institutions behind a federation-wide figure; no institution's own size.

Federation-wide figures now come from the secure-aggregation sum of every survivor's
validation statistics and carry the number of institutions behind them. Institutions no
longer send their sizes: the upgrade also drops the sizes earlier rounds stored beside an
institution's own metrics (its `n_samples`, and its "n" rows). That part is not undone by
a downgrade.

Revision ID: e5f5907e27b4
Revises: 5c24a7ef1d96
Create Date: 2026-12-02 09:13:43.880654
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5f5907e27b4"
down_revision: str | Sequence[str] | None = "5c24a7ef1d96"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_metrics") as batch:
        batch.add_column(sa.Column("institutions", sa.Integer(), nullable=True))
    metrics = sa.table(
        "task_metrics",
        sa.column("institution_id", sa.Integer),
        sa.column("metric", sa.String),
        sa.column("n_samples", sa.Integer),
    )
    own = metrics.c.institution_id.is_not(None)
    op.execute(sa.delete(metrics).where(own, metrics.c.metric == "n"))
    op.execute(sa.update(metrics).where(own).values(n_samples=None))


def downgrade() -> None:
    with op.batch_alter_table("task_metrics") as batch:
        batch.drop_column("institutions")
