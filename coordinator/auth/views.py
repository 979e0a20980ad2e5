"""Token endpoints (admins issue and revoke people's tokens) and `GET /api/v1/me`."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, status

from coordinator.api.deps import AdminDep, ReaderDep, RuntimeDep, SessionDep
from coordinator.api.problems import problem_responses
from coordinator.auth import service
from coordinator.auth.schemas import TokenCreate, TokenIssued, TokenOut, WhoAmI
from coordinator.db import utcnow

router = APIRouter(prefix="/api/v1", tags=["tokens"], responses=problem_responses(401, 403, 422))


@router.post(
    "/tokens",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(422),
    summary="Issue an API token (admin)",
)
def create_token(
    body: TokenCreate, person: AdminDep, runtime: RuntimeDep, session: SessionDep
) -> TokenIssued:
    issued = service.create_token(
        session,
        runtime.settings.pepper,
        name=body.name,
        role=body.role,
        expires_at=utcnow() + timedelta(days=body.expires_in_days),
        actor=person.actor,
        created_by_id=person.token_id,
    )
    return TokenIssued(**TokenOut.model_validate(issued.record).model_dump(), token=issued.secret)


@router.get("/tokens", summary="List API tokens, without their secrets (admin)")
def list_tokens(_: AdminDep, session: SessionDep) -> list[TokenOut]:
    return [TokenOut.model_validate(record) for record in service.list_tokens(session)]


@router.post(
    "/tokens/{token_id}/revoke",
    responses=problem_responses(404, 409),
    summary="Revoke an API token (admin)",
)
def revoke_token(token_id: int, person: AdminDep, session: SessionDep) -> TokenOut:
    return TokenOut.model_validate(service.revoke_token(session, token_id, actor=person.actor))


@router.get("/me", summary="The token you are calling with")
def who_am_i(person: ReaderDep) -> WhoAmI:
    return WhoAmI(token_id=person.token_id, name=person.name, role=person.role)
