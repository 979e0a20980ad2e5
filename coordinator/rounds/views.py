"""Round endpoints for people: start or fail a round (admin), read rounds (the engine drives
them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from coordinator.api.deps import AdminDep, FollowupsDep, ReaderDep, RuntimeDep, SessionDep
from coordinator.api.problems import problem_responses
from coordinator.rounds import engine, service
from coordinator.rounds.schemas import FailRound, RoundOut, RoundSummary
from federation.spec import NAME_PATTERN

router = APIRouter(
    prefix="/api/v1/federations/{federation}/rounds",
    tags=["rounds"],
    responses=problem_responses(401, 403, 404, 422),
)

FederationName = Annotated[str, Path(pattern=NAME_PATTERN, description="Federation name.")]
RoundNumber = Annotated[int, Path(ge=1, le=2**31 - 1, description="Round number (from 1).")]


@router.get("", summary="A federation's rounds, oldest first")
def list_rounds(
    federation: FederationName, _: ReaderDep, session: SessionDep
) -> list[RoundSummary]:
    return [RoundSummary.of(item) for item in service.list_rounds(session, federation)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409),
    summary="Start the federation's next round now: select agents, open key advertising (admin)",
)
def start_round(
    federation: FederationName,
    person: AdminDep,
    runtime: RuntimeDep,
    session: SessionDep,
    followups: FollowupsDep,
) -> RoundOut:
    round_, sent = engine.start_round(
        session, runtime.blobs, runtime.settings, federation, actor=person.actor
    )
    followups.send(sent)
    return RoundOut.of(service.get_round(session, federation, round_.number))


@router.get("/{number}", summary="One round: stages, deadlines, participants")
def get_round(
    federation: FederationName, number: RoundNumber, _: ReaderDep, session: SessionDep
) -> RoundOut:
    return RoundOut.of(service.get_round(session, federation, number))


@router.post(
    "/{number}/fail",
    responses=problem_responses(409),
    summary="End an open round as failed, with a reason (admin; audited)",
)
def fail_round(
    federation: FederationName,
    number: RoundNumber,
    body: FailRound,
    person: AdminDep,
    session: SessionDep,
    followups: FollowupsDep,
) -> RoundOut:
    round_, sent = engine.fail_by_admin(
        session, federation, number, body.reason, actor=person.actor
    )
    followups.send(sent)
    return RoundOut.of(service.get_round(session, federation, round_.number))
