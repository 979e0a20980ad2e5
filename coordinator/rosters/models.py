"""Signed rosters of a federation: every version the admin published, as signed."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import Base, UTCDateTime, utcnow


class RosterVersion(Base):
    """Version `version` of a federation's roster: the `federation.roster.SignedRoster`
    JSON exactly as the admin signed and published it (agents verify it themselves)."""

    __tablename__ = "roster_versions"
    __table_args__ = (
        sa.UniqueConstraint("federation_id", "version"),
        sa.CheckConstraint("version >= 1", name="roster_version_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    federation_id: Mapped[int] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(sa.BigInteger)
    #: SHA-256 of the admin's public key, hex (the fingerprint institutions pin).
    admin_fingerprint: Mapped[str] = mapped_column(sa.String(64))
    members: Mapped[int] = mapped_column(sa.Integer)
    document: Mapped[str] = mapped_column(sa.Text)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
