"""Request dependencies, declared once: the session, the runtime, and who is calling.

Every endpoint declares who may call it with exactly one *access dependency*:

- `require_roles(Role.ADMIN, ...)`: a person with a bearer API token of one of those roles;
- `signed_agent`: an enrolled agent, by an RFC 9421 signature (see `coordinator.auth.signatures`);
- `enrollment_token`: anyone holding a one-time enrollment token (checked by the service);
- `public`: anyone (health and metrics probes);
- `coordinator.console.session.console_roles(...)`: a person signed in to the web console
  (a session cookie over their API token) whose role is one of those.

Each carries its `Access` as an attribute, so `declared_access(route)` can read it back and
the authorization matrix test can enumerate every route of the app and what it admits.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from coordinator.audit.service import Actor, ActorKind
from coordinator.auth import service as tokens
from coordinator.auth.models import Role
from coordinator.auth.signatures import ReceivedRequest, verify_agent_request
from coordinator.errors import AuthenticationFailed, PermissionDenied
from coordinator.institutions.models import Institution
from coordinator.rounds.followups import FollowupSink
from coordinator.runtime import Runtime

ACCESS_ATTRIBUTE: Final = "__fmtl_access__"


class AccessKind(enum.StrEnum):
    PEOPLE = "people"
    AGENT = "agent"
    ENROLLMENT = "enrollment"
    PUBLIC = "public"
    CONSOLE = "console"  # people, signed in to the web console (session cookie)
    SIGN_IN = "sign-in"  # the console's sign-in form: the API token is in the body


@dataclass(frozen=True)
class Access:
    kind: AccessKind
    roles: frozenset[Role] = field(default_factory=frozenset)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_followups(request: Request) -> FollowupSink:
    """Where a request sends the follow-ups of its committed transaction."""
    sink: FollowupSink = request.app.state.followups
    return sink


FollowupsDep = Annotated[FollowupSink, Depends(get_followups)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.db.scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class Person:
    """A person authenticated by an API token."""

    token_id: int
    name: str
    role: Role

    @property
    def actor(self) -> Actor:
        return Actor(ActorKind.TOKEN, str(self.token_id))


_bearer = HTTPBearer(auto_error=False, description="An fmtl API token: `Bearer fmtl_api_...`.")


def declare_access(dependency: Callable[..., Any], access: Access) -> Callable[..., Any]:
    """Mark `dependency` as an access dependency admitting `access` (read by `endpoints`)."""
    setattr(dependency, ACCESS_ATTRIBUTE, access)
    return dependency


_declare = declare_access


def require_roles(*roles: Role) -> Callable[..., Person]:
    """A dependency admitting people whose token has one of `roles`."""
    if not roles:
        raise ValueError("declare at least one role")
    admitted = frozenset(roles)

    def person(
        runtime: RuntimeDep,
        session: SessionDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Person:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise AuthenticationFailed(
                "this endpoint needs an API token: Authorization: Bearer ..."
            )
        record = tokens.authenticate(session, runtime.settings.pepper, credentials.credentials)
        if record.role not in admitted:
            allowed = ", ".join(sorted(role.value for role in admitted))
            raise PermissionDenied(
                f"the {record.role.value} role may not do this (allowed: {allowed})"
            )
        return Person(token_id=record.id, name=record.name, role=record.role)

    person.__name__ = "person_with_role_" + "_or_".join(sorted(role.value for role in admitted))
    _declare(person, Access(AccessKind.PEOPLE, admitted))
    return person


async def signed_agent(request: Request, runtime: RuntimeDep, session: SessionDep) -> Institution:
    """The enrolled institution whose signature this request carries."""
    received = ReceivedRequest(
        method=request.method,
        raw_path=request.scope.get("raw_path", request.url.path.encode()).decode("latin-1"),
        query=request.scope.get("query_string", b"").decode("latin-1"),
        headers=list(request.headers.items()),
        body=await request.body(),
    )
    return await run_in_threadpool(
        verify_agent_request, session, received, runtime.signature_policy
    )


async def signed_agent_detached(request: Request, runtime: RuntimeDep) -> Institution:
    """`signed_agent` for requests that wait (long polls): the signature is checked in a
    session of its own, closed before the handler runs, so no database connection is held
    while the request waits. The institution is detached (its columns are loaded)."""
    received = ReceivedRequest(
        method=request.method,
        raw_path=request.scope.get("raw_path", request.url.path.encode()).decode("latin-1"),
        query=request.scope.get("query_string", b"").decode("latin-1"),
        headers=list(request.headers.items()),
        body=await request.body(),
    )

    def verify() -> Institution:
        with runtime.db.scope() as session:
            institution = verify_agent_request(session, received, runtime.signature_policy)
            session.expunge(institution)
            return institution

    return await run_in_threadpool(verify)


def enrollment_token() -> None:
    """Marks the enrollment endpoint: its credential is the one-time token in the body."""


def public() -> None:
    """Marks endpoints anyone may call."""


_declare(signed_agent, Access(AccessKind.AGENT))
_declare(signed_agent_detached, Access(AccessKind.AGENT))
_declare(enrollment_token, Access(AccessKind.ENROLLMENT))
_declare(public, Access(AccessKind.PUBLIC))

# The roles of the three kinds of people endpoints.
READERS: Final = (Role.ADMIN, Role.OPERATOR, Role.AUDITOR)
AUDITORS: Final = (Role.ADMIN, Role.AUDITOR)

AdminDep = Annotated[Person, Depends(require_roles(Role.ADMIN))]
ReaderDep = Annotated[Person, Depends(require_roles(*READERS))]
OperatorDep = Annotated[Person, Depends(require_roles(Role.ADMIN, Role.OPERATOR))]
AuditorDep = Annotated[Person, Depends(require_roles(*AUDITORS))]
AgentDep = Annotated[Institution, Depends(signed_agent)]
DetachedAgentDep = Annotated[Institution, Depends(signed_agent_detached)]
EnrollmentDep = Depends(enrollment_token)
PublicDep = Depends(public)


@dataclass(frozen=True)
class Endpoint:
    """One operation of the app as served: method, full path template and what it admits."""

    method: str
    path: str
    access: Access


def endpoints(app: FastAPI) -> list[Endpoint]:
    """Every API operation of `app` with its declared access (ValueError if one has none)."""
    found = []
    for route in _api_routes(app):
        access = declared_access(route)
        for method in sorted(route.methods or ()):
            found.append(Endpoint(method=method, path=str(route.path), access=access))
    return found


def _api_routes(app: FastAPI) -> Iterator[Any]:
    try:  # FastAPI >= 0.120 keeps included routers as such; this walks them
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI flattens them into app.routes
        yield from (route for route in app.routes if isinstance(route, APIRoute))
        return
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def declared_access(route: Any) -> Access:
    """The access an endpoint declared; ValueError unless it declared exactly one."""
    found: set[Access] = set()
    pending = list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        access = getattr(dependant.call, ACCESS_ATTRIBUTE, None)
        if isinstance(access, Access):
            found.add(access)
        pending.extend(dependant.dependencies)
    if len(found) != 1:
        raise ValueError(
            f"{sorted(route.methods)} {route.path} declares {len(found)} accesses, not one"
        )
    return found.pop()
