"""What the coordinator signs with its own key, byte for byte, so anyone can check it.

The coordinator holds one Ed25519 signing key outside its database (`coordinator/signing.py`,
docs/coordinator.md "Signing key"). Agents pin its public key at enrollment
(`AgentProfile.coordinator_key`); auditors read it from `fmtl coordinator signing-key`.
Every signature covers

    domain || 0x00 || message

with a domain string per kind of statement (`AUDIT_CHECKPOINT_DOMAIN` here; other kinds add
their own constant), so a signature made for one purpose is never valid for another.

The one statement defined here is the audit checkpoint: "the audit log's entry `audit_seq`
has hash `head_hash`", numbered 1, 2, 3 ... and hash-linked to the previous checkpoint, so a
sequence of checkpoints is itself a chain that only the key holder can extend. An agent that
kept checkpoint n verifies that a newer checkpoint m extends it by fetching n+1..m and
checking every link (`check_extends`) and every signature (in `agent/`, which may use
`cryptography`; this package may not).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field

from federation.wire import Ed25519PublicKeyBytes, Ed25519SignatureBytes

#: Domain of an audit checkpoint signature.
AUDIT_CHECKPOINT_DOMAIN: Final = b"fmtl/audit-checkpoint/v1"
#: `prev_checkpoint_hash` of checkpoint 1, and the head hash of an empty audit log.
GENESIS_HASH: Final = "0" * 64
#: Most checkpoints one request returns (agents page with `after`).
MAX_CHECKPOINTS_PER_PAGE: Final = 1000

HexDigest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def signed_message(domain: bytes, message: bytes) -> bytes:
    """The bytes the coordinator's key signs: domain || 0x00 || message."""
    if not domain or b"\x00" in domain:
        raise ValueError("a signature domain is a non-empty string without NUL bytes")
    return domain + b"\x00" + message


def key_id(public_key: bytes) -> str:
    """A public key's id: SHA-256 of its 32 raw bytes, hex."""
    return hashlib.sha256(public_key).hexdigest()


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AuditCheckpoint(_Wire):
    """A signed statement of the audit log's head, linked to the previous checkpoint."""

    number: int = Field(ge=1)
    audit_seq: int = Field(ge=0, description="The last audit entry this checkpoint covers.")
    head_hash: HexDigest = Field(description="That entry's `entry_hash`.")
    prev_checkpoint_hash: HexDigest = Field(description="`checkpoint_hash` of number - 1.")
    signed_at: datetime
    key_id: HexDigest
    signature: Ed25519SignatureBytes

    def payload(self) -> bytes:
        """The canonical bytes that are signed (every field but the signature)."""
        return checkpoint_payload(
            number=self.number,
            audit_seq=self.audit_seq,
            head_hash=self.head_hash,
            prev_checkpoint_hash=self.prev_checkpoint_hash,
            signed_at=self.signed_at,
            key_id=self.key_id,
        )

    @property
    def checkpoint_hash(self) -> str:
        """SHA-256 of the payload, hex: what the next checkpoint links to."""
        return hashlib.sha256(self.payload()).hexdigest()

    @property
    def signed_bytes(self) -> bytes:
        return signed_message(AUDIT_CHECKPOINT_DOMAIN, self.payload())


def checkpoint_payload(
    *,
    number: int,
    audit_seq: int,
    head_hash: str,
    prev_checkpoint_hash: str,
    signed_at: datetime,
    key_id: str,
) -> bytes:
    """Canonical JSON (sorted keys, no whitespace, ASCII) of a checkpoint's signed fields."""
    document = {
        "number": number,
        "audit_seq": audit_seq,
        "head_hash": head_hash,
        "prev_checkpoint_hash": prev_checkpoint_hash,
        "signed_at": signed_at.isoformat(),
        "key_id": key_id,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


class CheckpointPage(_Wire):
    """Answer of the checkpoint endpoints: checkpoints after a number, oldest first."""

    checkpoints: tuple[AuditCheckpoint, ...] = Field(max_length=MAX_CHECKPOINTS_PER_PAGE)


class CoordinatorKey(_Wire):
    """The coordinator's signing public key, as agents pin it."""

    public_key: Ed25519PublicKeyBytes
    key_id: HexDigest


class BrokenCheckpoints(ValueError):
    """A sequence of checkpoints does not extend the one it should (history was rewritten)."""


def check_extends(kept: AuditCheckpoint | None, newer: Sequence[AuditCheckpoint]) -> None:
    """Structure only: `newer` is kept.number + 1, + 2, ... each linking to the previous one,
    and each moving the audit head forward. Signatures are checked by the caller.

    `kept` None means the caller kept nothing yet (any chain starting at 1 or later is taken
    as the first anchor). Raises `BrokenCheckpoints` naming the first checkpoint that fails.
    """
    previous = kept
    for checkpoint in newer:
        if previous is not None:
            if checkpoint.number != previous.number + 1:
                raise BrokenCheckpoints(
                    f"checkpoint {checkpoint.number} follows {previous.number}: numbers skip"
                )
            if checkpoint.prev_checkpoint_hash != previous.checkpoint_hash:
                raise BrokenCheckpoints(
                    f"checkpoint {checkpoint.number} does not link to checkpoint "
                    f"{previous.number}: the audit history it certifies was rewritten"
                )
            if checkpoint.audit_seq < previous.audit_seq:
                raise BrokenCheckpoints(
                    f"checkpoint {checkpoint.number} covers fewer audit entries than "
                    f"checkpoint {previous.number}"
                )
        elif checkpoint.number == 1 and checkpoint.prev_checkpoint_hash != GENESIS_HASH:
            raise BrokenCheckpoints("checkpoint 1 does not start the chain")
        previous = checkpoint


__all__ = [
    "AUDIT_CHECKPOINT_DOMAIN",
    "GENESIS_HASH",
    "MAX_CHECKPOINTS_PER_PAGE",
    "AuditCheckpoint",
    "BrokenCheckpoints",
    "CheckpointPage",
    "CoordinatorKey",
    "check_extends",
    "checkpoint_payload",
    "key_id",
    "signed_message",
]
