"""The privacy ledger: our own accountant recomputes each reported ε from its parameters."""

from __future__ import annotations

import pytest
from opacus.accountants import RDPAccountant
from sqlalchemy.orm import Session

from coordinator.errors import InvalidInput, StateConflict
from coordinator.federations.models import Federation
from coordinator.federations.service import create_federation
from coordinator.ledger import service
from coordinator.ledger.accountant import RDP_ORDERS, MechanismStep, recompute_epsilon
from coordinator.ledger.export import COLUMNS, ledger_csv
from coordinator.rounds.models import RoundStage
from coordinator.rounds.service import enter_stage, open_round
from coordinator.settings import Settings
from federation.spec import Accountant, DPSpec

from .conftest import TEST_ACTOR, EnrolledAgent, enroll_agent, heart_spec


def _opacus_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta, alphas=[float(a) for a in RDP_ORDERS]))


def test_the_replay_uses_the_agents_rdp_orders() -> None:
    """Reported and recomputed ε agree only if both sides use the same orders; the
    coordinator keeps its own copy (it never imports the agents' code)."""
    from privacy.dp.accountant import RDP_ORDERS as AGENT_ORDERS

    assert RDP_ORDERS == AGENT_ORDERS


def _next_round(session: Session, federation: Federation):  # type: ignore[no-untyped-def]
    round_ = open_round(session, federation, actor=TEST_ACTOR)
    return round_


def _close(session: Session, round_) -> None:  # type: ignore[no-untyped-def]
    enter_stage(session, round_, RoundStage.FAILED, actor=TEST_ACTOR, reason="test")
    session.commit()


def test_recomputed_epsilon_is_cumulative_and_matches_opacus(
    session: Session, federation: Federation, enrolled_agent: EnrolledAgent
) -> None:
    reports = [(1.1, 0.02, 50), (1.1, 0.02, 50), (0.9, 0.05, 20)]
    for index, (sigma, q, steps) in enumerate(reports, start=1):
        round_ = _next_round(session, federation)
        expected = _opacus_epsilon(reports[:index], 1e-5)
        spend = service.record_spend(
            session,
            round_,
            enrolled_agent.institution,
            service.SpendReport(sigma, q, steps, 1e-5, expected, budget_epsilon=8.0),
            actor=TEST_ACTOR,
        )
        _close(session, round_)
        assert spend.recomputed_epsilon == pytest.approx(expected, rel=1e-9)
        assert not spend.mismatch
    rows = service.list_ledger(session, federation="heart")
    assert [row.round_number for row in rows] == [1, 2, 3]
    assert rows[-1].recomputed_epsilon > rows[0].recomputed_epsilon


def test_an_under_reported_epsilon_is_flagged(
    session: Session, federation: Federation, enrolled_agent: EnrolledAgent
) -> None:
    round_ = _next_round(session, federation)
    true_epsilon = _opacus_epsilon([(1.0, 0.01, 100)], 1e-5)
    spend = service.record_spend(
        session,
        round_,
        enrolled_agent.institution,
        service.SpendReport(1.0, 0.01, 100, 1e-5, true_epsilon / 2),
        actor=TEST_ACTOR,
    )
    session.commit()
    assert spend.mismatch
    assert service.list_ledger(session, mismatch_only=True)[0].institution == "cleveland"


def test_prv_federations_are_recomputed_with_prv(session: Session, settings: Settings) -> None:
    spec = heart_spec("prvfed").model_copy(update={"dp": DPSpec(accountant=Accountant.PRV)})
    federation = create_federation(session, spec, actor=TEST_ACTOR)
    agent = enroll_agent(session, settings, "prvfed", "a", ("disease",))
    round_ = _next_round(session, federation)
    prv = recompute_epsilon(Accountant.PRV, [MechanismStep(1.0, 0.01, 200)], 1e-5)
    rdp = recompute_epsilon(Accountant.RDP, [MechanismStep(1.0, 0.01, 200)], 1e-5)
    spend = service.record_spend(
        session,
        round_,
        agent.institution,
        service.SpendReport(1.0, 0.01, 200, 1e-5, prv),
        actor=TEST_ACTOR,
    )
    assert spend.accountant is Accountant.PRV
    assert not spend.mismatch
    assert prv < rdp  # PRV is the tighter accountant


@pytest.mark.parametrize(
    "report",
    [
        service.SpendReport(0.0, 0.01, 10, 1e-5, 1.0),
        service.SpendReport(1.0, 1.5, 10, 1e-5, 1.0),
        service.SpendReport(1.0, 0.01, -1, 1e-5, 1.0),
        service.SpendReport(1.0, 0.01, 10, 0.0, 1.0),
        service.SpendReport(1.0, 0.01, 10, 1e-5, float("nan")),
        service.SpendReport(1.0, 0.01, 10, 1e-5, 1.0, budget_epsilon=-2.0),
    ],
)
def test_impossible_reports_are_refused(
    session: Session,
    federation: Federation,
    enrolled_agent: EnrolledAgent,
    report: service.SpendReport,
) -> None:
    round_ = _next_round(session, federation)
    with pytest.raises(InvalidInput):
        service.record_spend(session, round_, enrolled_agent.institution, report, actor=TEST_ACTOR)


def test_one_report_per_institution_and_round(
    session: Session, federation: Federation, enrolled_agent: EnrolledAgent
) -> None:
    round_ = _next_round(session, federation)
    report = service.SpendReport(1.0, 0.01, 10, 1e-5, 0.5)
    service.record_spend(session, round_, enrolled_agent.institution, report, actor=TEST_ACTOR)
    with pytest.raises(StateConflict):
        service.record_spend(session, round_, enrolled_agent.institution, report, actor=TEST_ACTOR)


def test_csv_export_has_a_header_and_one_line_per_row(
    session: Session, federation: Federation, enrolled_agent: EnrolledAgent
) -> None:
    round_ = _next_round(session, federation)
    service.record_spend(
        session,
        round_,
        enrolled_agent.institution,
        service.SpendReport(1.0, 0.01, 10, 1e-5, 0.5),
        actor=TEST_ACTOR,
    )
    session.commit()
    lines = "".join(ledger_csv(service.list_ledger(session))).splitlines()
    assert lines[0].split(",") == list(COLUMNS)
    assert lines[1].startswith("heart,cleveland,1,rdp,1.0,0.01,10,1e-05,0.5,")
    assert len(lines) == 2
