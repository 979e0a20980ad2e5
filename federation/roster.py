"""The federation's roster, signed by its admin: who may take part, with which identity key.

The coordinator hands every agent its peers' identity keys in each round's config; alone,
that answer would let a lying coordinator add institutions of its own (sybils) to a round.
So the federation's admin signs the roster with a key of their own, held outside the
coordinator (`fmtl admin roster-key`), and each institution pins that key's fingerprint at
enrollment (`fmtl agent enroll --roster-key`). An agent takes part only in rounds whose
every participant is on the newest roster it verified with the pinned key.

Changes: a roster has a version. The admin signs version v+1 to add or remove an
institution (or replace its key); the coordinator stores it only if it is signed by the
same admin key as version v, and an agent accepts it only if it is signed by the pinned
key and its version is not below the one it holds (it logs who was added and removed). An
agent never goes back to an older version. Replacing the admin key means every institution
pins the new fingerprint (re-enrollment): there is no way for the coordinator to do it.

Signatures cover `signed_message(ROSTER_DOMAIN, roster.payload())` (federation.attestation).
This package holds no cryptography: the admin signs in `fmtl/admin/roster.py`, the
coordinator and the agents verify with `cryptography` in their own packages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from federation.attestation import signed_message
from federation.spec import Name
from federation.wire import Ed25519PublicKeyBytes, Ed25519SignatureBytes

#: Domain of a roster signature (never valid for another statement).
ROSTER_DOMAIN: Final = b"fmtl/roster/v1"
#: The most institutions one roster lists.
MAX_MEMBERS: Final = 100_000
_FINGERPRINT: Final = re.compile(r"^[0-9a-f]{64}$")


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def key_fingerprint(public_key: bytes) -> str:
    """A public key's fingerprint: SHA-256 of its 32 raw bytes, 64 hex digits."""
    return hashlib.sha256(public_key).hexdigest()


def normalise_fingerprint(text: str) -> str:
    """A fingerprint as typed by a person (any case, `:`, spaces), or ValueError."""
    cleaned = re.sub(r"[\s:]", "", text).lower()
    if not _FINGERPRINT.match(cleaned):
        raise ValueError(
            f"'{text}' is not a key fingerprint (64 hexadecimal digits, as printed by "
            "fmtl admin roster-key)"
        )
    return cleaned


def show_fingerprint(fingerprint: str) -> str:
    """Groups of four hex digits, to read aloud and compare (`ab12 cd34 ...`)."""
    return " ".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4))


class RosterMember(_Wire):
    """One institution of the federation and its enrolled identity key."""

    institution: Name
    public_key: Ed25519PublicKeyBytes


class Roster(_Wire):
    """Version `version` of the federation's roster (what the admin signs)."""

    federation: Name
    version: int = Field(ge=1, le=2**53)
    issued_at: datetime
    members: tuple[RosterMember, ...] = Field(max_length=MAX_MEMBERS)

    @model_validator(mode="after")
    def _distinct(self) -> Roster:
        names = [m.institution for m in self.members]
        keys = [m.public_key for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError("an institution appears twice on the roster")
        if len(set(keys)) != len(keys):
            raise ValueError("two institutions of the roster share an identity key")
        return self

    def payload(self) -> bytes:
        """Canonical JSON (sorted keys, no whitespace, members by name) of every field."""
        document = {
            "federation": self.federation,
            "version": self.version,
            "issued_at": self.issued_at.isoformat(),
            "members": [
                {
                    "institution": m.institution,
                    "public_key": base64.urlsafe_b64encode(m.public_key).decode().rstrip("="),
                }
                for m in sorted(self.members, key=lambda m: m.institution)
            ],
        }
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode("ascii")

    def by_key(self) -> dict[bytes, str]:
        """Each listed identity key, and whose it is."""
        return {m.public_key: m.institution for m in self.members}


class SignedRoster(_Wire):
    """A roster, the admin's public key and the admin's signature over it."""

    roster: Roster
    admin_key: Ed25519PublicKeyBytes
    signature: Ed25519SignatureBytes

    @property
    def signed_bytes(self) -> bytes:
        return signed_message(ROSTER_DOMAIN, self.roster.payload())

    @property
    def admin_fingerprint(self) -> str:
        return key_fingerprint(self.admin_key)


def roster_changes(old: Roster | None, new: Roster) -> list[str]:
    """One readable line per change from `old` to `new` (added, removed, new key)."""
    before = {m.institution: m.public_key for m in old.members} if old else {}
    after = {m.institution: m.public_key for m in new.members}
    lines = [
        f"+ {name} (key {key_fingerprint(after[name])[:16]})"
        for name in sorted(after)
        if name not in before
    ]
    lines += [f"- {name}" for name in sorted(before) if name not in after]
    lines += [
        f"~ {name}: new key {key_fingerprint(after[name])[:16]}"
        for name in sorted(after)
        if name in before and before[name] != after[name]
    ]
    return lines


__all__ = [
    "MAX_MEMBERS",
    "ROSTER_DOMAIN",
    "Roster",
    "RosterMember",
    "SignedRoster",
    "key_fingerprint",
    "normalise_fingerprint",
    "roster_changes",
    "show_fingerprint",
]
