"""Round read endpoints (rounds are opened and driven by the round engine)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from coordinator.api.deps import ReaderDep, SessionDep
from coordinator.api.problems import problem_responses
from coordinator.rounds import service
from coordinator.rounds.schemas import RoundOut, RoundSummary
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


@router.get("/{number}", summary="One round: stages, deadlines, participants")
def get_round(
    federation: FederationName, number: RoundNumber, _: ReaderDep, session: SessionDep
) -> RoundOut:
    return RoundOut.of(service.get_round(session, federation, number))
