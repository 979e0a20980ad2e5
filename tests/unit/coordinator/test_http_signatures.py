"""Agents sign with `agent.http_signing`; the coordinator verifies with `coordinator.auth`.

A request verifies exactly once, unchanged, fresh, by an enrolled key; anything else is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from agent.http_signing import RequestSigner
from coordinator.auth.models import SignatureNonce
from coordinator.auth.signatures import (
    ReceivedRequest,
    SignaturePolicy,
    purge_expired_nonces,
    verify_agent_headers,
    verify_agent_request,
)
from coordinator.db import utcnow
from coordinator.errors import ReplayDetected, SignatureRejected
from coordinator.institutions import service as institutions
from coordinator.settings import Settings

from .conftest import TEST_ACTOR, EnrolledAgent

POLICY = SignaturePolicy(max_age=timedelta(seconds=300), clock_skew=timedelta(seconds=30))
URL = "https://coordinator.example:8443/agent/v1/rounds/3/masked-update?attempt=1"
BODY = b'{"hello": "world"}'


def _signed(
    signer: RequestSigner,
    *,
    method: str = "POST",
    url: str = URL,
    body: bytes = BODY,
    created: datetime | None = None,
    nonce: str | None = None,
) -> ReceivedRequest:
    headers = signer.signature_headers(method, url, body, created=created, nonce=nonce)
    path, _, query = url.split("://", 1)[1].partition("/")[2].partition("?")
    return ReceivedRequest(
        method=method,
        raw_path="/" + path,
        query=query,
        headers=[("content-type", "application/json"), *headers.items()],
        body=body,
    )


def test_a_signed_request_verifies_as_its_institution(
    session: Session, enrolled_agent: EnrolledAgent
) -> None:
    request = _signed(enrolled_agent.signer)
    assert verify_agent_request(session, request, POLICY).id == enrolled_agent.institution.id


def test_an_empty_body_is_signed_and_verified_too(
    session: Session, enrolled_agent: EnrolledAgent
) -> None:
    request = _signed(enrolled_agent.signer, method="GET", body=b"")
    assert verify_agent_request(session, request, POLICY).id == enrolled_agent.institution.id


def test_a_replayed_request_is_refused(session: Session, enrolled_agent: EnrolledAgent) -> None:
    request = _signed(enrolled_agent.signer)
    verify_agent_request(session, request, POLICY)
    with pytest.raises(ReplayDetected, match="already used"):
        verify_agent_request(session, request, POLICY)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"body": b'{"hello": "w0rld"}'}, "Content-Digest does not match"),
        ({"method": "PUT"}, "rejected"),
        ({"raw_path": "/agent/v1/rounds/4/masked-update"}, "rejected"),
        ({"query": "attempt=2"}, "rejected"),
    ],
)
def test_any_change_to_a_covered_part_is_refused(
    session: Session, enrolled_agent: EnrolledAgent, change: dict[str, object], expected: str
) -> None:
    tampered = replace(_signed(enrolled_agent.signer), **change)  # type: ignore[arg-type]
    with pytest.raises(SignatureRejected, match=expected):
        verify_agent_request(session, tampered, POLICY)


def test_a_stale_or_future_signature_is_refused(
    session: Session, enrolled_agent: EnrolledAgent
) -> None:
    stale = _signed(enrolled_agent.signer, created=utcnow() - timedelta(seconds=400))
    with pytest.raises(SignatureRejected, match="age exceeds"):
        verify_agent_request(session, stale, POLICY)
    future = _signed(enrolled_agent.signer, created=utcnow() + timedelta(seconds=120))
    with pytest.raises(SignatureRejected, match="future"):
        verify_agent_request(session, future, POLICY)
    skewed = _signed(enrolled_agent.signer, created=utcnow() + timedelta(seconds=10))
    verify_agent_request(session, skewed, POLICY)  # within the tolerated skew


@pytest.mark.parametrize("nonce", ["", "abc", "zz" * 16])
def test_a_missing_or_weak_nonce_is_refused(
    session: Session, enrolled_agent: EnrolledAgent, nonce: str
) -> None:
    request = _signed(enrolled_agent.signer, nonce=nonce)
    with pytest.raises(SignatureRejected, match="nonce"):
        verify_agent_request(session, request, POLICY)


def test_another_key_or_key_id_is_refused(session: Session, enrolled_agent: EnrolledAgent) -> None:
    impostor = RequestSigner(Ed25519PrivateKey.generate(), enrolled_agent.institution.key_id)
    with pytest.raises(SignatureRejected):
        verify_agent_request(session, _signed(impostor), POLICY)
    unknown = RequestSigner(enrolled_agent.private_key, "999")
    with pytest.raises(SignatureRejected, match="resolve"):
        verify_agent_request(session, _signed(unknown), POLICY)


def test_unsigned_and_garbled_requests_are_refused(
    session: Session, enrolled_agent: EnrolledAgent
) -> None:
    unsigned = ReceivedRequest("GET", "/agent/v1/me", "", [], b"")
    with pytest.raises(SignatureRejected, match="Signature-Input"):
        verify_agent_request(session, unsigned, POLICY)
    garbled = replace(
        _signed(enrolled_agent.signer),
        headers=[("signature-input", 'fmtl=("@method";'), ("signature", "fmtl=:AAAA:")],
    )
    with pytest.raises(SignatureRejected):
        verify_agent_request(session, garbled, POLICY)


def test_a_revoked_institution_can_no_longer_sign(
    session: Session, settings: Settings, enrolled_agent: EnrolledAgent
) -> None:
    institutions.revoke(session, federation_name="heart", name="cleveland", actor=TEST_ACTOR)
    with pytest.raises(SignatureRejected):
        verify_agent_request(session, _signed(enrolled_agent.signer), POLICY)


def test_nonces_are_forgotten_once_they_could_no_longer_be_replayed(
    session: Session, enrolled_agent: EnrolledAgent
) -> None:
    verify_agent_request(session, _signed(enrolled_agent.signer), POLICY)
    old = _signed(enrolled_agent.signer, created=utcnow() - timedelta(seconds=200))
    verify_agent_request(session, old, POLICY)
    assert purge_expired_nonces(session, utcnow()) == 0
    later = utcnow() + timedelta(seconds=300)
    assert purge_expired_nonces(session, later) == 1  # the older one
    assert session.scalar(sa.select(sa.func.count()).select_from(SignatureNonce)) == 1


def test_streamed_uploads_verify_headers_first_and_learn_the_digest_to_check(
    session: Session, enrolled_agent: EnrolledAgent
) -> None:
    body = bytes(range(256)) * 1000
    request = replace(_signed(enrolled_agent.signer, body=body), body=None)
    signed = verify_agent_headers(session, request, POLICY)
    assert signed.institution.id == enrolled_agent.institution.id
    assert signed.content_sha256 == hashlib.sha256(body).digest()
    with pytest.raises(ReplayDetected):
        verify_agent_headers(session, request, POLICY)


def test_verifying_a_whole_request_needs_its_body(
    session: Session, enrolled_agent: EnrolledAgent
) -> None:
    request = replace(_signed(enrolled_agent.signer), body=None)
    with pytest.raises(ValueError, match="needs the body"):
        verify_agent_request(session, request, POLICY)
