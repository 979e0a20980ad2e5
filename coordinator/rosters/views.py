"""Roster endpoints: admins publish a signed version, readers and agents read the newest."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict

from coordinator.api.deps import AdminDep, AgentDep, ReaderDep, SessionDep
from coordinator.api.problems import problem_responses
from coordinator.rosters import service
from federation.roster import SignedRoster
from federation.spec import NAME_PATTERN
from federation.wire import AGENT_API_PREFIX

router = APIRouter(
    prefix="/api/v1/federations/{federation}/roster",
    tags=["roster"],
    responses=problem_responses(401, 403, 404, 422),
)
agent_router = APIRouter(
    prefix=AGENT_API_PREFIX, tags=["agents"], responses=problem_responses(401, 404, 422)
)

FederationName = Annotated[str, Path(pattern=NAME_PATTERN, description="Federation name.")]


class RosterPublished(BaseModel):
    """What was stored: the version, its size, the admin key's fingerprint, the changes."""

    model_config = ConfigDict(frozen=True)

    version: int
    members: int
    admin_fingerprint: str
    published_at: datetime
    changes: list[str]


@router.put(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409),
    summary="Publish the next version of the federation's signed roster (admin)",
)
def publish(
    federation: FederationName, body: SignedRoster, person: AdminDep, session: SessionDep
) -> RosterPublished:
    record, changes = service.publish(session, federation, body, actor=person.actor)
    return RosterPublished(
        version=record.version,
        members=record.members,
        admin_fingerprint=record.admin_fingerprint,
        published_at=record.published_at,
        changes=changes,
    )


@router.get("", summary="The newest signed roster of a federation")
def get_roster(federation: FederationName, _: ReaderDep, session: SessionDep) -> SignedRoster:
    return service.latest_signed(session, federation)


@agent_router.get("/roster", summary="The newest signed roster of the agent's federation")
def agent_roster(institution: AgentDep, session: SessionDep) -> SignedRoster:
    return service.latest_signed(session, institution.federation.name)
