"""Verification of agents' HTTP Message Signatures (RFC 9421), with replay protection.

The profile (covered components, tag, age, skew, nonce size) is in `federation.wire`; the
agent's signer is `agent.http_signing`. A request is accepted only if:

1. it carries a signature tagged `SIGNATURE_TAG`, by algorithm ed25519, whose `keyid` names
   an enrolled (not revoked) institution, and that verifies under its identity key;
2. that signature covers every component of `COVERED_COMPONENTS`, and the `Content-Digest`
   it covers matches the body actually received (RFC 9530);
3. its `created` time is no older than the maximum age and not in the future (both with
   the clock-skew tolerance);
4. its `nonce` has not been seen for that key; the nonce is then remembered (committed at
   once, so even a request that fails later cannot be replayed) until the signature would be
   too old anyway.

For streamed uploads (masked updates), `verify_agent_headers` checks 1, 3 and 4 before the
body is read and returns the SHA-256 the signature commits to; the upload handler streams
the body into the blob store and accepts it only if its digest equals that value (2).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)
from sqlalchemy.orm import Session

from coordinator.auth.models import SignatureNonce
from coordinator.db import utcnow
from coordinator.errors import ReplayDetected, SignatureRejected
from coordinator.institutions.models import Institution
from coordinator.institutions.service import enrolled_institution
from federation.wire import COVERED_COMPONENTS, NONCE_BYTES, SIGNATURE_TAG

_NONCE_PATTERN: Final = re.compile(rf"^[0-9a-f]{{{2 * NONCE_BYTES}}}$")
_KEY_ID_PATTERN: Final = re.compile(r"^[1-9][0-9]{0,17}$")
#: A Content-Digest holding one sha-256 value (RFC 9530 section 2): `sha-256=:<base64>:`.
_SHA256_DIGEST: Final = re.compile(r"^sha-256=:([A-Za-z0-9+/]{43}=):$")
#: The verifier needs an absolute URL but the authority is not covered (proxies rewrite
#: it), so requests are verified against this fixed origin plus the received raw path.
_VERIFY_ORIGIN: Final = "http://coordinator.invalid"


@dataclass(frozen=True)
class ReceivedRequest:
    """What the verifier needs of an HTTP request, exactly as received."""

    method: str
    raw_path: str  # percent-encoded, as on the request line
    query: str  # raw query string, without '?'
    headers: Sequence[tuple[str, str]]
    body: bytes | None  # None: not read yet (streamed); see `verify_agent_headers`


@dataclass(frozen=True)
class SignedHeaders:
    """A verified signature whose body is still to come, and the digest it must have."""

    institution: Institution
    content_sha256: bytes


@dataclass(frozen=True)
class SignaturePolicy:
    max_age: timedelta
    clock_skew: timedelta


class _Headers:
    def __init__(self, lines: Sequence[tuple[str, str]]) -> None:
        self._lines = lines

    def items(self) -> Iterable[tuple[str, str]]:
        return iter(self._lines)


@dataclass
class _Message:
    method: str
    url: str
    headers: _Headers


class _InstitutionKeys(HTTPSignatureKeyResolver):
    """Resolves a `keyid` to the identity key of the enrolled institution with that id."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.institution: Institution | None = None

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:
        if not isinstance(key_id, str) or not _KEY_ID_PATTERN.match(key_id):
            return None
        institution = enrolled_institution(self.session, int(key_id))
        if institution is None or institution.public_key is None:
            return None
        self.institution = institution
        return Ed25519PublicKey.from_public_bytes(institution.public_key)

    def resolve_private_key(self, key_id: str) -> Ed25519PublicKey:
        raise NotImplementedError("the coordinator never signs as an agent")


def verify_agent_request(
    session: Session, request: ReceivedRequest, policy: SignaturePolicy
) -> Institution:
    """The enrolled institution that signed `request`; SignatureRejected otherwise."""
    if request.body is None:
        raise ValueError("verify_agent_request needs the body; use verify_agent_headers")
    institution, _ = _verify(session, request, policy)
    return institution


def verify_agent_headers(
    session: Session, request: ReceivedRequest, policy: SignaturePolicy
) -> SignedHeaders:
    """Verify a request's signature before reading its body (streamed uploads).

    The caller must then check that the body it receives has `content_sha256`, and refuse
    the request (keeping nothing of it) otherwise.
    """
    institution, digest = _verify(session, replace(request, body=None), policy)
    return SignedHeaders(institution=institution, content_sha256=digest)


def _verify(
    session: Session, request: ReceivedRequest, policy: SignaturePolicy
) -> tuple[Institution, bytes]:
    keys = _InstitutionKeys(session)
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=keys)
    verifier.max_clock_skew = policy.clock_skew
    url = _VERIFY_ORIGIN + request.raw_path + (f"?{request.query}" if request.query else "")
    message = _Message(method=request.method, url=url, headers=_Headers(request.headers))
    try:
        results = verifier.verify(
            message,
            max_age=policy.max_age,
            expect_tag=SIGNATURE_TAG,
            require_components=COVERED_COMPONENTS,
            body=request.body,
        )
    except HTTPMessageSignaturesException as exc:
        raise SignatureRejected(f"request signature rejected: {exc}") from None
    except (ValueError, TypeError, UnicodeError):
        raise SignatureRejected("request signature rejected: malformed signature fields") from None
    if len(results) != 1 or keys.institution is None:
        raise SignatureRejected("request signature rejected: expected exactly one fmtl signature")
    result = results[0]
    digest = _signed_sha256(result.covered_components)
    if result.parameters.get("keyid") != keys.institution.key_id:
        raise SignatureRejected("request signature rejected: key id mismatch")
    nonce = result.nonce
    if nonce is None or not _NONCE_PATTERN.match(nonce):
        raise SignatureRejected(
            f"request signature rejected: a nonce of {NONCE_BYTES} random bytes (hex) is required"
        )
    created = result.parameters["created"]
    assert isinstance(created, int)  # the verifier checked the type
    _remember_nonce(session, keys.institution, nonce, created, policy)
    return keys.institution, digest


def _signed_sha256(covered: dict[str, str]) -> bytes:
    """The SHA-256 in the covered `Content-Digest` (the verifier checked it is covered)."""
    match = _SHA256_DIGEST.match(covered.get('"content-digest"', ""))
    if match is None:
        raise SignatureRejected(
            "request signature rejected: Content-Digest must be exactly one sha-256 digest"
        )
    return base64.b64decode(match.group(1))


def _remember_nonce(
    session: Session, institution: Institution, nonce: str, created: int, policy: SignaturePolicy
) -> None:
    expires_at = datetime.fromtimestamp(created, UTC) + policy.max_age + 2 * policy.clock_skew
    institution_id = institution.id
    session.add(SignatureNonce(institution_id=institution_id, nonce=nonce, expires_at=expires_at))
    try:
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()
        raise ReplayDetected(
            "request signature rejected: this nonce was already used (replayed request)"
        ) from None


def purge_expired_nonces(session: Session, now: datetime | None = None) -> int:
    """Forget nonces whose signatures can no longer be accepted; returns how many."""
    result = session.execute(
        sa.delete(SignatureNonce).where(SignatureNonce.expires_at < (now or utcnow()))
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]
