"""Who is looking at the console: a signed session cookie over the people's API tokens.

A person signs in once with the same API token the REST API takes. The token is checked
(`coordinator.auth.service.authenticate`) and never stored anywhere: the cookie holds only
the token's *id* and a random session nonce, signed (itsdangerous, HMAC-SHA256) with a key
derived from the token pepper, and is HttpOnly, SameSite=Strict, Secure on https (with the
`__Host-` prefix there, so no other host or path can set it). Every request re-reads the
token record, so revoking or expiring a token ends its console sessions at once; a session
also ends by itself after `SESSION_LIFETIME`.

Forms carry a CSRF token, HMAC(key, nonce), checked in constant time on every POST, and a
POST from another origin is refused before that (SameSite=Strict already keeps the cookie
off cross-site requests; these are the second and third locks).

Each console route declares who may see it with `console_roles(...)`, an access dependency
like `require_roles` (see `coordinator.api.deps`), so the authorization matrix test checks
the console's routes like the API's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Final
from urllib.parse import urlsplit

from fastapi import Depends, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from coordinator.api.deps import Access, AccessKind, Person, RuntimeDep, SessionDep, declare_access
from coordinator.auth import service as tokens
from coordinator.auth.models import ApiToken, Role
from coordinator.db import utcnow
from coordinator.errors import AuthenticationFailed, PermissionDenied
from coordinator.runtime import Runtime

COOKIE: Final = "fmtl_console"
#: On https the cookie is `__Host-fmtl_console`: Secure, Path=/, no Domain (RFC 6265bis).
SECURE_COOKIE: Final = "__Host-" + COOKIE
SESSION_LIFETIME: Final = timedelta(hours=8)
CSRF_FIELD: Final = "csrf"
#: Domain separation of the keys derived from the token pepper.
_SESSION_KEY_LABEL: Final = b"fmtl/console/session-key/v1"
_SESSION_SALT: Final = "fmtl.console.session"
_CSRF_LABEL: Final = b"fmtl/console/csrf/v1:"
NONCE_BYTES: Final = 16


class SignInRequired(AuthenticationFailed):
    """No console session (or an expired, forged or revoked one): sign in first."""

    slug = "sign-in-required"


@dataclass(frozen=True)
class Viewer:
    """A signed-in person, with the CSRF token their forms must carry."""

    person: Person
    csrf: str = field(repr=False)

    @property
    def role(self) -> Role:
        return self.person.role

    def may(self, *roles: Role) -> bool:
        return self.person.role in roles


def _key(runtime: Runtime) -> bytes:
    return hmac.new(runtime.settings.pepper, _SESSION_KEY_LABEL, hashlib.sha256).digest()


def _serializer(runtime: Runtime) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(
        _key(runtime), salt=_SESSION_SALT, signer_kwargs={"digest_method": hashlib.sha256}
    )


def csrf_token(runtime: Runtime, nonce: str) -> str:
    return hmac.new(_key(runtime), _CSRF_LABEL + nonce.encode(), hashlib.sha256).hexdigest()


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def cookie_name(request: Request) -> str:
    return SECURE_COOKIE if _secure(request) else COOKIE


def sign_in(request: Request, response: Response, runtime: Runtime, record: ApiToken) -> None:
    """Set the session cookie for an authenticated token record."""
    payload = {"t": record.id, "n": secrets.token_urlsafe(NONCE_BYTES)}
    response.set_cookie(
        cookie_name(request),
        _serializer(runtime).dumps(payload),
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )


def sign_out(request: Request, response: Response) -> None:
    response.delete_cookie(
        cookie_name(request), path="/", secure=_secure(request), httponly=True, samesite="strict"
    )


def authenticate_token(runtime: Runtime, session: Session, presented: str) -> ApiToken:
    """The live token record for a token typed into the sign-in form."""
    return tokens.authenticate(session, runtime.settings.pepper, presented.strip())


def current_viewer(request: Request, runtime: Runtime, session: Session) -> Viewer:
    """The signed-in person, or SignInRequired."""
    raw = request.cookies.get(cookie_name(request))
    if not raw:
        raise SignInRequired("sign in to the console with your API token")
    try:
        payload = _serializer(runtime).loads(raw, max_age=int(SESSION_LIFETIME.total_seconds()))
        token_id, nonce = int(payload["t"]), str(payload["n"])
    except (BadSignature, KeyError, TypeError, ValueError):
        raise SignInRequired("your console session is invalid or has expired") from None
    record = session.get(ApiToken, token_id)
    if record is None or record.revoked_at is not None:
        raise SignInRequired("the token of this console session was revoked")
    if record.expires_at is not None and record.expires_at <= utcnow():
        raise SignInRequired("the token of this console session has expired")
    person = Person(token_id=record.id, name=record.name, role=record.role)
    return Viewer(person=person, csrf=csrf_token(runtime, nonce))


def check_origin(request: Request) -> None:
    """Refuse a state-changing request whose Origin (or Referer) is another site."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None or claimed == "null":
        if claimed == "null":
            raise PermissionDenied("cross-origin form posts are refused")
        return
    parts = urlsplit(claimed)
    if (parts.scheme, parts.netloc) != (request.url.scheme, request.url.netloc):
        raise PermissionDenied("cross-origin form posts are refused")


async def check_csrf(request: Request, viewer: Viewer) -> None:
    """Refuse a POST without this session's CSRF token (and any cross-origin POST)."""
    check_origin(request)
    form = await request.form()
    presented = form.get(CSRF_FIELD)
    if not isinstance(presented, str) or not hmac.compare_digest(presented, viewer.csrf):
        raise PermissionDenied("the form's CSRF token does not match your session; reload the page")


def console_roles(*roles: Role) -> Callable[..., Awaitable[Viewer]]:
    """An access dependency admitting signed-in people whose token has one of `roles`.

    A POST also needs this session's CSRF token in its form.
    """
    if not roles:
        raise ValueError("declare at least one role")
    admitted = frozenset(roles)

    async def viewer(request: Request, runtime: RuntimeDep, session: SessionDep) -> Viewer:
        found = await run_in_threadpool(current_viewer, request, runtime, session)
        if found.role not in admitted:
            allowed = ", ".join(sorted(role.value for role in admitted))
            raise PermissionDenied(
                f"the {found.role.value} role may not see this page (allowed: {allowed})"
            )
        if request.method not in ("GET", "HEAD"):
            await check_csrf(request, found)
        return found

    viewer.__name__ = "console_viewer_" + "_or_".join(sorted(role.value for role in admitted))
    declare_access(viewer, Access(AccessKind.CONSOLE, admitted))
    return viewer


READERS: Final = (Role.ADMIN, Role.OPERATOR, Role.AUDITOR)
AUDITORS: Final = (Role.ADMIN, Role.AUDITOR)

ReaderView = Annotated[Viewer, Depends(console_roles(*READERS))]
AuditorView = Annotated[Viewer, Depends(console_roles(*AUDITORS))]
AdminView = Annotated[Viewer, Depends(console_roles(Role.ADMIN))]
