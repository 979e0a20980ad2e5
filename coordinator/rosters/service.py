"""Publish and read a federation's signed roster (federation/roster.py has the policy).

The coordinator checks what it can before it stores a version, so that an admin's mistake
is a clear 4xx rather than a roster every agent refuses: the signature verifies with the
roster's admin key; that key is the one of the previous version; the version is the next
one; the roster names this federation; and every member is an enrolled, not revoked,
institution of it with exactly the enrolled identity key. Agents check the signature
again, against the fingerprint they pinned: the coordinator's checks are a convenience,
never what an agent relies on.
"""

from __future__ import annotations

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.orm import Session

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.errors import InvalidInput, NotFound, StateConflict
from coordinator.federations.service import get_federation
from coordinator.institutions.models import EnrollmentState, Institution
from coordinator.rosters.models import RosterVersion
from federation.roster import SignedRoster, roster_changes


def latest(session: Session, federation_name: str) -> RosterVersion | None:
    federation = get_federation(session, federation_name)
    query = (
        sa.select(RosterVersion)
        .where(RosterVersion.federation_id == federation.id)
        .order_by(RosterVersion.version.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def latest_signed(session: Session, federation_name: str) -> SignedRoster:
    """The newest signed roster; NotFound (saying how to publish one) when there is none."""
    record = latest(session, federation_name)
    if record is None:
        raise NotFound(
            f"federation '{federation_name}' has no signed roster yet; its admin publishes "
            "one with: fmtl admin publish-roster"
        )
    return SignedRoster.model_validate_json(record.document)


def publish(
    session: Session, federation_name: str, signed: SignedRoster, *, actor: audit.Actor
) -> tuple[RosterVersion, list[str]]:
    """Store the next version (see the module doc for what is checked); its changes."""
    federation = get_federation(session, federation_name)
    roster = signed.roster
    try:
        Ed25519PublicKey.from_public_bytes(signed.admin_key).verify(
            signed.signature, signed.signed_bytes
        )
    except (InvalidSignature, ValueError):
        raise InvalidInput("the roster's signature does not verify with its admin key") from None
    if roster.federation != federation.name:
        raise InvalidInput(
            f"the roster is for federation '{roster.federation}', not '{federation.name}'"
        )
    previous = latest(session, federation.name)
    expected = 1 if previous is None else previous.version + 1
    if roster.version != expected:
        raise StateConflict(f"the next roster version is {expected}, got {roster.version}")
    if previous is not None and previous.admin_fingerprint != signed.admin_fingerprint:
        raise InvalidInput(
            "the roster is signed by another admin key than version "
            f"{previous.version}; institutions pinned that key (a new key means every "
            "institution enrolls again and pins it)"
        )
    enrolled = {
        institution.name: institution
        for institution in session.scalars(
            sa.select(Institution).where(Institution.federation_id == federation.id)
        )
    }
    for member in roster.members:
        institution = enrolled.get(member.institution)
        if institution is None or institution.state is not EnrollmentState.ENROLLED:
            raise InvalidInput(f"'{member.institution}' is not an enrolled institution here")
        if bytes(institution.public_key or b"") != member.public_key:
            raise InvalidInput(f"'{member.institution}' is listed with another identity key")
    old = None if previous is None else SignedRoster.model_validate_json(previous.document)
    changes = roster_changes(old.roster if old else None, roster)
    record = RosterVersion(
        federation_id=federation.id,
        version=roster.version,
        admin_fingerprint=signed.admin_fingerprint,
        members=len(roster.members),
        document=signed.model_dump_json(),
    )
    session.add(record)
    try:
        session.flush()
    except sa.exc.IntegrityError:  # a concurrent publish took this version first
        session.rollback()
        raise StateConflict(f"roster version {roster.version} was just published") from None
    audit.record(
        session,
        actor,
        AuditAction.ROSTER_PUBLISHED,
        f"federation:{federation.name}",
        {
            "version": roster.version,
            "admin_fingerprint": signed.admin_fingerprint,
            "members": len(roster.members),
            "changes": changes,
        },
    )
    session.commit()
    return record, changes
