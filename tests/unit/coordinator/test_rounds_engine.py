"""The round engine end to end on SQLite, agents speaking signed HTTP to the app in-process.

Celery is not involved here: the tests run the engine's tasks themselves (`drain`), which is
exactly what a worker would do with the same database. The integration tests do the same
with real worker processes, PostgreSQL and Redis.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from agent.coordinator_client import CoordinatorClient, Rejected
from agent.identity import public_key_bytes
from agent.round_participant import Outcome, RoundParticipant
from agent.round_policy import RoundPolicy
from agent.round_state import InMemoryRoundStateStore
from coordinator import tasks
from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction, AuditEntry
from coordinator.blobs.store import BlobNotFound
from coordinator.db import utcnow
from coordinator.federations.models import Federation
from coordinator.model_versions.service import get_version
from coordinator.rounds import engine, state
from coordinator.rounds.followups import (
    ADVANCE_TASK,
    DISCARD_TASK,
    FINISH_TASK,
    SLICE_TASK,
    Followup,
)
from coordinator.rounds.models import ParticipantStatus, Round, RoundStage
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from federation.layout import ParameterLayout
from tests.round_support import FixedDeltaWork, expected_model, small_deltas

from .conftest import TEST_ACTOR, EnrolledAgent, enroll_agent

TASKS_HELD = (("disease", "severity"), ("disease",), ("severity", "max_heart_rate"))


def drain(
    runtime: Runtime,
    followups: Sequence[Followup] = (),
    *,
    tick: bool = True,
    lost: frozenset[str] = frozenset(),
) -> None:
    """Run the engine's follow-up tasks (and one tick) as a worker would, deadlines aside
    (and the `lost` kinds of tasks, which no worker ever gets)."""
    queue = [*followups, *(tasks.tick(runtime).followups if tick else ())]
    while queue:
        followup = queue.pop(0)
        if followup.task in lost:
            continue
        if followup.countdown is not None and followup.task == ADVANCE_TASK:
            continue  # a deadline: tests move the clock explicitly
        if followup.task == ADVANCE_TASK:
            queue += tasks.advance_round(runtime, *followup.args)
        elif followup.task == SLICE_TASK:
            queue += tasks.unmask_slice(runtime, *followup.args)
        elif followup.task == FINISH_TASK:
            queue += tasks.finish_round(runtime, *followup.args)
        elif followup.task == DISCARD_TASK:
            queue += tasks.discard_round_blobs(runtime, *followup.args)


@pytest.fixture
def small_slices(settings: Settings) -> Settings:
    return settings.model_copy(update={"unmask_slice_coordinates": 1024})


class InlineWorker:
    """The app's follow-up sink in these tests: runs what a request asks for at once, as a
    worker with an empty queue would (deadlines aside)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.lost: frozenset[str] = frozenset()  # tasks no worker takes

    def send(self, followups: Sequence[Followup]) -> None:
        drain(self.runtime, followups, tick=False, lost=self.lost)


@pytest.fixture
def round_app(small_slices: Settings, runtime: Runtime) -> FastAPI:
    from coordinator.app import create_app

    runtime.settings = small_slices
    app = create_app(small_slices, start_embedded_worker=False)
    app.state.runtime = runtime
    app.state.followups = InlineWorker(runtime)
    return app


