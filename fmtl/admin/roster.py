"""The federation admin's roster key, and signing the next version of the roster.

The roster key is an Ed25519 key the admin keeps outside the coordinator (a file, mode
0600, on the admin's own machine); institutions pin its fingerprint when they enroll
(`fmtl agent enroll --roster-key`). `next_roster` builds version v+1 from the enrolled
institutions the coordinator lists; the admin checks each member's key fingerprint
against the one its institution reads in `fmtl agent status` before signing: the
signature vouches for those keys, and the coordinator's list alone is not to be trusted.
"""

from __future__ import annotations

import base64
import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.attestation import signed_message
from federation.roster import (
    ROSTER_DOMAIN,
    Roster,
    RosterMember,
    SignedRoster,
    key_fingerprint,
)
from fmtl.admin.client import AdminClient


class RosterKeyError(Exception):
    """The roster key file is missing, unreadable, exposed or not an Ed25519 key."""


def create_roster_key(path: Path) -> Ed25519PrivateKey:
    """A new roster key at `path` (PKCS#8 PEM, mode 0600); refuses to replace one."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise RosterKeyError(f"{path}: a roster key is already there; it is kept") from None
    try:
        with os.fdopen(fd, "wb") as sink:
            sink.write(pem)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return key


def load_roster_key(path: Path) -> Ed25519PrivateKey:
    try:
        if path.stat().st_mode & 0o077:
            raise RosterKeyError(f"{path}: the roster key is accessible to others; chmod 600 it")
        data = path.read_bytes()
    except FileNotFoundError:
        raise RosterKeyError(
            f"{path}: no roster key; make one with: fmtl admin roster-key {path}"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise RosterKeyError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RosterKeyError(f"{path}: the roster key must be Ed25519")
    return key


def public_fingerprint(key: Ed25519PrivateKey) -> str:
    return key_fingerprint(key.public_key().public_bytes_raw())


def next_roster(
    federation: str, version: int, members: dict[str, str], *, now: datetime | None = None
) -> Roster:
    """Version `version` listing `members` (institution -> URL-safe base64 public key)."""
    return Roster(
        federation=federation,
        version=version,
        issued_at=now or datetime.now(UTC),
        members=tuple(
            RosterMember(
                institution=name,
                public_key=base64.urlsafe_b64decode(key + "=" * (-len(key) % 4)),
            )
            for name, key in sorted(members.items())
        ),
    )


def sign_roster(roster: Roster, key: Ed25519PrivateKey) -> SignedRoster:
    signature = key.sign(signed_message(ROSTER_DOMAIN, roster.payload()))
    return SignedRoster(
        roster=roster, admin_key=key.public_key().public_bytes_raw(), signature=signature
    )


def draft_next(client: AdminClient, federation: str) -> tuple[Roster, Roster | None]:
    """The next version listing every enrolled institution, and the current one (if any)."""
    current = client.roster(federation)
    members = {
        item.name: item.public_key
        for item in client.institutions(federation)
        if item.state == "enrolled" and item.public_key
    }
    version = 1 if current is None else current.roster.version + 1
    return next_roster(federation, version, members), None if current is None else current.roster


def publish_next(client: AdminClient, federation: str, key: Ed25519PrivateKey) -> int:
    """Sign and publish the next version without asking (the demo and tests, where the
    admin made every key listed); its version number."""
    roster, _ = draft_next(client, federation)
    published = client.publish_roster(federation, sign_roster(roster, key))
    return int(published["version"])


__all__ = [
    "RosterKeyError",
    "create_roster_key",
    "draft_next",
    "load_roster_key",
    "next_roster",
    "public_fingerprint",
    "publish_next",
    "sign_roster",
]
