"""Task-wise results of a federation, per round and task: federation-wide, and per
institution where the institution opted in."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

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
    scope: Literal["federation", "institution"] = Field(
        description="'federation': computed from the secure-aggregation sum of every "
        "survivor's validation statistics (the metric over the union of their validation "
        "splits); 'institution': sent in clear by an institution that opted in."
    )
    institution: str | None = Field(description="The institution of an 'institution' row.")
    metric: str
    value: float
    n_samples: int | None = Field(description="Validation samples behind a 'federation' row.")
    institutions: int | None = Field(description="Institutions behind a 'federation' row.")


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
            scope="federation" if row.institution is None else "institution",
            institution=row.institution,
            metric=row.metric,
            value=row.value,
            n_samples=row.n_samples,
            institutions=row.institutions,
        )
        for row in service.list_results(session, federation, round)
    ]
