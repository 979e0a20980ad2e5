"""The privacy ledger: record each reported spend with our recomputation; read it back.

DESIGN.md, "Privacy budget": after its masked update each agent reports, signed, its noise
multiplier, sampling rate, steps, δ, the ε it has spent so far and the id of the training
run that spent it. The coordinator cannot make an agent overspend (the agent enforces its
own budget) but it checks the arithmetic and keeps the record complete:

- the spend is recorded when the report arrives, in the transaction that stores it: a
  round that fails or is failed afterwards keeps it (it was spent either way);
- a report the accountant cannot account for (σ = 0, q or steps out of range) is refused
  then, as bad input, and never reaches the end of the round;
- the institution's full history is replayed with the coordinator's own accountant; both
  figures are stored and a disagreement is flagged (`mismatch`), as is a δ other than the
  federation spec's (`delta_mismatch`: its ε states another guarantee);
- one training run (`run_id`) is charged once, whatever round it is reported under;
- `unreported_spends` lists institutions whose masked update is in an ended round but whose
  spend never arrived: the ledger is a lower bound there, and auditors see where.
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
from coordinator.rounds.models import TERMINAL_STAGES, MaskedUpdate, Participant, Round
from federation import round_api


@dataclass(frozen=True)
class SpendReport:
    """What an agent reports after a round (cumulative ε, at `delta`)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    budget_epsilon: float | None = None
    run_id: str | None = None

    @classmethod
    def from_wire(cls, spend: round_api.SpendReport) -> SpendReport:
        """The spend as an agent's round report carries it (its accountant checked apart)."""
        return cls(
            noise_multiplier=spend.noise_multiplier,
            sample_rate=spend.sample_rate,
            steps=spend.steps,
            delta=spend.delta,
            epsilon=spend.epsilon,
            budget_epsilon=spend.budget_epsilon,
            run_id=spend.run_id,
        )


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
    delta_mismatch: bool = False
    spec_delta: float | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class UnreportedSpend:
    """An institution whose masked update is in an ended round, with no spend on record."""

    federation: str
    institution: str
    round_number: int
    stage: str
    finished_at: datetime | None = None


def record_spend(
    session: Session,
    round_: Round,
    institution: Institution,
    report: SpendReport,
    *,
    actor: audit.Actor,
) -> PrivacySpend:
    """Store a spend report with the recomputed ε and the mismatch flags (caller's transaction).

    Raises `InvalidInput` for a report no accountant can account for and `StateConflict`
    for a second report of the round or a run already charged under another round."""
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
    spec_delta = federation.spec.dp.delta
    if report.run_id is not None:
        charged = session.execute(
            sa.select(Round.number)
            .join(PrivacySpend, PrivacySpend.round_id == Round.id)
            .where(
                PrivacySpend.institution_id == institution.id,
                PrivacySpend.run_id == report.run_id,
            )
        ).first()
        if charged is not None:
            raise StateConflict(
                f"training run {report.run_id} of '{institution.name}' was already charged "
                f"in round {charged[0]}"
            )
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
    try:
        recomputed = recompute_epsilon(kind, [*history, step], report.delta)
    except (ValueError, ArithmeticError, RuntimeError) as exc:
        # The accountant's own limits (e.g. too many compositions for PRV's grid).
        raise InvalidInput(
            f"the {kind.value} accountant cannot account for this spend: {exc}"
        ) from None
    if not math.isfinite(recomputed):
        raise InvalidInput(f"the {kind.value} accountant finds no finite epsilon for this spend")
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
        delta_mismatch=not math.isclose(report.delta, spec_delta, rel_tol=1e-9, abs_tol=0.0),
        spec_delta=spec_delta,
        run_id=report.run_id,
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
            "delta": report.delta,
            "delta_mismatch": spend.delta_mismatch,
            "run_id": report.run_id,
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
        query = query.where(
            sa.or_(PrivacySpend.mismatch.is_(True), PrivacySpend.delta_mismatch.is_(True))
        )
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
            delta_mismatch=spend.delta_mismatch,
            spec_delta=spend.spec_delta,
            run_id=spend.run_id,
        )
        for federation_name, institution_name, number, spend in session.execute(query)
    ]


def unreported_spends(
    session: Session, *, federation: str | None = None, institution: str | None = None
) -> list[UnreportedSpend]:
    """Ended rounds of DP federations in which an institution uploaded a masked update (so
    it trained, and spent) but no spend of it is on record, oldest round first."""
    recorded = (
        sa.select(PrivacySpend.id)
        .where(
            PrivacySpend.round_id == Participant.round_id,
            PrivacySpend.institution_id == Participant.institution_id,
        )
        .exists()
    )
    query = (
        sa.select(Federation, Institution.name, Round.number, Round.stage, Round.finished_at)
        .select_from(MaskedUpdate)
        .join(Participant, MaskedUpdate.participant_id == Participant.id)
        .join(Round, Participant.round_id == Round.id)
        .join(Institution, Participant.institution_id == Institution.id)
        .join(Federation, Round.federation_id == Federation.id)
        .where(Round.stage.in_(TERMINAL_STAGES), ~recorded)
        .order_by(Federation.name, Round.number, Institution.name)
    )
    if federation is not None:
        query = query.where(Federation.name == federation)
    if institution is not None:
        query = query.where(Institution.name == institution)
    return [
        UnreportedSpend(
            federation=fed.name,
            institution=institution_name,
            round_number=number,
            stage=stage.value,
            finished_at=finished_at,
        )
        for fed, institution_name, number, stage, finished_at in session.execute(query)
        if fed.spec.dp.enabled
    ]
