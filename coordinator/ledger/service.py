"""The privacy ledger: record each reported spend with our recomputation; read it back.

DESIGN.md, "Privacy budget": after a round each agent reports, signed, its noise multiplier,
sampling rate, steps, δ and the ε it has spent so far. The coordinator cannot make an agent
overspend (the agent enforces its own budget) but it checks the arithmetic: it replays the
institution's full history with its own accountant, stores both figures and flags any
disagreement for auditors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.errors import InvalidInput, StateConflict
from coordinator.federations.models import Federation
from coordinator.institutions.models import Institution
from coordinator.ledger.accountant import MechanismStep, is_mismatch, recompute_epsilon
from coordinator.ledger.models import PrivacySpend
from coordinator.rounds.models import Round


@dataclass(frozen=True)
class SpendReport:
    """What an agent reports after a round (cumulative ε, at `delta`)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    budget_epsilon: float | None = None


@dataclass(frozen=True)
class LedgerRow:
    federation: str
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


def record_spend(
    session: Session,
    round_: Round,
    institution: Institution,
    report: SpendReport,
    *,
    actor: audit.Actor,
) -> PrivacySpend:
    """Store a spend report with the recomputed ε and the mismatch flag (caller's transaction)."""
    if institution.federation_id != round_.federation_id:
        raise InvalidInput(f"institution '{institution.name}' is not in this round's federation")
    if not (math.isfinite(report.epsilon) and report.epsilon >= 0):
        raise InvalidInput("reported epsilon must be a finite number >= 0")
    if report.budget_epsilon is not None and not (
        math.isfinite(report.budget_epsilon) and report.budget_epsilon > 0
    ):
        raise InvalidInput("budget epsilon must be a positive finite number")
    step = MechanismStep(report.noise_multiplier, report.sample_rate, report.steps)
    federation = session.get_one(Federation, round_.federation_id)
    kind = federation.spec.dp.accountant
    earlier = session.scalars(
        sa.select(PrivacySpend)
        .join(Round, PrivacySpend.round_id == Round.id)
        .where(PrivacySpend.institution_id == institution.id, Round.number < round_.number)
        .order_by(Round.number)
    ).all()
    if session.scalars(
        sa.select(PrivacySpend.id).where(
            PrivacySpend.round_id == round_.id, PrivacySpend.institution_id == institution.id
        )
    ).first():
        raise StateConflict(
            f"institution '{institution.name}' already reported its spend for round {round_.number}"
        )
    history = [MechanismStep(e.noise_multiplier, e.sample_rate, e.steps) for e in earlier]
    recomputed = recompute_epsilon(kind, [*history, step], report.delta)
    spend = PrivacySpend(
        round_id=round_.id,
        institution_id=institution.id,
        accountant=kind,
        noise_multiplier=report.noise_multiplier,
        sample_rate=report.sample_rate,
        steps=report.steps,
        delta=report.delta,
        reported_epsilon=report.epsilon,
        recomputed_epsilon=recomputed,
        budget_epsilon=report.budget_epsilon,
        mismatch=is_mismatch(kind, report.epsilon, recomputed),
    )
    session.add(spend)
    session.flush()
    audit.record(
        session,
        actor,
        AuditAction.SPEND_RECORDED,
        f"spend:{federation.name}/{institution.name}/{round_.number}",
        {
            "reported_epsilon": report.epsilon,
            "recomputed_epsilon": recomputed,
            "mismatch": spend.mismatch,
        },
    )
    return spend


def list_ledger(
    session: Session,
    *,
    federation: str | None = None,
    institution: str | None = None,
    mismatch_only: bool = False,
) -> list[LedgerRow]:
    """Ledger rows, per institution and round, oldest round first."""
    query = (
        sa.select(
            Federation.name,
            Institution.name,
            Round.number,
            PrivacySpend,
        )
        .join(Round, PrivacySpend.round_id == Round.id)
        .join(Institution, PrivacySpend.institution_id == Institution.id)
        .join(Federation, Round.federation_id == Federation.id)
        .order_by(Federation.name, Institution.name, Round.number)
    )
    if federation is not None:
        query = query.where(Federation.name == federation)
    if institution is not None:
        query = query.where(Institution.name == institution)
    if mismatch_only:
        query = query.where(PrivacySpend.mismatch.is_(True))
    return [
        LedgerRow(
            federation=federation_name,
            institution=institution_name,
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
        for federation_name, institution_name, number, spend in session.execute(query)
    ]
