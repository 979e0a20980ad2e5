"""Federation endpoints: admins create them; every role may read them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from coordinator.api.deps import AdminDep, ReaderDep, SessionDep
from coordinator.api.problems import problem_responses
from coordinator.federations import service
from coordinator.federations.schemas import FederationOut, FederationSummary
from federation.spec import NAME_PATTERN, FederationSpec

router = APIRouter(
    prefix="/api/v1/federations", tags=["federations"], responses=problem_responses(401, 403, 422)
)

FederationName = Annotated[str, Path(pattern=NAME_PATTERN, description="Federation name.")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409, 422),
    summary="Create a federation from its spec (admin)",
)
def create_federation(spec: FederationSpec, person: AdminDep, session: SessionDep) -> FederationOut:
    return FederationOut.of(service.create_federation(session, spec, actor=person.actor))


@router.get("", summary="List federations")
def list_federations(_: ReaderDep, session: SessionDep) -> list[FederationSummary]:
    return [FederationSummary.of(item) for item in service.list_federations(session)]


@router.get("/{federation}", responses=problem_responses(404), summary="A federation and its spec")
def get_federation(federation: FederationName, _: ReaderDep, session: SessionDep) -> FederationOut:
    return FederationOut.of(service.get_federation(session, federation))
