"""The privacy ledger of a federation: entries per institution and round."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.console.queries.paging import (
    MAX_LISTED_MISMATCHES,
)
from coordinator.federations.models import Federation
from coordinator.institutions.models import Institution
from coordinator.ledger.models import PrivacySpend
from coordinator.rounds.models import (
    Round,
)


@dataclass(frozen=True)
class LedgerPoint:
    institution: str
    round_number: int
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    reported_epsilon: float
    recomputed_epsilon: float
    budget_epsilon: float | None
    mismatch: bool
    recorded_at: datetime


def _ledger_query(federation: Federation) -> sa.Select[str, int, PrivacySpend]:
    return (
        sa.select(Institution.name, Round.number, PrivacySpend)
        .join(Round, PrivacySpend.round_id == Round.id)
        .join(Institution, PrivacySpend.institution_id == Institution.id)
        .where(Round.federation_id == federation.id)
    )


def _point(name: str, number: int, spend: PrivacySpend) -> LedgerPoint:
    return LedgerPoint(
        institution=name,
        round_number=number,
        accountant=spend.accountant.value,
        noise_multiplier=spend.noise_multiplier,
        sample_rate=spend.sample_rate,
        steps=spend.steps,
        delta=spend.delta,
        reported_epsilon=spend.reported_epsilon,
        recomputed_epsilon=spend.recomputed_epsilon,
        budget_epsilon=spend.budget_epsilon,
        mismatch=spend.mismatch,
        recorded_at=spend.recorded_at,
    )


def ledger_points(
    session: Session,
    federation: Federation,
    institution_ids: Sequence[int] | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[LedgerPoint]:
    """Ledger entries, per institution then round, optionally of some institutions or dates."""
    query = _ledger_query(federation).order_by(Institution.name, Round.number)
    if institution_ids is not None:
        query = query.where(PrivacySpend.institution_id.in_(institution_ids))
    if since is not None:
        query = query.where(PrivacySpend.recorded_at >= since)
    if until is not None:
        query = query.where(PrivacySpend.recorded_at < until)
    return [_point(name, number, spend) for name, number, spend in session.execute(query)]


def ledger_mismatches(session: Session, federation: Federation) -> list[LedgerPoint]:
    query = (
        _ledger_query(federation)
        .where(PrivacySpend.mismatch.is_(True))
        .order_by(Round.number, Institution.name)
        .limit(MAX_LISTED_MISMATCHES)
    )
    return [_point(name, number, spend) for name, number, spend in session.execute(query)]
