"""Invite institutions, enroll their agents, revoke them.

Enrollment (DESIGN.md, "Security model"): an admin invites an institution, naming the tasks
it holds, and receives a one-time token to hand over out of band. The agent sends the
token, a fresh Ed25519 public key and a signature proving it holds the private key; the
token is spent atomically (a second use is refused) and the key becomes the institution's
identity, with which it signs every later request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.orm import Session, selectinload

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.auth.credentials import MAX_SECRET_LENGTH, new_secret, secret_hash
from coordinator.db import utcnow
from coordinator.errors import (
    AlreadyExists,
    AuthenticationFailed,
    EnrollmentRefused,
    InvalidInput,
    NotFound,
    StateConflict,
)
from coordinator.federations.models import Federation, Task
from coordinator.federations.service import get_federation
from coordinator.institutions.models import EnrollmentState, EnrollmentToken, Institution
from federation.wire import ENROLLMENT_TOKEN_PREFIX, EnrollmentRequest, enrollment_proof_message


@dataclass(frozen=True)
class Invitation:
    """A new invitation: the institution and its one-time token (shown once, never stored)."""

    institution: Institution
    token: str = field(repr=False)
    expires_at: datetime


def key_fingerprint(public_key: bytes) -> str:
    """SHA-256 (hex) of a raw public key: how people compare keys out of band."""
    return hashlib.sha256(public_key).hexdigest()


def invite(
    session: Session,
    pepper: bytes,
    *,
    federation_name: str,
    name: str,
    tasks: Sequence[str],
    ttl: timedelta,
    actor: audit.Actor,
) -> Invitation:
    """Register an institution holding `tasks` and issue its enrollment token."""
    federation = get_federation(session, federation_name)
    held = _resolve_tasks(federation, tasks)
    existing = session.scalars(
        sa.select(Institution).where(
            Institution.federation_id == federation.id, Institution.name == name
        )
    ).first()
    if existing is not None:
        raise AlreadyExists(f"federation '{federation.name}' already has an institution '{name}'")
    institution = Institution(federation_id=federation.id, name=name, tasks=held)
    session.add(institution)
    try:
        session.flush()
    except sa.exc.IntegrityError:
        session.rollback()
        raise AlreadyExists(
            f"federation '{federation.name}' already has an institution '{name}'"
        ) from None
    token, expires_at = _issue_token(session, pepper, institution, ttl)
    audit.record(
        session,
        actor,
        AuditAction.INSTITUTION_INVITED,
        _subject(federation, institution),
        {"tasks": [task.name for task in held], "expires_at": expires_at.isoformat()},
    )
    session.commit()
    return Invitation(institution=institution, token=token, expires_at=expires_at)


def reissue_invitation(
    session: Session,
    pepper: bytes,
    *,
    federation_name: str,
    name: str,
    ttl: timedelta,
    actor: audit.Actor,
) -> Invitation:
    """A fresh token for an institution that has not enrolled yet; older tokens stop working."""
    institution = get_institution(session, federation_name, name)
    if institution.state is not EnrollmentState.INVITED:
        raise StateConflict(
            f"institution '{name}' is {institution.state.value}; only an institution that has "
            "not enrolled yet can be invited again"
        )
    now = utcnow()
    session.execute(
        sa.update(EnrollmentToken)
        .where(
            EnrollmentToken.institution_id == institution.id,
            EnrollmentToken.used_at.is_(None),
            EnrollmentToken.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )
    token, expires_at = _issue_token(session, pepper, institution, ttl)
    audit.record(
        session,
        actor,
        AuditAction.INSTITUTION_INVITED,
        _subject(institution.federation, institution),
        {"reissued": True, "expires_at": expires_at.isoformat()},
    )
    session.commit()
    return Invitation(institution=institution, token=token, expires_at=expires_at)


def enroll(session: Session, pepper: bytes, request: EnrollmentRequest) -> Institution:
    """Spend an enrollment token and register the agent's identity key."""
    if not request.token.startswith(ENROLLMENT_TOKEN_PREFIX) or (
        len(request.token) > MAX_SECRET_LENGTH
    ):
        raise AuthenticationFailed("not an fmtl enrollment token")
    token = session.scalars(
        sa.select(EnrollmentToken).where(
            EnrollmentToken.token_hash == secret_hash(pepper, request.token)
        )
    ).first()
    if token is None:
        raise AuthenticationFailed("unknown enrollment token")
    now = utcnow()
    institution = token.institution
    if token.used_at is not None:
        raise EnrollmentRefused("this enrollment token was already used")
    if token.revoked_at is not None or institution.state is EnrollmentState.REVOKED:
        raise EnrollmentRefused("this enrollment token was revoked")
    if token.expires_at <= now:
        raise EnrollmentRefused("this enrollment token has expired; ask for a new invitation")
    if institution.state is not EnrollmentState.INVITED:
        raise EnrollmentRefused(f"institution '{institution.name}' is already enrolled")
    try:
        Ed25519PublicKey.from_public_bytes(request.public_key).verify(
            request.proof, enrollment_proof_message(request.token, request.public_key)
        )
    except (InvalidSignature, ValueError):
        raise EnrollmentRefused(
            "the proof of possession does not verify with the given public key"
        ) from None
    if session.scalars(
        sa.select(Institution.id).where(Institution.public_key == request.public_key)
    ).first():
        raise AlreadyExists("this public key is already enrolled; generate a new identity key")
    # Spend the token atomically: of two concurrent enrollments, exactly one updates a row.
    spent = session.execute(
        sa.update(EnrollmentToken)
        .where(EnrollmentToken.id == token.id, EnrollmentToken.used_at.is_(None))
        .values(used_at=now)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise EnrollmentRefused("this enrollment token was already used")
    institution.public_key = request.public_key
    institution.state = EnrollmentState.ENROLLED
    institution.enrolled_at = now
    try:
        session.flush()
    except sa.exc.IntegrityError:
        session.rollback()
        raise AlreadyExists("this public key is already enrolled") from None
    audit.record(
        session,
        audit.Actor(audit.ActorKind.INSTITUTION, str(institution.id)),
        AuditAction.INSTITUTION_ENROLLED,
        _subject(institution.federation, institution),
        {"key_fingerprint": key_fingerprint(request.public_key)},
    )
    session.commit()
    return institution


def revoke(session: Session, *, federation_name: str, name: str, actor: audit.Actor) -> Institution:
    """Refuse the institution from now on: its signatures, tokens and future rounds."""
    institution = get_institution(session, federation_name, name)
    if institution.state is EnrollmentState.REVOKED:
        raise StateConflict(f"institution '{name}' is already revoked")
    now = utcnow()
    institution.state = EnrollmentState.REVOKED
    institution.revoked_at = now
    session.execute(
        sa.update(EnrollmentToken)
        .where(EnrollmentToken.institution_id == institution.id, EnrollmentToken.used_at.is_(None))
        .values(revoked_at=now)
    )
    audit.record(
        session,
        actor,
        AuditAction.INSTITUTION_REVOKED,
        _subject(institution.federation, institution),
        {},
    )
    session.commit()
    return institution


def get_institution(session: Session, federation_name: str, name: str) -> Institution:
    federation = get_federation(session, federation_name)
    institution = session.scalars(
        sa.select(Institution)
        .where(Institution.federation_id == federation.id, Institution.name == name)
        .options(selectinload(Institution.tasks))
    ).first()
    if institution is None:
        raise NotFound(f"federation '{federation_name}' has no institution '{name}'")
    return institution


def list_institutions(session: Session, federation_name: str) -> list[Institution]:
    federation = get_federation(session, federation_name)
    query = (
        sa.select(Institution)
        .where(Institution.federation_id == federation.id)
        .order_by(Institution.name)
        .options(selectinload(Institution.tasks))
    )
    return list(session.scalars(query))


def enrolled_institution(session: Session, institution_id: int) -> Institution | None:
    """The institution with that id if it is enrolled (not invited, not revoked)."""
    institution = session.get(Institution, institution_id)
    if institution is None or institution.state is not EnrollmentState.ENROLLED:
        return None
    return institution


def _resolve_tasks(federation: Federation, names: Sequence[str]) -> list[Task]:
    if not names:
        raise InvalidInput("an institution must hold at least one task")
    by_name = {task.name: task for task in federation.tasks}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        known = ", ".join(by_name)
        raise InvalidInput(
            f"unknown task(s) {', '.join(unknown)} (federation '{federation.name}' has: {known})"
        )
    if len(set(names)) != len(names):
        raise InvalidInput("a task is listed twice")
    return [by_name[name] for name in names]


def _issue_token(
    session: Session, pepper: bytes, institution: Institution, ttl: timedelta
) -> tuple[str, datetime]:
    secret = new_secret(ENROLLMENT_TOKEN_PREFIX)
    expires_at = utcnow() + ttl
    session.add(
        EnrollmentToken(
            institution_id=institution.id,
            token_hash=secret_hash(pepper, secret),
            expires_at=expires_at,
        )
    )
    session.flush()
    return secret, expires_at


def _subject(federation: Federation, institution: Institution) -> str:
    return f"institution:{federation.name}/{institution.name}"
