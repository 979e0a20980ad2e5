"""Rounds and everything the secure-aggregation protocol leaves behind, per participant.

All round state lives here, so any process can be killed at any point and another one
continues from the database (DESIGN.md, "One round, end to end"). Protocol messages are
stored as the exact bytes the `privacy.secagg` message types serialise to; the coordinator
never parses more of them than it must. Masked updates are blobs; only their reference,
size and SHA-256 are rows.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from coordinator.db import Base, UTCDateTime, enum_column, utcnow


class RoundStage(enum.StrEnum):
    """Stages of a round (Bonawitz et al. 2017, Fig. 4: rounds 0-4), then aggregation."""

    SCHEDULED = "scheduled"  # created; participants not selected yet
    ADVERTISE_KEYS = "advertise_keys"  # round 0: signed X25519 public keys
    SHARE_KEYS = "share_keys"  # round 1: encrypted Shamir shares, relayed
    MASKED_INPUT = "masked_input"  # round 2: masked update uploads
    CONSISTENCY_CHECK = "consistency_check"  # round 3: signatures over the survivor set
    UNMASKING = "unmasking"  # round 4: shares of b_u / of dropped agents' mask keys
    AGGREGATING = "aggregating"  # workers remove masks slice by slice, then apply
    COMPLETED = "completed"
    FAILED = "failed"


#: The order stages advance in; a round may also jump to FAILED from any open stage.
STAGE_ORDER: Final[tuple[RoundStage, ...]] = tuple(RoundStage)
TERMINAL_STAGES: Final = frozenset({RoundStage.COMPLETED, RoundStage.FAILED})


class ParticipantStatus(enum.StrEnum):
    SELECTED = "selected"  # taking part; answered every stage so far
    DROPPED = "dropped"  # missed a stage deadline; see `dropped_at_stage`
    COMPLETED = "completed"  # its contribution is in the aggregate
    DECLINED = "declined"  # said it will not take part (e.g. out of privacy budget)


class ProtocolMessageKind(enum.StrEnum):
    """What a participant sent, one record per kind (requests are idempotent)."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"  # the sender's ciphertexts for every peer, as one message
    CONSISTENCY_SIGNATURE = "consistency_signature"
    UNMASK_SHARES = "unmask_shares"
    TRAINING_REPORT = "training_report"  # signed DP parameters and per-task metrics
    DECLINE = "decline"  # the reason an agent gave for leaving the round


