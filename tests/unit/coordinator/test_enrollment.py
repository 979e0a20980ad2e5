"""Enrollment: one-time tokens, proof of possession, and refusals that change nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from agent.http_signing import enrollment_proof
from coordinator.audit import service as audit
from coordinator.db import utcnow
from coordinator.errors import (
    AlreadyExists,
    AuthenticationFailed,
    EnrollmentRefused,
    InvalidInput,
    StateConflict,
)
from coordinator.federations.models import Federation
from coordinator.institutions import service
from coordinator.institutions.models import EnrollmentState, EnrollmentToken, Institution
from coordinator.settings import Settings
from federation.wire import EnrollmentRequest

from .conftest import TEST_ACTOR


def _invite(session: Session, settings: Settings, name: str = "cleveland") -> service.Invitation:
    return service.invite(
        session,
        settings.pepper,
        federation_name="heart",
        name=name,
        tasks=["disease"],
        ttl=timedelta(hours=1),
        actor=TEST_ACTOR,
    )


def _request(token: str, key: Ed25519PrivateKey | None = None) -> EnrollmentRequest:
    key = key or Ed25519PrivateKey.generate()
    return EnrollmentRequest(
        token=token,
        public_key=key.public_key().public_bytes_raw(),
        proof=enrollment_proof(key, token),
    )


def test_enrollment_registers_the_key_and_spends_the_token(
    session: Session, settings: Settings, federation: Federation
) -> None:
    invitation = _invite(session, settings)
    assert invitation.token.startswith("fmtl_enroll_")
    assert invitation.token not in repr(invitation)
    key = Ed25519PrivateKey.generate()
    institution = service.enroll(session, settings.pepper, _request(invitation.token, key))
    assert institution.state is EnrollmentState.ENROLLED
    assert institution.public_key == key.public_key().public_bytes_raw()
    assert [task.name for task in institution.tasks] == ["disease"]
    assert audit.verify(session).entries == 3  # federation, invitation, enrollment


def test_a_used_token_is_refused(
    session: Session, settings: Settings, federation: Federation
) -> None:
    invitation = _invite(session, settings)
    service.enroll(session, settings.pepper, _request(invitation.token))
    with pytest.raises(EnrollmentRefused, match="already used"):
        service.enroll(session, settings.pepper, _request(invitation.token))


def test_an_expired_token_is_refused(
    session: Session, settings: Settings, federation: Federation
) -> None:
    invitation = _invite(session, settings)
    session.execute(sa.update(EnrollmentToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()
    with pytest.raises(EnrollmentRefused, match="expired"):
        service.enroll(session, settings.pepper, _request(invitation.token))


def test_a_bad_proof_is_refused_and_changes_nothing(
    session: Session, settings: Settings, federation: Federation
) -> None:
    invitation = _invite(session, settings)
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    forged = EnrollmentRequest(
        token=invitation.token,
        public_key=key.public_key().public_bytes_raw(),
        proof=enrollment_proof(other, invitation.token),
    )
    entries_before = audit.verify(session).entries
    with pytest.raises(EnrollmentRefused, match="proof of possession"):
        service.enroll(session, settings.pepper, forged)
    institution = session.scalars(sa.select(Institution)).one()
    assert institution.state is EnrollmentState.INVITED
    assert institution.public_key is None
    assert session.scalars(sa.select(EnrollmentToken.used_at)).one() is None
    assert audit.verify(session).entries == entries_before
    service.enroll(session, settings.pepper, _request(invitation.token))  # still usable


def test_a_proof_for_another_token_is_refused(
    session: Session, settings: Settings, federation: Federation
) -> None:
    first, second = _invite(session, settings, "a"), _invite(session, settings, "b")
    key = Ed25519PrivateKey.generate()
    crossed = EnrollmentRequest(
        token=second.token,
        public_key=key.public_key().public_bytes_raw(),
        proof=enrollment_proof(key, first.token),
    )
    with pytest.raises(EnrollmentRefused):
        service.enroll(session, settings.pepper, crossed)


def test_unknown_tokens_are_unauthenticated(
    session: Session, settings: Settings, federation: Federation
) -> None:
    with pytest.raises(AuthenticationFailed):
        service.enroll(session, settings.pepper, _request("fmtl_enroll_guess"))
    with pytest.raises(AuthenticationFailed):
        service.enroll(session, settings.pepper, _request("not-even-a-token"))


def test_one_key_cannot_enroll_twice(
    session: Session, settings: Settings, federation: Federation
) -> None:
    key = Ed25519PrivateKey.generate()
    service.enroll(session, settings.pepper, _request(_invite(session, settings, "a").token, key))
    with pytest.raises(AlreadyExists, match="public key"):
        service.enroll(
            session, settings.pepper, _request(_invite(session, settings, "b").token, key)
        )


def test_invitations_name_the_unknown_task(
    session: Session, settings: Settings, federation: Federation
) -> None:
    with pytest.raises(InvalidInput, match=r"unknown task.*smoking.*has: disease, severity"):
        service.invite(
            session,
            settings.pepper,
            federation_name="heart",
            name="x",
            tasks=["disease", "smoking"],
            ttl=timedelta(hours=1),
            actor=TEST_ACTOR,
        )
    with pytest.raises(InvalidInput, match="at least one task"):
        service.invite(
            session,
            settings.pepper,
            federation_name="heart",
            name="x",
            tasks=[],
            ttl=timedelta(hours=1),
            actor=TEST_ACTOR,
        )
    assert session.scalars(sa.select(Institution)).all() == []


def test_duplicate_institution_names_are_refused(
    session: Session, settings: Settings, federation: Federation
) -> None:
    _invite(session, settings)
    with pytest.raises(AlreadyExists):
        _invite(session, settings)


def test_revoking_stops_enrollment_and_reinvitation(
    session: Session, settings: Settings, federation: Federation
) -> None:
    invitation = _invite(session, settings)
    service.revoke(session, federation_name="heart", name="cleveland", actor=TEST_ACTOR)
    with pytest.raises(EnrollmentRefused, match="revoked"):
        service.enroll(session, settings.pepper, _request(invitation.token))
    with pytest.raises(StateConflict):
        service.reissue_invitation(
            session,
            settings.pepper,
            federation_name="heart",
            name="cleveland",
            ttl=timedelta(hours=1),
            actor=TEST_ACTOR,
        )


def test_reissued_invitation_replaces_the_old_token(
    session: Session, settings: Settings, federation: Federation
) -> None:
    old = _invite(session, settings)
    new = service.reissue_invitation(
        session,
        settings.pepper,
        federation_name="heart",
        name="cleveland",
        ttl=timedelta(hours=1),
        actor=TEST_ACTOR,
    )
    with pytest.raises(EnrollmentRefused, match="revoked"):
        service.enroll(session, settings.pepper, _request(old.token))
    assert (
        service.enroll(session, settings.pepper, _request(new.token)).state
        is EnrollmentState.ENROLLED
    )
