"""Round engine: each round's aggregation mode, and leases on unmasking slices.

Revision ID: 5c24a7ef1d96
Revises: 3f869a629cf9
Create Date: 2026-11-29 06:47:57.977426
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5c24a7ef1d96"
down_revision: str | Sequence[str] | None = "3f869a629cf9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(
            sa.Column("mode", sa.String(length=16), server_default="secure", nullable=False)
        )
    with op.batch_alter_table("unmask_slices") as batch:
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("unmask_slices") as batch:
        batch.drop_column("attempts")
        batch.drop_column("lease_expires_at")
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("mode")
