"""Institution endpoints: admins invite and revoke; agents enroll and read their profile."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, status

from coordinator.api.deps import (
    AdminDep,
    AgentDep,
    EnrollmentDep,
    ReaderDep,
    RuntimeDep,
    SessionDep,
)
from coordinator.api.problems import problem_responses
from coordinator.institutions import service
from coordinator.institutions.models import Institution
from coordinator.institutions.schemas import (
    InstitutionOut,
    InvitationCreate,
    InvitationOut,
    InvitationRenew,
)
from coordinator.runtime import Runtime
from federation.spec import NAME_PATTERN
from federation.wire import AGENT_API_PREFIX, AgentProfile, EnrollmentRequest

router = APIRouter(
    prefix="/api/v1/federations/{federation}/institutions",
    tags=["institutions"],
    responses=problem_responses(401, 403, 404, 422),
)
agent_router = APIRouter(
    prefix=AGENT_API_PREFIX, tags=["agents"], responses=problem_responses(401, 422)
)

FederationName = Annotated[str, Path(pattern=NAME_PATTERN, description="Federation name.")]
InstitutionName = Annotated[str, Path(pattern=NAME_PATTERN, description="Institution name.")]


def _ttl(runtime: Runtime, hours: int | None) -> timedelta:
    if hours is None:
        return timedelta(seconds=runtime.settings.enrollment_token_ttl_s)
    return timedelta(hours=hours)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409, 422),
    summary="Invite an institution: returns its one-time enrollment token (admin)",
)
def invite(
    federation: FederationName,
    body: InvitationCreate,
    person: AdminDep,
    runtime: RuntimeDep,
    session: SessionDep,
) -> InvitationOut:
    invitation = service.invite(
        session,
        runtime.settings.pepper,
        federation_name=federation,
        name=body.name,
        tasks=body.tasks,
        ttl=_ttl(runtime, body.ttl_hours),
        actor=person.actor,
    )
    return InvitationOut(
        institution=InstitutionOut.of(invitation.institution),
        enrollment_token=invitation.token,
        expires_at=invitation.expires_at,
    )


@router.get("", summary="List a federation's institutions")
def list_institutions(
    federation: FederationName, _: ReaderDep, session: SessionDep
) -> list[InstitutionOut]:
    return [InstitutionOut.of(item) for item in service.list_institutions(session, federation)]


@router.get("/{institution}", summary="One institution")
def get_institution(
    federation: FederationName, institution: InstitutionName, _: ReaderDep, session: SessionDep
) -> InstitutionOut:
    return InstitutionOut.of(service.get_institution(session, federation, institution))


@router.post(
    "/{institution}/invitation",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409, 422),
    summary="Issue a fresh enrollment token to an institution not enrolled yet (admin)",
)
def renew_invitation(
    federation: FederationName,
    institution: InstitutionName,
    body: InvitationRenew,
    person: AdminDep,
    runtime: RuntimeDep,
    session: SessionDep,
) -> InvitationOut:
    invitation = service.reissue_invitation(
        session,
        runtime.settings.pepper,
        federation_name=federation,
        name=institution,
        ttl=_ttl(runtime, body.ttl_hours),
        actor=person.actor,
    )
    return InvitationOut(
        institution=InstitutionOut.of(invitation.institution),
        enrollment_token=invitation.token,
        expires_at=invitation.expires_at,
    )


@router.post(
    "/{institution}/revoke",
    responses=problem_responses(409),
    summary="Revoke an institution: its signatures and tokens stop working (admin)",
)
def revoke(
    federation: FederationName, institution: InstitutionName, person: AdminDep, session: SessionDep
) -> InstitutionOut:
    revoked = service.revoke(
        session, federation_name=federation, name=institution, actor=person.actor
    )
    return InstitutionOut.of(revoked)


def _profile(institution: Institution, runtime: Runtime) -> AgentProfile:
    federation = institution.federation
    assert institution.enrolled_at is not None
    return AgentProfile(
        institution_id=institution.id,
        key_id=institution.key_id,
        institution=institution.name,
        federation=federation.name,
        tasks_held=tuple(task.name for task in institution.tasks),
        enrolled_at=institution.enrolled_at,
        spec=federation.spec,
        spec_fingerprint=federation.fingerprint,
        coordinator_key=runtime.signing_key.public_key,
    )


@agent_router.post(
    "/enroll",
    status_code=status.HTTP_201_CREATED,
    dependencies=[EnrollmentDep],
    responses=problem_responses(401, 409, 422),
    summary="Enroll an agent with a one-time token and its Ed25519 identity key",
)
def enroll(body: EnrollmentRequest, runtime: RuntimeDep, session: SessionDep) -> AgentProfile:
    return _profile(service.enroll(session, runtime.settings.pepper, body), runtime)


@agent_router.get(
    "/me",
    responses=problem_responses(401),
    summary="The calling agent's profile and federation spec (signed request)",
)
def agent_profile(institution: AgentDep, runtime: RuntimeDep) -> AgentProfile:
    return _profile(institution, runtime)
