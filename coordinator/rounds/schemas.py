"""Wire shapes of the round endpoints for people."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from coordinator.rounds.models import ParticipantStatus, Round, RoundStage


class FailRound(BaseModel):
    """An admin's reason for failing a round (kept in the round and the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


class StageOut(BaseModel):
    stage: RoundStage
    opened_at: datetime
    deadline: datetime | None
    closed_at: datetime | None
    responders: int | None


class ParticipantOut(BaseModel):
    institution_id: int
    secagg_id: int
    status: ParticipantStatus
    dropped_at_stage: RoundStage | None


class RoundSummary(BaseModel):
    number: int
    stage: RoundStage
    stage_deadline: datetime | None
    threshold: int | None
    participants: int
    base_version: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, round_: Round) -> RoundSummary:
        return cls(
            number=round_.number,
            stage=round_.stage,
            stage_deadline=round_.stage_deadline,
            threshold=round_.threshold,
            participants=len(round_.participants),
            base_version=round_.base_version,
            created_at=round_.created_at,
            started_at=round_.started_at,
            finished_at=round_.finished_at,
        )


class RoundOut(RoundSummary):
    failure_reason: str | None
    vector_length: int | None
    layout_fingerprint: str | None
    stages: list[StageOut]
    participant_list: list[ParticipantOut]

    @classmethod
    def of(cls, round_: Round) -> RoundOut:
        return cls(
            **RoundSummary.of(round_).model_dump(),
            failure_reason=round_.failure_reason,
            vector_length=round_.vector_length,
            layout_fingerprint=round_.layout_fingerprint,
            stages=[
                StageOut(
                    stage=record.stage,
                    opened_at=record.opened_at,
                    deadline=record.deadline,
                    closed_at=record.closed_at,
                    responders=record.responders,
                )
                for record in round_.stages
            ],
            participant_list=[
                ParticipantOut(
                    institution_id=participant.institution_id,
                    secagg_id=participant.secagg_id,
                    status=participant.status,
                    dropped_at_stage=participant.dropped_at_stage,
                )
                for participant in round_.participants
            ],
        )
