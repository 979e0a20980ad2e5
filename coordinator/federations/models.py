"""Federations, their tasks and their model spec.

The FederationSpec an admin submitted is stored verbatim (canonical JSON) with its
fingerprint: it is what agents receive. Tasks and the model spec are also rows of their
own, so that institutions can reference the tasks they hold and queries need no JSON.
"""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from coordinator.db import Base, UTCDateTime, enum_column, utcnow
from federation.spec import FederationSpec, TaskKind


class FederationStatus(enum.StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"


class Federation(Base):
    __tablename__ = "federations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(63), unique=True)
    status: Mapped[FederationStatus] = mapped_column(
        enum_column(FederationStatus), default=FederationStatus.ACTIVE
    )
    spec_json: Mapped[str] = mapped_column(sa.Text)
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: When the scheduler should open the next round (from `schedule.round_interval_s`).
    next_round_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    tasks: Mapped[list[Task]] = relationship(
        back_populates="federation", order_by="Task.position", cascade="all, delete-orphan"
    )
    model_spec: Mapped[ModelSpecRecord] = relationship(
        back_populates="federation", cascade="all, delete-orphan"
    )

    @property
    def spec(self) -> FederationSpec:
        return FederationSpec.model_validate_json(self.spec_json)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (sa.UniqueConstraint("federation_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    federation_id: Mapped[int] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(63))
    position: Mapped[int] = mapped_column(sa.Integer)
    kind: Mapped[TaskKind] = mapped_column(enum_column(TaskKind))
    n_classes: Mapped[int | None] = mapped_column(sa.Integer)
    weight: Mapped[float] = mapped_column(sa.Float)

    federation: Mapped[Federation] = relationship(back_populates="tasks")


class ModelSpecRecord(Base):
    """The federation's model spec (encoder + heads), one per federation."""

    __tablename__ = "model_specs"

    id: Mapped[int] = mapped_column(primary_key=True)
    federation_id: Mapped[int] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), unique=True
    )
    encoder_kind: Mapped[str] = mapped_column(sa.String(32))
    spec_json: Mapped[str] = mapped_column(sa.Text)
    fingerprint: Mapped[str] = mapped_column(sa.String(64))

    federation: Mapped[Federation] = relationship(back_populates="model_spec")
