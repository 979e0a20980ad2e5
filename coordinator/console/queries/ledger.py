"""The privacy ledger of a federation: entries per institution and round."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

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
    recorded_at: datetime | None = None  # read only when asked for (the report)


#: The columns of a ledger point, in `LedgerPoint`'s order: read as plain rows, not ORM
#: objects (a ledger page reads 10,000 of them at 1,000 rounds).
_COLUMNS: Final = (
    Institution.name,
    Round.number,
    sa.type_coerce(PrivacySpend.accountant, sa.String),  # its value, unconverted (fast)
    PrivacySpend.noise_multiplier,
    PrivacySpend.sample_rate,
    PrivacySpend.steps,
    PrivacySpend.delta,
    PrivacySpend.reported_epsilon,
    PrivacySpend.recomputed_epsilon,
    PrivacySpend.budget_epsilon,
    PrivacySpend.mismatch,
)


def _ledger_query(federation: Federation, *, times: bool = False) -> sa.Select[*tuple[Any, ...]]:
    columns = (*_COLUMNS, PrivacySpend.recorded_at) if times else _COLUMNS
    return (
        sa.select(*columns)
        .join(Round, PrivacySpend.round_id == Round.id)
        .join(Institution, PrivacySpend.institution_id == Institution.id)
        .where(Round.federation_id == federation.id)
    )


def _points(session: Session, query: sa.Select[*tuple[Any, ...]]) -> list[LedgerPoint]:
    return [LedgerPoint(*row) for row in session.execute(query)]


def ledger_points(
    session: Session,
    federation: Federation,
    institution_ids: Sequence[int] | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    times: bool = False,
) -> list[LedgerPoint]:
    """Ledger entries, per institution then round, optionally of some institutions or dates;
    with `times`, when each was recorded (parsing 10,000 timestamps costs SQLite a second)."""
    query = _ledger_query(federation, times=times).order_by(Institution.name, Round.number)
    if institution_ids is not None:
        query = query.where(PrivacySpend.institution_id.in_(institution_ids))
    if since is not None:
        query = query.where(PrivacySpend.recorded_at >= since)
    if until is not None:
        query = query.where(PrivacySpend.recorded_at < until)
    return _points(session, query)


def ledger_mismatches(session: Session, federation: Federation) -> list[LedgerPoint]:
    query = (
        _ledger_query(federation)
        .where(PrivacySpend.mismatch.is_(True))
        .order_by(Round.number, Institution.name)
        .limit(MAX_LISTED_MISMATCHES)
    )
    return _points(session, query)


def ledger_version(session: Session) -> int:
    """Grows with every spend recorded anywhere (the primary key's maximum: one index read)."""
    return int(session.scalar(sa.select(sa.func.max(PrivacySpend.id))) or 0)
