"""Roster versions: the federation's roster, signed by its admin, every version published.

Revision ID: 7b1e5d0c9a42
Revises: cfd2041a247b
Create Date: 2026-12-02 13:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7b1e5d0c9a42"
down_revision: str | Sequence[str] | None = "cfd2041a247b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "roster_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("federation_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("admin_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("version >= 1", name=op.f("ck_roster_versions_roster_version_positive")),
        sa.ForeignKeyConstraint(
            ["federation_id"],
            ["federations.id"],
            name=op.f("fk_roster_versions_federation_id_federations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_roster_versions")),
        sa.UniqueConstraint(
            "federation_id", "version", name=op.f("uq_roster_versions_federation_id_version")
        ),
    )
    op.create_index(
        op.f("ix_roster_versions_federation_id"), "roster_versions", ["federation_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_roster_versions_federation_id"), table_name="roster_versions")
    op.drop_table("roster_versions")
