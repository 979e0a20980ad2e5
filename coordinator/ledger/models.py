"""The privacy ledger: what each institution reported spending, and what we recomputed."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from coordinator.db import Base, UTCDateTime, enum_column, utcnow
from federation.spec import Accountant


class PrivacySpend(Base):
    """One institution's DP report for one round, with the coordinator's own recomputation.

    `reported_epsilon` and `recomputed_epsilon` are cumulative: ε spent by the institution
    in this federation up to and including this round, at `delta`.

    A row is written when the agent's training report arrives (not when the round ends), so
    a round that fails afterwards still has its spend on record. `run_id` is the agent's
    identifier of the training run that spent it: one run is charged once, whatever round
    it is reported under.
    """

    __tablename__ = "privacy_spend"
    __table_args__ = (
        sa.UniqueConstraint("round_id", "institution_id"),
        sa.UniqueConstraint("institution_id", "run_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(sa.ForeignKey("rounds.id", ondelete="CASCADE"))
    institution_id: Mapped[int] = mapped_column(
        sa.ForeignKey("institutions.id", ondelete="CASCADE"), index=True
    )
    accountant: Mapped[Accountant] = mapped_column(enum_column(Accountant))
    noise_multiplier: Mapped[float] = mapped_column(sa.Float)
    sample_rate: Mapped[float] = mapped_column(sa.Float)
    steps: Mapped[int] = mapped_column(sa.Integer)
    delta: Mapped[float] = mapped_column(sa.Float)
    reported_epsilon: Mapped[float] = mapped_column(sa.Float)
    recomputed_epsilon: Mapped[float] = mapped_column(sa.Float)
    #: The institution's own budget ε, as it reported it (it enforces it locally).
    budget_epsilon: Mapped[float | None] = mapped_column(sa.Float)
    mismatch: Mapped[bool] = mapped_column(sa.Boolean)
    #: The reported δ is not the federation spec's `dp.delta`: its ε states another
    #: guarantee than the one the federation agreed on.
    delta_mismatch: Mapped[bool] = mapped_column(
        sa.Boolean, default=False, server_default=sa.false()
    )
    #: The spec's δ when the spend was recorded.
    spec_delta: Mapped[float | None] = mapped_column(sa.Float)
    run_id: Mapped[str | None] = mapped_column(sa.String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