@pytest.fixture
def http(round_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(round_app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def agents(session: Session, settings: Settings, federation: Federation) -> list[EnrolledAgent]:
    return [
        enroll_agent(session, settings, federation.name, f"site_{i}", held)
        for i, held in enumerate(TASKS_HELD)
    ]


def participant(
    http: TestClient, agent: EnrolledAgent, work: FixedDeltaWork, *, allow_unmasked: bool = False
) -> RoundParticipant:
    client = CoordinatorClient(
        "http://testserver",
        agent.private_key,
        agent.institution.key_id,
        transport=http._transport,
        retries=0,
    )
    policy = RoundPolicy(
        client.profile(), public_key_bytes(agent.private_key), allow_unmasked=allow_unmasked
    )
    return RoundParticipant(
        client, agent.private_key, InMemoryRoundStateStore(), work, policy=policy
    )


def works_for(federation: Federation, count: int) -> list[FixedDeltaWork]:
    spec = federation.spec
    deltas = small_deltas(spec, count)
    return [
        FixedDeltaWork(spec, deltas[i], dict.fromkeys(TASKS_HELD[i % 3], 10)) for i in range(count)
    ]


def run_until(
    runtime: Runtime, parts: list[RoundParticipant], stage: RoundStage, round_id: int
) -> Round:
    for _ in range(20):
        for part in parts:
            part.step()
        drain(runtime)
        with runtime.db.scope() as session:
            found = session.get_one(Round, round_id)
            if found.stage is stage or found.stage in (RoundStage.COMPLETED, RoundStage.FAILED):
                session.expunge(found)
                return found
    raise AssertionError(f"round {round_id} never reached {stage.value}")


def start(runtime: Runtime, federation: str) -> int:
    with runtime.db.scope() as session:
        round_, followups = engine.start_round(
            session, runtime.blobs, runtime.settings, federation, actor=TEST_ACTOR
        )
        round_id = round_.id
    drain(runtime, followups)
    return round_id


def stored_model(runtime: Runtime, federation: str, version: int) -> np.ndarray:  # type: ignore[type-arg]
    with runtime.db.scope() as session:
        row = get_version(session, federation, version)
        content = runtime.blobs.read_range(row.blob_key, 0, row.size_bytes)
    return np.frombuffer(content, dtype="<f4").astype(np.float64)


def test_a_complete_round_stores_the_aggregate_of_the_agents_updates(
    runtime: Runtime, http: TestClient, federation: Federation, agents: list[EnrolledAgent]
) -> None:
    works = works_for(federation, 3)
    parts = [participant(http, a, w) for a, w in zip(agents, works, strict=True)]
    round_id = start(runtime, federation.name)
    done = run_until(runtime, parts, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED, done.failure_reason
    base = stored_model(runtime, federation.name, 0)
    expected = expected_model(federation.spec, base, works)
    np.testing.assert_allclose(stored_model(runtime, federation.name, 1), expected, atol=2e-6)
    with runtime.db.scope() as session:
        round_ = session.get_one(Round, round_id)
        assert {p.status for p in round_.participants} == {ParticipantStatus.COMPLETED}
        actions = [e.action for e in session.query(AuditEntry).order_by(AuditEntry.seq)]
        assert actions.count(AuditAction.ROUND_STAGE_CHANGED) == 7
        assert AuditAction.MODEL_VERSION_STORED in actions
        assert audit.verify(session).ok
    assert [p.step().outcome for p in parts] == [Outcome.COMPLETED] * 3


def test_repeated_messages_are_answered_repeat_and_change_nothing(
    runtime: Runtime, http: TestClient, federation: Federation, agents: list[EnrolledAgent]
) -> None:
    works = works_for(federation, 3)
    parts = [participant(http, a, w) for a, w in zip(agents, works, strict=True)]
    round_id = start(runtime, federation.name)
    assert parts[0].step().outcome is Outcome.ADVERTISED
    assignment = parts[0].client.work().assignment
    assert assignment is not None
    from privacy.secagg import ClientRound, IdentityKey

    state = parts[0].store.load(f"{federation.name}/round-{assignment.round:06d}")
    assert state is not None
    from agent.round_state import ParticipantState

    saved = ParticipantState.from_bytes(state)
    assert saved.client_state is not None
    client = ClientRound.restore(saved.client_state, IdentityKey(agents[0].private_key))
    again = parts[0].client.advertise_keys(assignment.round, client.advert().to_bytes())
    assert again.outcome.value == "repeat"
    other = ClientRound.start(client.config, client.participant, IdentityKey(agents[0].private_key))
    with pytest.raises(Rejected) as refused:
        parts[0].client.advertise_keys(assignment.round, other.advert().to_bytes())
    assert refused.value.status == 409
    done = run_until(runtime, parts, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED


def test_a_dropout_after_sharing_keys_still_completes_with_the_others(
    runtime: Runtime,
    session: Session,
    settings: Settings,
    federation: Federation,
    http: TestClient,
    agents: list[EnrolledAgent],
) -> None:
    agents.append(enroll_agent(session, settings, federation.name, "site_3", ("disease",)))
    works = works_for(federation, 4)
    parts = [participant(http, a, w) for a, w in zip(agents, works, strict=True)]
    round_id = start(runtime, federation.name)
    run_until(runtime, parts, RoundStage.MASKED_INPUT, round_id)
    alive = parts[:3]
    for _ in range(3):
        for part in alive:
            part.step()
        drain(runtime)
    _expire_deadline(runtime, round_id)
    drain(runtime)
    done = run_until(runtime, alive, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED, done.failure_reason
    base = stored_model(runtime, federation.name, 0)
    expected = expected_model(federation.spec, base, works[:3])
    np.testing.assert_allclose(stored_model(runtime, federation.name, 1), expected, atol=2e-6)
    with runtime.db.scope() as check:
        dropped = [p for p in check.get_one(Round, round_id).participants if p.secagg_id == 4]
        assert dropped[0].status is ParticipantStatus.DROPPED
        assert dropped[0].dropped_at_stage is RoundStage.MASKED_INPUT


def _expire_deadline(runtime: Runtime, round_id: int) -> None:
    with runtime.db.scope() as session:
        round_ = session.get_one(Round, round_id)
        round_.stage_deadline = utcnow() - timedelta(seconds=1)
        session.commit()


def test_a_round_below_threshold_fails_with_the_reason_recorded(
    runtime: Runtime, http: TestClient, federation: Federation, agents: list[EnrolledAgent]
) -> None:
    works = works_for(federation, 3)
    parts = [participant(http, a, w) for a, w in zip(agents, works, strict=True)]
    round_id = start(runtime, federation.name)
    parts[0].step()  # only one of three advertises; t = 2
    _expire_deadline(runtime, round_id)
    drain(runtime)
    with runtime.db.scope() as session:
        failed = session.get_one(Round, round_id)
        assert failed.stage is RoundStage.FAILED
        assert failed.failure_reason is not None
        assert "advertise_keys" in failed.failure_reason
    assert parts[0].step().outcome is Outcome.FAILED


def blob_exists(runtime: Runtime, key: str) -> bool:
    try:
        runtime.blobs.stat(key)
    except BlobNotFound:
        return False
    return True


@pytest.mark.parametrize("last_stage", [RoundStage.COMPLETED, RoundStage.FAILED])
def test_a_finished_round_leaves_no_uploads_or_slices_behind(
    runtime: Runtime,
    http: TestClient,
    federation: Federation,
    agents: list[EnrolledAgent],
    last_stage: RoundStage,
) -> None:
    works = works_for(federation, 3)
    parts = [participant(http, a, w) for a, w in zip(agents, works, strict=True)]
    round_id = start(runtime, federation.name)
    run_until(runtime, parts, RoundStage.UNMASKING, round_id)
    with runtime.db.scope() as session:
        uploads = state.round_blob_keys(session, round_id)
    assert len(uploads) == 3
    assert all(blob_exists(runtime, key) for key in uploads)
    if last_stage is RoundStage.FAILED:
        parts[0].step()  # one of three sends its unmasking shares; t = 2
        drain(runtime)
        _expire_deadline(runtime, round_id)
        drain(runtime)
    done = run_until(runtime, parts, last_stage, round_id)
    assert done.stage is last_stage, done.failure_reason
    if last_stage is RoundStage.FAILED:
        assert done.failure_reason is not None
        assert "unmasking" in done.failure_reason
    with runtime.db.scope() as session:
        keys = state.round_blob_keys(session, round_id)
        model = get_version(session, federation.name, 0).blob_key
    assert set(uploads) <= set(keys)  # the rows stay, as the round's record
    assert not any(blob_exists(runtime, key) for key in keys)
    assert blob_exists(runtime, model)  # the model versions are not the round's to delete


def test_a_decline_drops_the_agent_at_once_and_the_round_goes_on(
    runtime: Runtime,
    session: Session,
    settings: Settings,
    federation: Federation,
    http: TestClient,
    agents: list[EnrolledAgent],
) -> None:
    agents.append(enroll_agent(session, settings, federation.name, "site_3", ("disease",)))
    works = works_for(federation, 4)
    works[3].decline_reason = "budget"
    parts = [participant(http, a, w) for a, w in zip(agents, works, strict=True)]
    round_id = start(runtime, federation.name)
    assert parts[3].step().outcome is Outcome.DECLINED
    done = run_until(runtime, parts, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED, done.failure_reason
    assert works[3].trained == []
    base = stored_model(runtime, federation.name, 0)
    np.testing.assert_allclose(
        stored_model(runtime, federation.name, 1),
        expected_model(federation.spec, base, works[:3]),
        atol=2e-6,
    )
    with runtime.db.scope() as check:
        federation_row = check.get_one(Federation, federation.id)
        eligible = engine.eligible_institutions(check, federation_row, settings, utcnow())
        assert agents[3].institution.id not in {i.id for i in eligible}


def test_the_update_layout_fixes_the_masked_upload_size(federation: Federation) -> None:
    from federation.round_api import masked_update_size
    from privacy.secagg import MaskedInput

    layout = ParameterLayout.update(federation.spec)
    upload = MaskedInput(b"\x00" * 32, 1, np.zeros(layout.length, dtype=np.uint32)).to_bytes()
    assert len(upload) == masked_update_size(layout.length, 32)
    assert len(upload) - 4 * layout.length == MaskedInput.HEADER_SIZE


def test_plain_aggregation_runs_only_where_the_coordinator_allows_it(
    runtime: Runtime, session: Session, settings: Settings, http: TestClient
) -> None:
    from coordinator.errors import InvalidInput
    from coordinator.federations.service import create_federation

    from .conftest import heart_spec

    spec = heart_spec("plainfed")
    spec = spec.model_copy(update={"secagg": spec.secagg.model_copy(update={"mode": "plain"})})
    federation = create_federation(session, spec, actor=TEST_ACTOR)
    agents = [
        enroll_agent(session, settings, federation.name, f"site_{i}", held)
        for i, held in enumerate(TASKS_HELD)
    ]
    works = works_for(federation, 3)
    # Institutions that opted into unmasked rounds (agent.toml; loopback only).
    parts = [
        participant(http, a, w, allow_unmasked=True) for a, w in zip(agents, works, strict=True)
    ]
    name = federation.name
    with pytest.raises(InvalidInput, match="FMTL_ALLOW_PLAIN_AGGREGATION"):
        engine.start_round(session, runtime.blobs, runtime.settings, name, actor=TEST_ACTOR)
    session.rollback()
    session.close()
    runtime.settings = runtime.settings.model_copy(update={"allow_plain_aggregation": True})
    round_id = start(runtime, name)
    done = run_until(runtime, parts, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED, done.failure_reason
    stages = [record.stage for record in _stages(runtime, round_id)]
    assert RoundStage.ADVERTISE_KEYS not in stages
    base = stored_model(runtime, name, 0)
    np.testing.assert_allclose(
        stored_model(runtime, name, 1), expected_model(spec, base, works), atol=2e-6
    )


def _stages(runtime: Runtime, round_id: int) -> list[object]:
    from coordinator.rounds.models import RoundStageRecord

    with runtime.db.scope() as session:
        records = session.query(RoundStageRecord).filter_by(round_id=round_id).all()
        for record in records:
            session.expunge(record)
        return list(records)


def test_a_slice_whose_worker_died_is_redone_after_its_lease(
    runtime: Runtime, http: TestClient, federation: Federation, agents: list[EnrolledAgent]
) -> None:
    from coordinator.rounds.models import SliceState, UnmaskSlice

    works = works_for(federation, 3)
    parts = [participant(http, a, w) for a, w in zip(agents, works, strict=True)]
    round_id = start(runtime, federation.name)
    # Run the protocol, but hold back the aggregation tasks: a "worker" takes slice 0's
    # lease and dies.
    http.app.state.followups.lost = frozenset({SLICE_TASK, FINISH_TASK})  # type: ignore[attr-defined]
    for _ in range(10):
        for part in parts:
            part.step()
        tasks.advance_round(runtime, round_id)  # its follow-ups are dropped: nobody works
        with runtime.db.scope() as session:
            if session.get_one(Round, round_id).stage is RoundStage.AGGREGATING:
                break
    with runtime.db.scope() as session:
        slices = session.query(UnmaskSlice).filter_by(round_id=round_id).all()
        assert len(slices) > 1
        slices[0].lease_expires_at = utcnow() + timedelta(hours=1)  # held by a dead worker
        slices[0].attempts = 1
        session.commit()
    assert tasks.unmask_slice(runtime, round_id, 0) == []  # the lease is still live
    for index in range(1, len(slices)):
        tasks.unmask_slice(runtime, round_id, index)
    assert tasks.finish_round(runtime, round_id) == []  # slice 0 is still pending
    with runtime.db.scope() as session:
        row = session.query(UnmaskSlice).filter_by(round_id=round_id, index=0).one()
        assert row.state is SliceState.PENDING
        row.lease_expires_at = utcnow() - timedelta(seconds=1)  # the lease ran out
        session.commit()
    resent = tasks.advance_round(runtime, round_id)
    assert Followup(SLICE_TASK, (round_id, 0)) in resent
    drain(runtime, resent)
    with runtime.db.scope() as session:
        assert session.get_one(Round, round_id).stage is RoundStage.COMPLETED
        row = session.query(UnmaskSlice).filter_by(round_id=round_id, index=0).one()
        assert row.attempts == 2
    base = stored_model(runtime, federation.name, 0)
    np.testing.assert_allclose(
        stored_model(runtime, federation.name, 1),
        expected_model(federation.spec, base, works),
        atol=2e-6,
    )


def test_a_federation_with_a_round_interval_gets_rounds_from_the_tick(
    runtime: Runtime, session: Session, settings: Settings
) -> None:
    from coordinator.federations.service import create_federation

    from .conftest import heart_spec

    spec = heart_spec("scheduled")
    spec = spec.model_copy(
        update={"schedule": spec.schedule.model_copy(update={"round_interval_s": 3600.0})}
    )
    federation = create_federation(session, spec, actor=TEST_ACTOR)
    for i, held in enumerate(TASKS_HELD):
        enroll_agent(session, settings, federation.name, f"site_{i}", held)
    first = tasks.tick(runtime)
    assert len(first.started_rounds) == 1
    assert tasks.tick(runtime).started_rounds == ()  # next one in an hour
    with runtime.db.scope() as check:
        started = check.get_one(Round, first.started_rounds[0])
        assert started.stage is RoundStage.ADVERTISE_KEYS
        assert len(started.participants) == 3


def test_a_long_poll_answers_when_the_stage_changes_and_waits_while_it_does_not(
    runtime: Runtime,
    http: TestClient,
    federation: Federation,
    agents: list[EnrolledAgent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from federation.round_api import Stage, work_state

    # Only an event can wake the poll early: its periodic re-read is pushed out of reach.
    monkeypatch.setattr(
        runtime, "settings", runtime.settings.model_copy(update={"work_recheck_s": 600.0})
    )
    works = works_for(federation, 3)
    parts = [participant(http, a, w) for a, w in zip(agents, works, strict=True)]
    start(runtime, federation.name)
    first = parts[0].client.work()
    assert first.assignment is not None
    assert first.assignment.stage is Stage.ADVERTISE_KEYS
    seen = work_state(first.assignment)
    # Nothing changes: the poll is held for its whole wait, then answers the same work.
    same = parts[0].client.work(wait_s=0.3, seen=seen)
    assert work_state(same.assignment) == seen
    assert parts[0].client.long_poll
    answers = []
    poll = threading.Thread(
        target=lambda: answers.append(parts[0].client.work(wait_s=30.0, seen=seen)),
        daemon=True,
    )
    poll.start()
    deadline = utcnow() + timedelta(seconds=20)
    while runtime.events.waiting() == 0 and utcnow() < deadline:
        poll.join(0.05)
    assert runtime.events.waiting() == 1  # it waits, holding no database session
    for part in parts:  # every agent advertises: the last message closes the stage
        part.step()
    poll.join(20)  # well before the poll's own 30 s: woken by the stage change
    assert not poll.is_alive()
    assert answers[0].assignment is not None
    assert answers[0].assignment.stage is Stage.SHARE_KEYS
