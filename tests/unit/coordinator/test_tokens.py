"""People's API tokens: shown once, stored as keyed hashes, refused when revoked or expired."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit.models import AuditAction, AuditEntry
from coordinator.auth import service
from coordinator.auth.models import ApiToken, Role
from coordinator.db import utcnow
from coordinator.errors import AuthenticationFailed, InvalidInput, NotFound, StateConflict
from coordinator.settings import Settings

from .conftest import TEST_ACTOR


def _issue(session: Session, settings: Settings, role: Role = Role.OPERATOR) -> service.IssuedToken:
    return service.create_token(
        session,
        settings.pepper,
        name="ops",
        role=role,
        expires_at=utcnow() + timedelta(days=1),
        actor=TEST_ACTOR,
    )


def test_token_authenticates_and_only_its_keyed_hash_is_stored(
    session: Session, settings: Settings
) -> None:
    issued = _issue(session, settings)
    record = service.authenticate(session, settings.pepper, issued.secret)
    assert record.id == issued.record.id
    assert record.role is Role.OPERATOR
    stored = session.execute(sa.text("SELECT * FROM api_tokens")).all()
    assert issued.secret not in str(stored)
    assert issued.secret not in repr(issued)
    assert record.token_hash != issued.secret


def test_tokens_are_random_and_prefixed(session: Session, settings: Settings) -> None:
    secrets = {_issue(session, settings).secret for _ in range(5)}
    assert len(secrets) == 5
    assert all(secret.startswith("fmtl_api_") and len(secret) >= 50 for secret in secrets)


def test_another_pepper_does_not_accept_the_token(session: Session, settings: Settings) -> None:
    issued = _issue(session, settings)
    with pytest.raises(AuthenticationFailed, match="unknown"):
        service.authenticate(session, b"some-other-pepper-value", issued.secret)


@pytest.mark.parametrize("presented", ["", "fmtl_api_", "fmtl_api_guess", "Bearer x", "x" * 5000])
def test_unknown_or_malformed_tokens_are_refused(
    session: Session, settings: Settings, presented: str
) -> None:
    with pytest.raises(AuthenticationFailed):
        service.authenticate(session, settings.pepper, presented)


def test_revoked_token_is_refused_and_revocation_is_audited(
    session: Session, settings: Settings
) -> None:
    issued = _issue(session, settings)
    service.revoke_token(session, issued.record.id, actor=TEST_ACTOR)
    with pytest.raises(AuthenticationFailed, match="revoked"):
        service.authenticate(session, settings.pepper, issued.secret)
    with pytest.raises(StateConflict):
        service.revoke_token(session, issued.record.id, actor=TEST_ACTOR)
    with pytest.raises(NotFound):
        service.revoke_token(session, 9999, actor=TEST_ACTOR)
    actions = session.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.seq)).all()
    assert actions == [AuditAction.TOKEN_CREATED, AuditAction.TOKEN_REVOKED]


def test_expired_token_is_refused(session: Session, settings: Settings) -> None:
    issued = _issue(session, settings)
    session.execute(sa.update(ApiToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    with pytest.raises(AuthenticationFailed, match="expired"):
        service.authenticate(session, settings.pepper, issued.secret)


def test_token_lifetimes_are_bounded(session: Session, settings: Settings) -> None:
    for expires_at in (utcnow() - timedelta(days=1), utcnow() + timedelta(days=400)):
        with pytest.raises(InvalidInput):
            service.create_token(
                session,
                settings.pepper,
                name="x",
                role=Role.ADMIN,
                expires_at=expires_at,
                actor=TEST_ACTOR,
            )
    assert service.list_tokens(session) == []
