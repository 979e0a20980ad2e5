"""Task-wise results of a federation, per round, task and institution."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel

from coordinator.api.deps import ReaderDep, SessionDep
from coordinator.api.problems import problem_responses
from coordinator.results import service
from federation.spec import NAME_PATTERN

router = APIRouter(
    prefix="/api/v1/federations/{federation}/results",
    tags=["results"],
    responses=problem_responses(401, 403, 404, 422),
)

FederationName = Annotated[str, Path(pattern=NAME_PATTERN, description="Federation name.")]


class ResultOut(BaseModel):
    round: int
    task: str
    institution: str | None
    metric: str
    value: float
    n_samples: int | None


@router.get("", summary="Task-wise metrics of the global model, per round")
def list_results(
    federation: FederationName,
    _: ReaderDep,
    session: SessionDep,
    round: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> list[ResultOut]:
    return [
        ResultOut(
            round=row.round_number,
            task=row.task,
            institution=row.institution,
            metric=row.metric,
            value=row.value,
            n_samples=row.n_samples,
        )
        for row in service.list_results(session, federation, round)
    ]
