"""Seed a coordinator's database with a federation that has run many rounds, fast.

Rows are inserted in bulk, shaped exactly as the round engine, the ledger and the audit log
leave them (stages with timings, participants with dropouts, task-wise results per
institution and federation-wide, cumulative ε reported and recomputed, a valid hash chain),
so that console pages and the auditor's report can be tested and measured at the scale of
1,000 rounds and 100 institutions without running them. The ε figures follow a plausible
curve; they are not recomputed by the accountant (pages display, they do not recompute).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit.models import GENESIS_HASH, AuditAction, AuditEntry
from coordinator.audit.service import canonical_json, entry_hash
from coordinator.federations.models import Federation
from coordinator.institutions.models import EnrollmentState, Institution, institution_tasks
from coordinator.ledger.models import PrivacySpend
from coordinator.results.models import TaskMetric
from coordinator.rounds.models import (
    Participant,
    ParticipantStatus,
    Round,
    RoundStage,
    RoundStageRecord,
)
from federation.spec import Accountant

T0: Final = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
PROTOCOL_STAGES: Final = (
    RoundStage.ADVERTISE_KEYS,
    RoundStage.SHARE_KEYS,
    RoundStage.MASKED_INPUT,
    RoundStage.CONSISTENCY_CHECK,
    RoundStage.UNMASKING,
    RoundStage.AGGREGATING,
)
ROUND_SPACING: Final = timedelta(minutes=2)


@dataclass(frozen=True)
class Seeded:
    federation: str
    institutions: list[str]
    rounds: int
    mismatch: tuple[str, int] | None  # (institution, round) reported wrong
    per_institution_metrics: bool


def _chunks(rows: list[dict[str, object]], size: int = 5000) -> Iterator[list[dict[str, object]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def seed(
    session: Session,
    federation: Federation,
    *,
    institutions: int = 4,
    rounds: int = 5,
    per_institution_metrics: bool = True,
    budget: float = 8.0,
    mismatch: bool = True,
) -> Seeded:
    """Enrolled institutions and completed rounds with everything pages read."""
    tasks = list(federation.tasks)
    names = [f"hospital_{i:03d}" for i in range(institutions)]
    session.execute(
        sa.insert(Institution),
        [
            {
                "federation_id": federation.id,
                "name": name,
                "state": EnrollmentState.ENROLLED,
                "public_key": (federation.id * 1_000_000 + i + 1).to_bytes(8, "big") * 4,
                "invited_at": T0 - timedelta(days=1),
                "enrolled_at": T0 - timedelta(hours=12),
                "last_seen_at": T0 + ROUND_SPACING * rounds,
            }
            for i, name in enumerate(names)
        ],
    )
    ids = dict(
        session.execute(
            sa.select(Institution.name, Institution.id).where(
                Institution.federation_id == federation.id, Institution.name.in_(names)
            )
        ).all()
    )
    session.execute(
        sa.insert(institution_tasks),
        [
            {"institution_id": ids[name], "task_id": task.id}
            for i, name in enumerate(names)
            for j, task in enumerate(tasks)
            if j == 0 or (i + j) % 2 == 0
        ],
    )
    first_number = (
        session.scalar(
            sa.select(sa.func.max(Round.number)).where(Round.federation_id == federation.id)
        )
        or 0
    ) + 1
    session.execute(
        sa.insert(Round),
        [
            {
                "federation_id": federation.id,
                "number": number,
                "stage": RoundStage.COMPLETED,
                "threshold": max(1, math.ceil(2 * institutions / 3)),
                "base_version": number - 1,
                "created_at": T0 + ROUND_SPACING * number,
                "started_at": T0 + ROUND_SPACING * number,
                "finished_at": T0 + ROUND_SPACING * number + timedelta(seconds=7),
            }
            for number in range(first_number, first_number + rounds)
        ],
    )
    round_ids = dict(
        session.execute(
            sa.select(Round.number, Round.id).where(
                Round.federation_id == federation.id, Round.number >= first_number
            )
        ).all()
    )
    dropped = names[-1]
    stage_rows: list[dict[str, object]] = []
    participant_rows: list[dict[str, object]] = []
    metric_rows: list[dict[str, object]] = []
    spend_rows: list[dict[str, object]] = []
    bad = (names[0], first_number + min(1, rounds - 1)) if mismatch and rounds else None
    for number, round_id in round_ids.items():
        start = T0 + ROUND_SPACING * number
        at = start
        for index, stage in enumerate((RoundStage.SCHEDULED, *PROTOCOL_STAGES)):
            took = timedelta(seconds=0.2 + 0.9 * (index % 3) + 0.01 * (number % 7))
            stage_rows.append(
                {
                    "round_id": round_id,
                    "stage": stage,
                    "opened_at": at,
                    "closed_at": at + took,
                    "deadline": at + timedelta(seconds=30),
                    "responders": institutions - (1 if number % 10 == 2 and index > 2 else 0),
                }
            )
            at += took
        stage_rows.append({"round_id": round_id, "stage": RoundStage.COMPLETED, "opened_at": at})
        for secagg_id, name in enumerate(names, start=1):
            lost = name == dropped and number % 10 == 2
            participant_rows.append(
                {
                    "round_id": round_id,
                    "institution_id": ids[name],
                    "secagg_id": secagg_id,
                    "status": ParticipantStatus.DROPPED if lost else ParticipantStatus.COMPLETED,
                    "dropped_at_stage": RoundStage.SHARE_KEYS if lost else None,
                    "last_seen_at": at,
                }
            )
            epsilon = (
                budget
                * (1 - math.exp(-0.08 * (number - first_number + 1)))
                * (0.9 + 0.1 * (secagg_id % 3))
            )
            reported = epsilon * (1.5 if bad == (name, number) else 1.0)
            spend_rows.append(
                {
                    "round_id": round_id,
                    "institution_id": ids[name],
                    "accountant": Accountant.RDP,
                    "noise_multiplier": 1.1,
                    "sample_rate": 0.05,
                    "steps": 20,
                    "delta": 1e-5,
                    "reported_epsilon": reported,
                    "recomputed_epsilon": epsilon,
                    "budget_epsilon": budget,
                    "mismatch": bad == (name, number),
                    "recorded_at": at,
                }
            )
        for task_index, task in enumerate(tasks):
            progress = 1 - math.exp(-0.1 * (number - first_number + 1))
            wide = 0.55 + 0.3 * progress - 0.02 * task_index
            metric = (
                "auc"
                if task.kind.value == "binary"
                else ("accuracy" if task.kind.value == "multiclass" else "mae")
            )
            value = wide if metric != "mae" else 20 * (1 - progress) + 5
            metric_rows.append(
                {
                    "round_id": round_id,
                    "task_id": task.id,
                    "institution_id": None,
                    "metric": metric,
                    "value": value,
                    "n_samples": 60 * institutions,
                    "recorded_at": start,
                }
            )
            if per_institution_metrics:
                for k, name in enumerate(names[:4]):
                    metric_rows.append(
                        {
                            "round_id": round_id,
                            "task_id": task.id,
                            "institution_id": ids[name],
                            "metric": metric,
                            "value": value * (0.95 + 0.03 * k),
                            "n_samples": 60,
                            "recorded_at": start,
                        }
                    )
    for table, rows in (
        (RoundStageRecord, stage_rows),
        (Participant, participant_rows),
        (TaskMetric, metric_rows),
        (PrivacySpend, spend_rows),
    ):
        for chunk in _chunks(rows):
            session.execute(sa.insert(table), chunk)
    _seed_audit(session, federation.name, names, list(round_ids))
    session.commit()
    return Seeded(
        federation=federation.name,
        institutions=names,
        rounds=rounds,
        mismatch=bad,
        per_institution_metrics=per_institution_metrics,
    )


def _seed_audit(session: Session, federation: str, names: list[str], numbers: list[int]) -> None:
    """A valid hash chain continuing the existing one: one stage change per round stage,
    one spend record per institution and round."""
    last = session.execute(
        sa.select(AuditEntry.seq, AuditEntry.entry_hash).order_by(AuditEntry.seq.desc()).limit(1)
    ).first()
    seq, previous = (0, GENESIS_HASH) if last is None else (last[0], last[1])
    rows: list[dict[str, object]] = []

    def add(action: AuditAction, subject: str, details: dict[str, object], at: datetime) -> None:
        nonlocal seq, previous
        seq += 1
        text = canonical_json(details)
        digest = entry_hash(
            seq=seq,
            recorded_at=at,
            actor="system:coordinator",
            action=action.value,
            subject=subject,
            details=text,
            prev_hash=previous,
        )
        rows.append(
            {
                "seq": seq,
                "recorded_at": at,
                "actor": "system:coordinator",
                "action": action,
                "subject": subject,
                "details": text,
                "prev_hash": previous,
                "entry_hash": digest,
            }
        )
        previous = digest

    for number in numbers:
        at = T0 + ROUND_SPACING * number
        subject = f"round:{federation}/{number}"
        add(AuditAction.ROUND_CREATED, subject, {"scheduled_for": None}, at)
        for stage in (*PROTOCOL_STAGES, RoundStage.COMPLETED):
            at += timedelta(milliseconds=900)
            add(AuditAction.ROUND_STAGE_CHANGED, subject, {"to": stage.value}, at)
        for name in names:
            add(
                AuditAction.SPEND_RECORDED,
                f"spend:{federation}/{name}/{number}",
                {"mismatch": False},
                at,
            )
    for chunk in _chunks(rows):
        session.execute(sa.insert(AuditEntry), chunk)
