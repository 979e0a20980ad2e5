"""The ledger is complete, agents notice a rolled-back audit log, and one bad report never
stalls a federation (issue 11, points 4, 5, 6).

Rounds run end to end on SQLite with agents speaking signed HTTP to the app in-process, as
in `test_rounds_engine.py` (whose fixtures these tests share: imported, hence F811).
"""
# ruff: noqa: F811

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from agent.audit_anchor import AuditAnchor
from agent.coordinator_client import Rejected
from agent.round_participant import Outcome
from agent.round_state import ParticipantState
from coordinator.audit.models import AuditAction, AuditEntry
from coordinator.auth.models import Role
from coordinator.federations.models import Federation
from coordinator.ledger import service as ledger
from coordinator.ledger.models import PrivacySpend
from coordinator.rounds.followups import FINISH_TASK, SLICE_TASK
from coordinator.rounds.models import (
    Participant,
    ProtocolMessageKind,
    ProtocolRecord,
    Round,
    RoundStage,
)
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from federation.round_api import SpendReport, TrainingReport

from .conftest import EnrolledAgent, bearer
from .test_rounds_engine import (  # noqa: F401 - fixtures
    agents,
    blob_exists,
    drain,
    http,
    participant,
    round_app,
    run_until,
    small_slices,
    start,
    works_for,
)


def _parts(http: TestClient, agents: list[EnrolledAgent], federation: Federation):  # type: ignore[no-untyped-def]
    works = works_for(federation, len(agents))
    return works, [participant(http, a, w) for a, w in zip(agents, works, strict=True)]


def _spends(runtime: Runtime, round_id: int) -> list[PrivacySpend]:
    with runtime.db.scope() as session:
        rows = list(
            session.scalars(sa.select(PrivacySpend).where(PrivacySpend.round_id == round_id))
        )
        session.expunge_all()
    return rows


def _round_number(runtime: Runtime, round_id: int) -> int:
    with runtime.db.scope() as session:
        return session.get_one(Round, round_id).number


def test_a_spend_is_on_record_with_its_run_id_as_soon_as_its_report_arrives(
    runtime: Runtime, http: TestClient, federation: Federation, agents: list[EnrolledAgent]
) -> None:
    _, parts = _parts(http, agents, federation)
    round_id = start(runtime, federation.name)
    run_until(runtime, parts, RoundStage.CONSISTENCY_CHECK, round_id)
    rows = _spends(runtime, round_id)
    assert len(rows) == 3  # before the round completes
    assert all(row.run_id is not None and len(row.run_id) >= 16 for row in rows)
    assert len({row.run_id for row in rows}) == 3
    assert not any(row.delta_mismatch for row in rows)


