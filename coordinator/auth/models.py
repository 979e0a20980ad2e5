"""Credentials: people's API tokens (stored as keyed hashes) and agents' used signature nonces."""

from __future__ import annotations

import enum
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import Base, UTCDateTime, enum_column, utcnow


class Role(enum.StrEnum):
    """What a person's token may do (each endpoint declares the roles it admits)."""

    ADMIN = "admin"  # everything: federations, enrollment, rounds, tokens, and all reads
    OPERATOR = "operator"  # runs the service: reads federations, institutions, rounds, models
    AUDITOR = "auditor"  # reads the privacy ledger and the audit log; never changes state


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    role: Mapped[Role] = mapped_column(enum_column(Role))
    #: HMAC-SHA256(pepper, token), hex. The token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by_id: Mapped[int | None] = mapped_column(sa.ForeignKey("api_tokens.id"))


class SignatureNonce(Base):
    """A (key, nonce) pair already seen, kept until a signature carrying it would be too old."""

    __tablename__ = "signature_nonces"

    institution_id: Mapped[int] = mapped_column(
        sa.ForeignKey("institutions.id", ondelete="CASCADE"), primary_key=True
    )
    nonce: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
