"""Audit checkpoints: the audit log's head, signed with the coordinator's key.

Revision ID: cfd2041a247b
Revises: 93e569302994
Create Date: 2026-12-02 13:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "cfd2041a247b"
down_revision: str | Sequence[str] | None = "93e569302994"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("audit_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("prev_checkpoint_hash", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.LargeBinary(length=64), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_audit_checkpoints")),
        sa.UniqueConstraint(
            "prev_checkpoint_hash", name=op.f("uq_audit_checkpoints_prev_checkpoint_hash")
        ),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
