"""The console's forms: sign in and out, and the admin actions the CLI has.

Each admin action calls the same service function as its REST endpoint (and audits the
same way, as the signed-in token); the form only translates fields. Every POST carries
the session's CSRF token (checked by the access dependency, see `session.console_roles`).
The one-time enrollment token of an invitation is shown once, on the answer to the POST,
never stored and never shown again (the answer is `no-store`).
"""

from __future__ import annotations

import json
import tomllib
from datetime import timedelta
from typing import Annotated, Final
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, File, Form, Path, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from coordinator.api.deps import (
    Access,
    AccessKind,
    FollowupsDep,
    PublicDep,
    RuntimeDep,
    SessionDep,
    declare_access,
)
from coordinator.auth import service as tokens
from coordinator.console.rendering import PREFIX, SIGN_IN_PATH, redirect, render
from coordinator.console.session import (
    AdminView,
    ReaderView,
    authenticate_token,
    check_origin,
    sign_in,
    sign_out,
)
from coordinator.errors import AuthenticationFailed, CoordinatorError, InvalidInput
from coordinator.federations import service as federations
from coordinator.federations.service import get_federation
from coordinator.institutions import service as institutions
from coordinator.rounds import engine
from federation.spec import NAME_PATTERN, FederationSpec

router = APIRouter(prefix=PREFIX, include_in_schema=False)

#: Largest spec file accepted (a spec is a few KiB).
MAX_SPEC_BYTES: Final = 256 * 1024
#: Longest token the sign-in form takes (a real one is ~52 characters).
MAX_TOKEN_FIELD: Final = 200

FederationName = Annotated[str, Path(pattern=NAME_PATTERN)]


def sign_in_credential() -> None:
    """Marks the sign-in form: its credential is the API token in the body."""


declare_access(sign_in_credential, Access(AccessKind.SIGN_IN))


def _safe_next(target: str | None) -> str:
    """Only a path inside the console (no scheme, host or `//`): no open redirect."""
    if not target:
        return f"{PREFIX}/federations"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith(PREFIX) or target.startswith("//"):
        return f"{PREFIX}/federations"
    return target


@router.get("/sign-in", dependencies=[PublicDep])
def sign_in_page(request: Request, next: str | None = None) -> HTMLResponse:
    return render(
        request, None, "sign_in.html.j2", title="Sign in", next=_safe_next(next), error=None
    )


@router.post("/sign-in", dependencies=[Depends(sign_in_credential)])
def sign_in_form(
    request: Request,
    runtime: RuntimeDep,
    session: SessionDep,
    token: Annotated[str, Form(max_length=MAX_TOKEN_FIELD)],
    next: Annotated[str | None, Form(max_length=2000)] = None,
) -> Response:
    check_origin(request)
    try:
        record = authenticate_token(runtime, session, token)
    except AuthenticationFailed as exc:
        return render(
            request,
            None,
            "sign_in.html.j2",
            status_code=401,
            title="Sign in",
            next=_safe_next(next),
            error=exc.detail,
        )
    response = redirect(_safe_next(next))
    sign_in(request, response, runtime, record)
    return response


@router.post("/sign-out")
def sign_out_form(request: Request, viewer: ReaderView) -> Response:
    response = redirect(SIGN_IN_PATH)
    sign_out(request, response)
    return response


def _load_spec(name: str, raw: bytes) -> FederationSpec:
    if len(raw) > MAX_SPEC_BYTES:
        raise InvalidInput(f"the spec file is larger than {MAX_SPEC_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text) if name.endswith(".toml") else json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if name.endswith(".toml") else "JSON"
        raise InvalidInput(f"the spec file is not valid {kind}: {exc}") from None
    try:
        return FederationSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "spec"
        raise InvalidInput(f"the spec is invalid at {where}: {first.get('msg')}") from None


@router.get("/federations-new")
def new_federation_page(request: Request, viewer: AdminView) -> HTMLResponse:
    return render(
        request, viewer, "federation_new.html.j2", title="Create a federation", error=None
    )


@router.post("/federations")
async def create_federation(
    request: Request,
    viewer: AdminView,
    session: SessionDep,
    spec: Annotated[UploadFile, File(description="Federation spec, JSON or TOML.")],
) -> Response:
    raw = await spec.read(MAX_SPEC_BYTES + 1)
    try:
        parsed = _load_spec(spec.filename or "", raw)
        created = federations.create_federation(session, parsed, actor=viewer.person.actor)
    except CoordinatorError as exc:
        return render(
            request,
            viewer,
            "federation_new.html.j2",
            status_code=_status(exc),
            title="Create a federation",
            error=exc.detail,
        )
    return redirect(f"{PREFIX}/federations/{created.name}")


@router.post("/federations/{federation}/institutions")
def invite(
    request: Request,
    federation: FederationName,
    viewer: AdminView,
    runtime: RuntimeDep,
    session: SessionDep,
    name: Annotated[str, Form(pattern=NAME_PATTERN)],
    tasks: Annotated[list[str], Form(min_length=1, max_length=64)],
    ttl_hours: Annotated[int | None, Form(ge=1, le=24 * 90)] = None,
) -> Response:
    ttl = (
        timedelta(seconds=runtime.settings.enrollment_token_ttl_s)
        if ttl_hours is None
        else timedelta(hours=ttl_hours)
    )
    invitation = institutions.invite(
        session,
        runtime.settings.pepper,
        federation_name=federation,
        name=name,
        tasks=tasks,
        ttl=ttl,
        actor=viewer.person.actor,
    )
    return render(
        request,
        viewer,
        "invited.html.j2",
        status_code=201,
        title=f"Invitation for {invitation.institution.name}",
        federation_name=federation,
        institution=invitation.institution.name,
        tasks=[task.name for task in invitation.institution.tasks],
        token=invitation.token,
        expires_at=invitation.expires_at,
    )


@router.post("/federations/{federation}/rounds")
def start_round(
    request: Request,
    federation: FederationName,
    viewer: AdminView,
    runtime: RuntimeDep,
    session: SessionDep,
    followups: FollowupsDep,
) -> Response:
    get_federation(session, federation)
    round_, sent = engine.start_round(
        session, runtime.blobs, runtime.settings, federation, actor=viewer.person.actor
    )
    followups.send(sent)
    return redirect(f"{PREFIX}/federations/{federation}/rounds/{round_.number}")


@router.post("/tokens/{token_id}/revoke")
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**62)], viewer: AdminView, session: SessionDep
) -> Response:
    tokens.revoke_token(session, token_id, actor=viewer.person.actor)
    return redirect(f"{PREFIX}/tokens")


def _status(exc: CoordinatorError) -> int:
    from coordinator.api.problems import status_of

    return status_of(exc)
