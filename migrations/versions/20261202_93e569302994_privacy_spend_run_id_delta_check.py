"""Privacy spend: the agent's training run id, and the spec's δ beside the reported one.

Spends are now recorded when the report arrives. Each row keeps the id of the training run
that spent it (one run is charged once per institution) and whether the reported δ is the
federation spec's. Rows written before have no run id and no spec δ.

Revision ID: 93e569302994
Revises: e5f5907e27b4
Create Date: 2026-12-02 13:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "93e569302994"
down_revision: str | Sequence[str] | None = "e5f5907e27b4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("privacy_spend") as batch:
        batch.add_column(
            sa.Column("delta_mismatch", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("spec_delta", sa.Float(), nullable=True))
        batch.add_column(sa.Column("run_id", sa.String(length=64), nullable=True))
        batch.create_unique_constraint(
            "uq_privacy_spend_institution_id_run_id", ["institution_id", "run_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("privacy_spend") as batch:
        batch.drop_constraint("uq_privacy_spend_institution_id_run_id", type_="unique")
        batch.drop_column("run_id")
        batch.drop_column("spec_delta")
        batch.drop_column("delta_mismatch")