def test_a_round_failed_after_the_uploads_keeps_every_spend(
    runtime: Runtime,
    session: Session,
    settings: Settings,
    http: TestClient,
    federation: Federation,
    agents: list[EnrolledAgent],
) -> None:
    _, parts = _parts(http, agents, federation)
    round_id = start(runtime, federation.name)
    run_until(runtime, parts, RoundStage.CONSISTENCY_CHECK, round_id)
    number = _round_number(runtime, round_id)
    answer = http.post(
        f"/api/v1/federations/{federation.name}/rounds/{number}/fail",
        json={"reason": "operator test"},
        headers=bearer(session, settings, Role.ADMIN),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["stage"] == "failed"
    assert len(_spends(runtime, round_id)) == 3
    auditor = bearer(session, settings, Role.AUDITOR)
    assert http.get("/api/v1/ledger/unreported", headers=auditor).json() == []


def test_an_ended_round_whose_spend_never_arrived_is_flagged_for_auditors(
    runtime: Runtime,
    session: Session,
    settings: Settings,
    http: TestClient,
    federation: Federation,
    agents: list[EnrolledAgent],
) -> None:
    _, parts = _parts(http, agents, federation)
    lost: list[int] = []
    parts[2].client.report = lambda number, report: lost.append(number)  # type: ignore[method-assign,assignment,return-value]
    round_id = start(runtime, federation.name)
    done = run_until(runtime, parts, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED, done.failure_reason
    assert lost
    assert len(_spends(runtime, round_id)) == 2
    answer = http.get("/api/v1/ledger/unreported", headers=bearer(session, settings, Role.AUDITOR))
    assert answer.status_code == 200, answer.text
    assert answer.json() == [
        {
            "federation": federation.name,
            "institution": agents[2].institution.name,
            "round": done.number,
            "stage": "completed",
        }
    ]


def test_an_absurd_report_is_refused_at_arrival_and_the_round_still_completes(
    runtime: Runtime,
    session: Session,
    settings: Settings,
    http: TestClient,
    federation: Federation,
    agents: list[EnrolledAgent],
) -> None:
    """A report with noise multiplier 0 used to be stored as is; the round's `finish`
    then raised on it and the round stayed in AGGREGATING, blocking every later round."""
    works, parts = _parts(http, agents, federation)
    works[1].noise_multiplier = 0.0
    round_id = start(runtime, federation.name)
    done = run_until(runtime, parts, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED, done.failure_reason
    assert {row.institution_id for row in _spends(runtime, round_id)} == {
        agents[0].institution.id,
        agents[2].institution.id,
    }
    with runtime.db.scope() as check:
        unreported = ledger.unreported_spends(check)
    assert [(u.institution, u.round_number) for u in unreported] == [
        (agents[1].institution.name, done.number)
    ]
    assert start(runtime, federation.name) != round_id  # the federation goes on


def _report(**spend: object) -> TrainingReport:
    fields: dict[str, object] = {
        "noise_multiplier": 1.0,
        "sample_rate": 0.01,
        "steps": 100,
        "delta": 1e-5,
        "epsilon": 0.5,
        "accountant": "rdp",
    }
    clipped = spend.pop("clipped", 0)
    fields.update(spend)
    return TrainingReport(spend=SpendReport.model_validate(fields), clipped=clipped)


@pytest.mark.parametrize(
    ("report", "problem"),
    [
        (_report(noise_multiplier=0.0), "noise_multiplier must be a positive"),
        (_report(clipped=10**9), "clipped coordinates reported"),
        (_report(accountant="prv"), "accounts with 'rdp'"),
        (TrainingReport(spend=None), "must carry its spend"),
    ],
)
def test_a_bad_report_gets_a_problem_and_changes_nothing(
    runtime: Runtime,
    http: TestClient,
    federation: Federation,
    agents: list[EnrolledAgent],
    report: TrainingReport,
    problem: str,
) -> None:
    _, parts = _parts(http, agents, federation)
    send_report = parts[0].client.report
    parts[0].client.report = lambda number, report: None  # type: ignore[method-assign,assignment,return-value]
    round_id = start(runtime, federation.name)
    run_until(runtime, parts, RoundStage.CONSISTENCY_CHECK, round_id)
    number = _round_number(runtime, round_id)
    before = len(_spends(runtime, round_id))
    with pytest.raises(Rejected) as refused:
        send_report(number, report)
    assert refused.value.status == 422
    assert problem in refused.value.detail
    assert len(_spends(runtime, round_id)) == before


def test_a_reported_delta_other_than_the_specs_is_recorded_and_flagged(
    runtime: Runtime, http: TestClient, federation: Federation, agents: list[EnrolledAgent]
) -> None:
    works, parts = _parts(http, agents, federation)
    works[0].spend_delta = 1e-3  # a weaker guarantee than the spec's 1e-5
    round_id = start(runtime, federation.name)
    run_until(runtime, parts, RoundStage.CONSISTENCY_CHECK, round_id)
    with runtime.db.scope() as session:
        flagged = ledger.list_ledger(session, mismatch_only=True)
    assert [(r.institution, r.delta, r.spec_delta) for r in flagged if r.delta_mismatch] == [
        (agents[0].institution.name, 1e-3, 1e-5)
    ]
    assert not any(r.delta_mismatch for r in flagged if r.institution != agents[0].institution.name)


def test_an_admin_fails_a_stuck_round_over_the_api_and_the_next_one_opens(
    runtime: Runtime,
    session: Session,
    settings: Settings,
    round_app: object,
    http: TestClient,
    federation: Federation,
    agents: list[EnrolledAgent],
) -> None:
    # The worker that stores the last slice finishes the round itself, so a stuck round is
    # one whose slice tasks (and the tick's finish task) are lost with their worker.
    stuck = frozenset({SLICE_TASK, FINISH_TASK})
    round_app.state.followups.lost = stuck  # type: ignore[attr-defined]
    _, parts = _parts(http, agents, federation)
    round_id = start(runtime, federation.name)
    for _ in range(8):
        for part in parts:
            part.step()
        drain(runtime, lost=stuck)
    with runtime.db.scope() as check:
        assert check.get_one(Round, round_id).stage is RoundStage.AGGREGATING
    number = _round_number(runtime, round_id)
    url = f"/api/v1/federations/{federation.name}/rounds/{number}/fail"
    for role in (Role.OPERATOR, Role.AUDITOR):
        denied = http.post(url, json={"reason": "x"}, headers=bearer(session, settings, role))
        assert denied.status_code == 403
    admin = bearer(session, settings, Role.ADMIN)
    assert http.post(url, json={"reason": ""}, headers=admin).status_code == 422
    answer = http.post(url, json={"reason": "aggregation stuck"}, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["failure_reason"] == "failed by an admin: aggregation stuck"
    again = http.post(url, json={"reason": "again"}, headers=admin)
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    with runtime.db.scope() as check:
        entry = check.scalars(
            sa.select(AuditEntry)
            .where(AuditEntry.action == AuditAction.ROUND_STAGE_CHANGED)
            .order_by(AuditEntry.seq.desc())
        ).first()
        assert entry is not None
        assert entry.actor.startswith("token:")
        assert "aggregation stuck" in entry.details
    assert start(runtime, federation.name) != round_id


def test_unmask_responses_are_purged_when_the_round_ends(
    runtime: Runtime, http: TestClient, federation: Federation, agents: list[EnrolledAgent]
) -> None:
    _, parts = _parts(http, agents, federation)
    round_id = start(runtime, federation.name)
    done = run_until(runtime, parts, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED, done.failure_reason
    with runtime.db.scope() as session:
        kinds = set(
            session.scalars(
                sa.select(ProtocolRecord.kind)
                .join(Participant, ProtocolRecord.participant_id == Participant.id)
                .where(Participant.round_id == round_id)
            )
        )
    assert ProtocolMessageKind.UNMASK_SHARES not in kinds
    assert ProtocolMessageKind.TRAINING_REPORT in kinds  # the rest is the round's record


def test_an_upload_after_the_masked_input_stage_reads_and_stores_nothing(
    runtime: Runtime, http: TestClient, federation: Federation, agents: list[EnrolledAgent]
) -> None:
    _, parts = _parts(http, agents, federation)
    round_id = start(runtime, federation.name)
    run_until(runtime, parts, RoundStage.CONSISTENCY_CHECK, round_id)
    number = _round_number(runtime, round_id)
    saved = parts[0].store.load(ParticipantState.key(federation.name, number))
    assert saved is not None
    masked = ParticipantState.from_bytes(saved).masked_update
    assert masked is not None
    assert parts[0].client.upload_masked_update(number, masked).outcome.value == "repeat"
    done = run_until(runtime, parts, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED, done.failure_reason
    with runtime.db.scope() as session:
        from coordinator.rounds import state

        keys = state.round_blob_keys(session, round_id)
    assert not any(blob_exists(runtime, key) for key in keys)
    with pytest.raises(Rejected) as refused:
        parts[0].client.upload_masked_update(number, masked)
    assert refused.value.status == 409
    assert not any(blob_exists(runtime, key) for key in keys)  # nothing written again


def test_an_agent_leaves_the_round_when_the_audit_checkpoints_were_rolled_back(
    runtime: Runtime,
    settings: Settings,
    http: TestClient,
    federation: Federation,
    agents: list[EnrolledAgent],
    tmp_path: Path,
) -> None:
    """The assignment carries the latest signed checkpoint; an agent that saw checkpoint n
    refuses a coordinator whose database now shows an older one (history rolled back)."""
    from coordinator import tasks
    from coordinator.audit.models import AuditCheckpointRecord

    runtime.settings = runtime.settings.model_copy(update={"audit_checkpoint_interval_s": 0.0})
    _, parts = _parts(http, agents, federation)
    key = runtime.signing_key.public_key
    parts[0].audit_anchor = AuditAnchor(
        tmp_path / "anchor.json", key, parts[0].client.audit_checkpoints
    )
    round_id = start(runtime, federation.name)
    parts[0].step()
    assert tasks.sign_audit_checkpoint(runtime) is not None
    run_until(runtime, parts, RoundStage.SHARE_KEYS, round_id)
    kept = parts[0].audit_anchor.kept
    assert kept is not None
    assert kept.number >= 2  # it followed the chain as it grew
    with runtime.db.scope() as writer:
        writer.execute(sa.delete(AuditCheckpointRecord).where(AuditCheckpointRecord.number > 1))
        writer.commit()
    result = parts[0].step()
    assert result.outcome is Outcome.DROPPED
    assert "audit log history was rewritten" in result.detail
