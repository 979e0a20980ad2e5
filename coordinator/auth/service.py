"""People's API tokens: issue (shown once), authenticate, list, revoke."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.auth.credentials import (
    API_TOKEN_PREFIX,
    MAX_SECRET_LENGTH,
    hashes_match,
    new_secret,
    secret_hash,
)
from coordinator.auth.models import ApiToken, Role
from coordinator.db import utcnow
from coordinator.errors import AuthenticationFailed, InvalidInput, NotFound, StateConflict

#: Longest lifetime a token may be given (a year); tokens without expiry are allowed only
#: by the CLI bootstrap, which an operator runs on the coordinator host itself.
MAX_TOKEN_LIFETIME: Final = timedelta(days=366)


@dataclass(frozen=True)
class IssuedToken:
    """A newly created token: the record, and the secret (never stored, never in repr)."""

    record: ApiToken
    secret: str = field(repr=False)


def create_token(
    session: Session,
    pepper: bytes,
    *,
    name: str,
    role: Role,
    expires_at: datetime | None,
    actor: audit.Actor,
    created_by_id: int | None = None,
) -> IssuedToken:
    """Issue a token for `role`; the returned secret is the only copy there will ever be."""
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at must be in the future")
    if expires_at is not None and expires_at - now > MAX_TOKEN_LIFETIME:
        raise InvalidInput(f"a token may live at most {MAX_TOKEN_LIFETIME.days} days")
    secret = new_secret(API_TOKEN_PREFIX)
    record = ApiToken(
        name=name,
        role=role,
        token_hash=secret_hash(pepper, secret),
        created_at=now,
        expires_at=expires_at,
        created_by_id=created_by_id,
    )
    session.add(record)
    session.flush()
    audit.record(
        session,
        actor,
        AuditAction.TOKEN_CREATED,
        f"token:{record.id}",
        {"name": name, "role": role.value, "expires_at": _iso(expires_at)},
    )
    session.commit()
    return IssuedToken(record=record, secret=secret)


def authenticate(session: Session, pepper: bytes, presented: str) -> ApiToken:
    """The live token matching `presented`, or AuthenticationFailed saying why not."""
    if not presented.startswith(API_TOKEN_PREFIX) or len(presented) > MAX_SECRET_LENGTH:
        raise AuthenticationFailed("not an fmtl API token")
    digest = secret_hash(pepper, presented)
    record = session.scalars(sa.select(ApiToken).where(ApiToken.token_hash == digest)).first()
    if record is None or not hashes_match(record.token_hash, digest):
        raise AuthenticationFailed("unknown API token")
    if record.revoked_at is not None:
        raise AuthenticationFailed("this API token was revoked")
    if record.expires_at is not None and record.expires_at <= utcnow():
        raise AuthenticationFailed("this API token has expired")
    return record


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(sa.select(ApiToken).order_by(ApiToken.id)))


def revoke_token(session: Session, token_id: int, *, actor: audit.Actor) -> ApiToken:
    record = session.get(ApiToken, token_id)
    if record is None:
        raise NotFound(f"no API token with id {token_id}")
    if record.revoked_at is not None:
        raise StateConflict(f"API token {token_id} is already revoked")
    record.revoked_at = utcnow()
    audit.record(session, actor, AuditAction.TOKEN_REVOKED, f"token:{record.id}", {})
    session.commit()
    return record


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