class RoundRecordKind(enum.StrEnum):
    """What the coordinator itself derived for the whole round, stored once."""

    CONFIG = "config"  # the secagg RoundConfig
    KEY_BROADCAST = "key_broadcast"
    SURVIVOR_SET = "survivor_set"
    CONSISTENCY_PROOF = "consistency_proof"
    UNMASK_PLAN = "unmask_plan"


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (sa.UniqueConstraint("federation_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    federation_id: Mapped[int] = mapped_column(
        sa.ForeignKey("federations.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(sa.Integer)
    stage: Mapped[RoundStage] = mapped_column(enum_column(RoundStage), index=True)
    #: Deadline of the current stage; the periodic `tick` acts on rounds past it.
    stage_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    #: Reconstruction threshold t, fixed when participants are selected.
    threshold: Mapped[int | None] = mapped_column(sa.Integer)
    #: Length d of the secure-aggregation vector and fingerprint of its layout.
    vector_length: Mapped[int | None] = mapped_column(sa.BigInteger)
    layout_fingerprint: Mapped[str | None] = mapped_column(sa.String(64))
    #: The model version participants train from (a version number of this federation).
    base_version: Mapped[int | None] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failure_reason: Mapped[str | None] = mapped_column(sa.Text)
    #: `secure` (masked) or `plain` (unmasked sums; benchmarks and tests only).
    mode: Mapped[str] = mapped_column(sa.String(16), default="secure", server_default="secure")

    participants: Mapped[list[Participant]] = relationship(
        back_populates="round", order_by="Participant.secagg_id", cascade="all, delete-orphan"
    )
    stages: Mapped[list[RoundStageRecord]] = relationship(
        back_populates="round", order_by="RoundStageRecord.id", cascade="all, delete-orphan"
    )


class RoundStageRecord(Base):
    """When a stage opened, its deadline, when it closed and how many answered."""

    __tablename__ = "round_stages"
    __table_args__ = (sa.UniqueConstraint("round_id", "stage"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(sa.ForeignKey("rounds.id", ondelete="CASCADE"))
    stage: Mapped[RoundStage] = mapped_column(enum_column(RoundStage))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    responders: Mapped[int | None] = mapped_column(sa.Integer)

    round: Mapped[Round] = relationship(back_populates="stages")


class Participant(Base):
    """An institution selected for a round, with its secure-aggregation id (1..n)."""

    __tablename__ = "round_participants"
    __table_args__ = (
        sa.UniqueConstraint("round_id", "institution_id"),
        sa.UniqueConstraint("round_id", "secagg_id"),
        sa.CheckConstraint("secagg_id >= 1", name="secagg_id_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(sa.ForeignKey("rounds.id", ondelete="CASCADE"))
    institution_id: Mapped[int] = mapped_column(
        sa.ForeignKey("institutions.id", ondelete="CASCADE"), index=True
    )
    #: Shamir x-coordinate and protocol identity within the round.
    secagg_id: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[ParticipantStatus] = mapped_column(
        enum_column(ParticipantStatus), default=ParticipantStatus.SELECTED
    )
    dropped_at_stage: Mapped[RoundStage | None] = mapped_column(enum_column(RoundStage))
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    round: Mapped[Round] = relationship(back_populates="participants")


class ProtocolRecord(Base):
    """One protocol message from one participant, byte for byte, with its SHA-256."""

    __tablename__ = "protocol_records"
    __table_args__ = (sa.UniqueConstraint("participant_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    participant_id: Mapped[int] = mapped_column(
        sa.ForeignKey("round_participants.id", ondelete="CASCADE")
    )
    kind: Mapped[ProtocolMessageKind] = mapped_column(enum_column(ProtocolMessageKind))
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RoundRecord(Base):
    """A message the coordinator derived for the whole round (broadcast, survivors, plan)."""

    __tablename__ = "round_records"
    __table_args__ = (sa.UniqueConstraint("round_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(sa.ForeignKey("rounds.id", ondelete="CASCADE"))
    kind: Mapped[RoundRecordKind] = mapped_column(enum_column(RoundRecordKind))
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    sha256: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MaskedUpdate(Base):
    """A participant's masked vector: stored as a blob, referenced and pinned by digest."""

    __tablename__ = "masked_updates"

    id: Mapped[int] = mapped_column(primary_key=True)
    participant_id: Mapped[int] = mapped_column(
        sa.ForeignKey("round_participants.id", ondelete="CASCADE"), unique=True
    )
    blob_key: Mapped[str] = mapped_column(sa.String(300))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SliceState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"


class UnmaskSlice(Base):
    """Coordinates [start, stop) of the sum, unmasked by one worker task."""

    __tablename__ = "unmask_slices"
    __table_args__ = (
        sa.UniqueConstraint("round_id", "index"),
        sa.CheckConstraint("start >= 0 AND stop > start", name="slice_bounds"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(sa.ForeignKey("rounds.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(sa.Integer)
    start: Mapped[int] = mapped_column(sa.BigInteger)
    stop: Mapped[int] = mapped_column(sa.BigInteger)
    state: Mapped[SliceState] = mapped_column(enum_column(SliceState), default=SliceState.PENDING)
    blob_key: Mapped[str | None] = mapped_column(sa.String(300))
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: A worker holds the slice until then; after it, another worker may take it over
    #: (the first one was killed, or is stuck).
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
