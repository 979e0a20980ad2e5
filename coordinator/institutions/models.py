"""Institutions (one agent identity per federation), the tasks they hold, enrollment tokens.

An institution belongs to one federation: an organisation taking part in two federations
enrolls twice, with two identity keys, so nothing links its participation across them.
"""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from coordinator.db import Base, UTCDateTime, enum_column, utcnow
from coordinator.federations.models import Federation, Task


class EnrollmentState(enum.StrEnum):
    INVITED = "invited"  # an enrollment token exists; no key yet
    ENROLLED = "enrolled"  # identity key registered; signs every request
    REVOKED = "revoked"  # refused from now on (requests, rounds, enrollment)


institution_tasks = sa.Table(
    "institution_tasks",
    Base.metadata,
    sa.Column(
        "institution_id",
        sa.ForeignKey("institutions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("task_id", sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
)


class Institution(Base):
    __tablename__ = "institutions"
    __table_args__ = (sa.UniqueConstraint("federation_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    federation_id: Mapped[int] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(63))
    state: Mapped[EnrollmentState] = mapped_column(
        enum_column(EnrollmentState), default=EnrollmentState.INVITED
    )
    #: Raw 32-byte Ed25519 identity public key, set at enrollment.
    public_key: Mapped[bytes | None] = mapped_column(sa.LargeBinary(32), unique=True)
    invited_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enrolled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    federation: Mapped[Federation] = relationship()
    tasks: Mapped[list[Task]] = relationship(secondary=institution_tasks, order_by=Task.position)

    @property
    def key_id(self) -> str:
        """The RFC 9421 `keyid` this institution signs with."""
        return str(self.id)


class EnrollmentToken(Base):
    """A one-time, expiring invitation; only its keyed hash is stored."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    institution_id: Mapped[int] = mapped_column(
        sa.ForeignKey("institutions.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    institution: Mapped[Institution] = relationship()
