# ruff: noqa: F811  (the fixtures of test_rounds_engine are imported by name)
"""A coordinator that hands out a too-weak SecAgg+ graph: honest agents refuse it before they
send anything; agents whose policy accepts it complete the round over the derived graph.

The coordinator is the real one (engine, app, signed HTTP, SQLite) with one hook that makes
it lie: `engine._graph` returns a graph of degree 2 for four participants.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from agent.coordinator_client import CoordinatorClient
from agent.identity import public_key_bytes
from agent.round_participant import Outcome, RoundParticipant
from agent.round_policy import RoundPolicy
from agent.round_state import InMemoryRoundStateStore
from coordinator.federations.models import Federation
from coordinator.federations.service import create_federation
from coordinator.rounds import engine
from coordinator.rounds.models import (
    ParticipantStatus,
    ProtocolMessageKind,
    ProtocolRecord,
    Round,
    RoundStage,
)
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from privacy.secagg import GraphPolicy, NeighbourGraph
from tests.round_support import FixedDeltaWork, expected_model

from .conftest import TEST_ACTOR, EnrolledAgent, enroll_agent, heart_spec
from .test_rounds_engine import (  # noqa: F401 - fixtures
    agents,
    http,
    round_app,
    run_until,
    small_slices,
    start,
    stored_model,
    works_for,
)


def _participant(
    http: TestClient, agent: EnrolledAgent, work: FixedDeltaWork, policy: GraphPolicy | None
) -> RoundParticipant:
    client = CoordinatorClient(
        "http://testserver",
        agent.private_key,
        agent.institution.key_id,
        transport=http._transport,
        retries=0,
    )
    round_policy = RoundPolicy(client.profile(), public_key_bytes(agent.private_key), graph=policy)
    return RoundParticipant(
        client, agent.private_key, InMemoryRoundStateStore(), work, policy=round_policy
    )


@pytest.fixture
def federation(session: Session) -> Federation:
    """The heart federation with the SecAgg+ graph at every size (the graph's strength, not
    its presence, is what these tests are about)."""
    spec = heart_spec()
    secagg = spec.secagg.model_copy(update={"neighbour_graph": "always"})
    return create_federation(session, spec.model_copy(update={"secagg": secagg}), actor=TEST_ACTOR)


@pytest.fixture
def weak_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_graph", lambda spec, n: NeighbourGraph(2, 2))


def _four(
    session: Session, settings: Settings, federation: Federation, agents: list[EnrolledAgent]
) -> list[EnrolledAgent]:
    return [*agents, enroll_agent(session, settings, federation.name, "site_3", ("disease",))]


@pytest.mark.usefixtures("weak_graph")
def test_honest_agents_refuse_a_too_weak_graph_before_sending_anything(
    runtime: Runtime,
    session: Session,
    settings: Settings,
    federation: Federation,
    http: TestClient,
    agents: list[EnrolledAgent],
) -> None:
    everyone = _four(session, settings, federation, agents)
    works = works_for(federation, 4)
    parts = [_participant(http, a, w, None) for a, w in zip(everyone, works, strict=True)]
    round_id = start(runtime, federation.name)
    results = [part.step() for part in parts]
    assert [r.outcome for r in results] == [Outcome.REFUSED] * 4
    assert all("refused (graph)" in r.detail for r in results)
    done = run_until(runtime, parts, RoundStage.FAILED, round_id)
    assert done.stage is RoundStage.FAILED
    assert all(w.trained == [] for w in works)
    with runtime.db.scope() as check:
        round_ = check.get_one(Round, round_id)
        assert {p.status for p in round_.participants} == {ParticipantStatus.DECLINED}
        kinds = {
            record.kind
            for record in check.query(ProtocolRecord).filter(
                ProtocolRecord.participant_id.in_([p.id for p in round_.participants])
            )
        }
        assert kinds == {ProtocolMessageKind.DECLINE}  # no key advert, nothing else


@pytest.mark.usefixtures("weak_graph")
def test_agents_that_accept_the_graph_complete_the_round_over_the_derived_graph(
    runtime: Runtime,
    session: Session,
    settings: Settings,
    federation: Federation,
    http: TestClient,
    agents: list[EnrolledAgent],
) -> None:
    everyone = _four(session, settings, federation, agents)
    works = works_for(federation, 4)
    trusting = GraphPolicy(collusion_fraction=0.0, dropout_fraction=0.0)
    parts = [_participant(http, a, w, trusting) for a, w in zip(everyone, works, strict=True)]
    round_id = start(runtime, federation.name)
    done = run_until(runtime, parts, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED, done.failure_reason
    base = stored_model(runtime, federation.name, 0)
    np.testing.assert_allclose(
        stored_model(runtime, federation.name, 1),
        expected_model(federation.spec, base, works),
        atol=2e-6,
    )
