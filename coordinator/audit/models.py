"""The audit log table: an append-only chain of entries, each holding its predecessor's hash."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import Base, UTCDateTime, enum_column

#: SHA-256 hex digest length.
HASH_HEX_LENGTH: Final = 64
#: `prev_hash` of the first entry: no predecessor.
GENESIS_HASH: Final = "0" * HASH_HEX_LENGTH


class AuditAction(enum.StrEnum):
    """Every kind of state change the coordinator records."""

    TOKEN_CREATED = "token.created"  # noqa: S105 - an action name, not a secret
    TOKEN_REVOKED = "token.revoked"  # noqa: S105
    FEDERATION_CREATED = "federation.created"
    INSTITUTION_INVITED = "institution.invited"
    INSTITUTION_ENROLLED = "institution.enrolled"
    INSTITUTION_REVOKED = "institution.revoked"
    ROSTER_PUBLISHED = "roster.published"
    ROUND_CREATED = "round.created"
    ROUND_STAGE_CHANGED = "round.stage_changed"
    ROUND_MESSAGE_ACCEPTED = "round.message_accepted"
    ROUND_PARTICIPANT_DROPPED = "round.participant_dropped"
    ROUND_PARTICIPANT_DECLINED = "round.participant_declined"
    ROUND_SLICE_UNMASKED = "round.slice_unmasked"
    MODEL_VERSION_STORED = "model_version.stored"
    TASK_METRICS_RECORDED = "task_metrics.recorded"
    SPEND_RECORDED = "spend.recorded"


class AuditEntry(Base):
    """One state change. `entry_hash` = SHA-256 over the canonical JSON of all other fields.

    `seq` numbers entries 1, 2, 3 ... with no gaps; `prev_hash` is unique, so the chain
    cannot fork even if two writers raced past the lock (one of them fails instead).
    """

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(sa.String(200))
    action: Mapped[AuditAction] = mapped_column(enum_column(AuditAction, 64))
    subject: Mapped[str] = mapped_column(sa.String(200), index=True)
    #: Canonical JSON (sorted keys, no whitespace), stored as text so the hashed bytes are
    #: exactly what is stored, on every backend.
    details: Mapped[str] = mapped_column(sa.Text)
    prev_hash: Mapped[str] = mapped_column(sa.String(HASH_HEX_LENGTH), unique=True)
    entry_hash: Mapped[str] = mapped_column(sa.String(HASH_HEX_LENGTH), unique=True)


class AuditCheckpointRecord(Base):
    """A signed statement "entry `audit_seq` of the audit log has hash `head_hash`".

    Checkpoints are numbered 1, 2, 3 ... and each holds the hash of the previous one, so
    they form a chain of their own that only the holder of the coordinator's signing key
    (kept outside this database) can extend. Wire form and canonical payload:
    `federation.attestation.AuditCheckpoint`.
    """

    __tablename__ = "audit_checkpoints"

    number: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    audit_seq: Mapped[int] = mapped_column(sa.BigInteger)
    head_hash: Mapped[str] = mapped_column(sa.String(HASH_HEX_LENGTH))
    prev_checkpoint_hash: Mapped[str] = mapped_column(sa.String(HASH_HEX_LENGTH), unique=True)
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str] = mapped_column(sa.String(HASH_HEX_LENGTH))
    signature: Mapped[bytes] = mapped_column(sa.LargeBinary(64))
