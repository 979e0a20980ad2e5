"""Signed checkpoints of the audit log: an anchor that a database writer cannot forge.

The audit log's hash chain (`coordinator.audit.service`) is unkeyed: whoever can write the
database can change an entry and recompute every later hash, and the chain verifies again.
What such a writer cannot do is sign with the coordinator's key, which is kept outside the
database (`coordinator/signing.py`). So the periodic tick (`coordinator.tasks.tick`)
signs a checkpoint "entry `audit_seq` has hash `head_hash`" when the log grew and the last
checkpoint is at least `settings.audit_checkpoint_interval_s` old. Checkpoints are chained
too (each holds the previous one's hash, `federation.attestation.AuditCheckpoint`).

Before signing, the entries since the last checkpoint are checked to extend the head that
checkpoint signed: the key never certifies a history that was rewritten under it.

Who checks what:

- `verify_anchored` (behind `GET /api/v1/audit/verify` and `fmtl admin audit-verify`):
  the whole chain, every checkpoint's signature and link, that every checkpointed entry
  still has the hash that was signed, and optionally that an expected head (an entry hash
  an auditor kept) is still in the chain;
- agents get the latest checkpoint with each assignment and check that it extends the one
  they kept, signatures included, against the key they pinned at enrollment
  (`agent/audit_anchor.py`): a rewritten history that the coordinator re-signed would have
  to fork the checkpoint chain, which they notice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit import service
from coordinator.audit.models import GENESIS_HASH, AuditCheckpointRecord, AuditEntry
from coordinator.db import utcnow
from coordinator.signing import SigningKey, verify_signature
from federation.attestation import (
    AUDIT_CHECKPOINT_DOMAIN,
    MAX_CHECKPOINTS_PER_PAGE,
    AuditCheckpoint,
    BrokenCheckpoints,
    check_extends,
    checkpoint_payload,
    key_id,
)

logger = logging.getLogger(__name__)


def to_wire(row: AuditCheckpointRecord) -> AuditCheckpoint:
    return AuditCheckpoint(
        number=row.number,
        audit_seq=row.audit_seq,
        head_hash=row.head_hash,
        prev_checkpoint_hash=row.prev_checkpoint_hash,
        signed_at=row.signed_at,
        key_id=row.key_id,
        signature=row.signature,
    )


def latest(session: Session) -> AuditCheckpoint | None:
    row = session.scalars(
        sa.select(AuditCheckpointRecord).order_by(AuditCheckpointRecord.number.desc()).limit(1)
    ).first()
    return None if row is None else to_wire(row)


def page(
    session: Session, *, after: int = 0, limit: int = MAX_CHECKPOINTS_PER_PAGE
) -> list[AuditCheckpoint]:
    """Checkpoints numbered above `after`, oldest first."""
    rows = session.scalars(
        sa.select(AuditCheckpointRecord)
        .where(AuditCheckpointRecord.number > after)
        .order_by(AuditCheckpointRecord.number)
        .limit(min(limit, MAX_CHECKPOINTS_PER_PAGE))
    )
    return [to_wire(row) for row in rows]


def sign_checkpoint(
    session: Session,
    key: SigningKey,
    *,
    min_interval_s: float,
    now: datetime | None = None,
) -> AuditCheckpoint | None:
    """Sign the next checkpoint if the log grew and the last one is old enough (commits).

    Returns None when there is nothing to sign, or when the entries since the last
    checkpoint do not extend it (logged as an error: someone rewrote the history)."""
    now = now or utcnow()
    service.lock_log(session)
    last = latest(session)
    head = session.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()
    if head is None or (last is not None and head.seq <= last.audit_seq):
        session.rollback()
        return None
    if last is not None and now - last.signed_at < timedelta(seconds=min_interval_s):
        session.rollback()
        return None
    start = (0, GENESIS_HASH) if last is None else (last.audit_seq, last.head_hash)
    if last is not None:
        anchored = session.get(AuditEntry, last.audit_seq)
        if anchored is None or anchored.entry_hash != last.head_hash:
            logger.error(
                "audit log: entry %s no longer has the hash checkpoint %s signed; "
                "no checkpoint is signed over a rewritten history",
                last.audit_seq,
                last.number,
            )
            session.rollback()
            return None
    walked = service.verify(session, after=start)
    if not walked.ok or walked.head_hash != head.entry_hash:
        logger.error(
            "audit log broken at entry %s (%s): no checkpoint signed",
            walked.first_broken_seq,
            walked.reason,
        )
        session.rollback()
        return None
    fields = {
        "number": 1 if last is None else last.number + 1,
        "audit_seq": head.seq,
        "head_hash": head.entry_hash,
        "prev_checkpoint_hash": GENESIS_HASH if last is None else last.checkpoint_hash,
        "signed_at": now,
        "key_id": key.key_id,
    }
    signature = key.sign(AUDIT_CHECKPOINT_DOMAIN, checkpoint_payload(**fields))  # type: ignore[arg-type]
    checkpoint = AuditCheckpoint(**fields, signature=signature)  # type: ignore[arg-type]
    session.add(
        AuditCheckpointRecord(
            number=checkpoint.number,
            audit_seq=checkpoint.audit_seq,
            head_hash=checkpoint.head_hash,
            prev_checkpoint_hash=checkpoint.prev_checkpoint_hash,
            signed_at=checkpoint.signed_at,
            key_id=checkpoint.key_id,
            signature=checkpoint.signature,
        )
    )
    session.commit()
    return checkpoint


@dataclass(frozen=True)
class AnchoredVerification:
    """The chain walk, plus what the signed checkpoints and an expected head say."""

    chain: service.ChainVerification
    checkpoints: int
    latest_checkpoint: AuditCheckpoint | None
    key_id: str
    problem: str | None = None
    expected_head: str | None = None

    @property
    def ok(self) -> bool:
        return self.chain.ok and self.problem is None


def verify_anchored(
    session: Session, public_key: bytes, *, expect_head: str | None = None
) -> AnchoredVerification:
    """The whole chain, every checkpoint against it and the key, and the expected head."""
    chain = service.verify(session)
    rows = session.execute(
        sa.select(AuditCheckpointRecord, AuditEntry.entry_hash)
        .outerjoin(AuditEntry, AuditEntry.seq == AuditCheckpointRecord.audit_seq)
        .order_by(AuditCheckpointRecord.number)
    ).all()
    checkpoints = [to_wire(row) for row, _ in rows]
    result = AnchoredVerification(
        chain=chain,
        checkpoints=len(checkpoints),
        latest_checkpoint=checkpoints[-1] if checkpoints else None,
        key_id=key_id(public_key),
        expected_head=expect_head,
    )
    problem = _checkpoint_problem(checkpoints, [hash_ for _, hash_ in rows], public_key)
    if problem is None and expect_head is not None:
        found = session.scalar(
            sa.select(AuditEntry.seq).where(AuditEntry.entry_hash == expect_head)
        )
        if found is None:
            problem = (
                f"the expected head {expect_head[:16]}... is not in the audit log: its history "
                "was rewritten or cut short since that head was seen"
            )
    if problem is None:
        return result
    return AnchoredVerification(
        chain=chain,
        checkpoints=result.checkpoints,
        latest_checkpoint=result.latest_checkpoint,
        key_id=result.key_id,
        problem=problem,
        expected_head=expect_head,
    )


def _checkpoint_problem(
    checkpoints: Sequence[AuditCheckpoint], hashes: Sequence[str | None], public_key: bytes
) -> str | None:
    try:
        check_extends(None, checkpoints)
    except BrokenCheckpoints as exc:
        return str(exc)
    if checkpoints and checkpoints[0].number != 1:
        return f"checkpoints 1 to {checkpoints[0].number - 1} are missing"
    for checkpoint, stored in zip(checkpoints, hashes, strict=True):
        if not verify_signature(
            public_key, AUDIT_CHECKPOINT_DOMAIN, checkpoint.payload(), checkpoint.signature
        ):
            return f"checkpoint {checkpoint.number} is not signed by the coordinator's key"
        if stored is None:
            return (
                f"entry {checkpoint.audit_seq}, signed in checkpoint {checkpoint.number}, is "
                "missing: the audit history was cut short"
            )
        if stored != checkpoint.head_hash:
            return (
                f"entry {checkpoint.audit_seq} no longer has the hash checkpoint "
                f"{checkpoint.number} signed: the audit history was rewritten"
            )
    return None
