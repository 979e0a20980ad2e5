"""Append to and verify the hash-chained audit log.

Every state change is recorded by `record()` inside the transaction that makes the change,
so the entry commits or rolls back with it. An entry's hash covers its predecessor's hash,
so changing, inserting or deleting any entry but the last breaks every later link;
`verify()` names the first entry whose link or content does not check out. (Removing the
newest entries leaves a shorter valid chain: auditors who keep the head hash that `verify`
reports detect that too.)

Concurrent appends: on PostgreSQL a transaction-scoped advisory lock serialises them; on
SQLite every transaction already begins IMMEDIATE (see `coordinator.db`). Either way the
unique `prev_hash` makes a forked chain impossible: a racing writer fails instead.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit.models import GENESIS_HASH, AuditAction, AuditEntry
from coordinator.db import utcnow

#: Key of the PostgreSQL advisory lock held while appending (any fixed 64-bit value that no
#: other code uses; this one is the first 8 bytes of SHA-256("fmtl/audit-log"), as int).
AUDIT_LOCK_KEY: Final = int.from_bytes(hashlib.sha256(b"fmtl/audit-log").digest()[:8], "big") >> 1
VERIFY_BATCH: Final = 1000

AuditValue = str | int | float | bool | None | Sequence[str]
AuditDetails = Mapping[str, AuditValue]


class ActorKind(enum.StrEnum):
    TOKEN = "token"  # noqa: S105 - a person, by API token id
    INSTITUTION = "institution"  # an agent, by institution id
    CLI = "cli"  # an operator at the coordinator's command line
    SYSTEM = "system"  # the coordinator itself (workers, scheduler)


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    ref: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.ref}"


SYSTEM: Final = Actor(ActorKind.SYSTEM, "coordinator")


def canonical_json(value: object) -> str:
    """Sorted keys, no whitespace, ASCII only, no NaN: one text per value."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def entry_hash(
    *,
    seq: int,
    recorded_at: datetime,
    actor: str,
    action: str,
    subject: str,
    details: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) over the canonical JSON of an entry's fields and its predecessor's hash."""
    document = {
        "seq": seq,
        "recorded_at": recorded_at.isoformat(),
        "actor": actor,
        "action": action,
        "subject": subject,
        "details": json.loads(details),
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(document).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class _StoredEntry:
    """An entry as stored, with its action as plain text: verification must be able to read
    (and then reject) a row whose action was overwritten with something that is no action."""

    seq: int
    recorded_at: datetime
    actor: str
    action: str
    subject: str
    details: str
    prev_hash: str
    entry_hash: str


def _hash_of(entry: AuditEntry | _StoredEntry) -> str:
    return entry_hash(
        seq=entry.seq,
        recorded_at=entry.recorded_at,
        actor=entry.actor,
        action=str(entry.action),
        subject=entry.subject,
        details=entry.details,
        prev_hash=entry.prev_hash,
    )


def lock_log(session: Session) -> None:
    """Hold the log's append lock until the transaction ends (PostgreSQL; SQLite
    transactions are serialised already)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(AUDIT_LOCK_KEY)))


def record(
    session: Session,
    actor: Actor,
    action: AuditAction,
    subject: str,
    details: AuditDetails | None = None,
) -> AuditEntry:
    """Append an entry in the caller's transaction (the caller commits, with its change)."""
    lock_log(session)
    last = session.scalars(sa.select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1)).first()
    entry = AuditEntry(
        seq=1 if last is None else last.seq + 1,
        recorded_at=utcnow(),
        actor=str(actor),
        action=action,
        subject=subject,
        details=canonical_json(dict(details or {})),
        prev_hash=GENESIS_HASH if last is None else last.entry_hash,
    )
    entry.entry_hash = _hash_of(entry)
    session.add(entry)
    session.flush()
    return entry


def list_entries(session: Session, *, after_seq: int = 0, limit: int = 100) -> list[AuditEntry]:
    """Entries with seq > `after_seq`, oldest first (page with the last seq you saw)."""
    query = (
        sa.select(AuditEntry)
        .where(AuditEntry.seq > after_seq)
        .order_by(AuditEntry.seq)
        .limit(limit)
    )
    return list(session.scalars(query))


@dataclass(frozen=True)
class ChainVerification:
    ok: bool
    entries: int  # entries checked (all of them when ok)
    head_hash: str  # hash of the last valid entry (GENESIS_HASH for an empty log)
    first_broken_seq: int | None = None
    reason: str | None = None


def verify(session: Session, *, after: tuple[int, str] = (0, GENESIS_HASH)) -> ChainVerification:
    """Walk the chain from the first entry (or from the entry after `after` = (seq, its
    hash)) and report the first one that does not check out."""
    expected_seq = after[0] + 1
    previous_hash = after[1]
    query = (
        sa.select(
            AuditEntry.seq,
            AuditEntry.recorded_at,
            AuditEntry.actor,
            sa.type_coerce(AuditEntry.action, sa.String),
            AuditEntry.subject,
            AuditEntry.details,
            AuditEntry.prev_hash,
            AuditEntry.entry_hash,
        )
        .where(AuditEntry.seq > after[0])
        .order_by(AuditEntry.seq)
        .execution_options(yield_per=VERIFY_BATCH)
    )
    for row in session.execute(query):
        entry = _StoredEntry(*row)
        problem = _problem(entry, expected_seq, previous_hash)
        if problem is not None:
            return ChainVerification(
                ok=False,
                entries=expected_seq - 1,
                head_hash=previous_hash,
                first_broken_seq=min(entry.seq, expected_seq),
                reason=problem,
            )
        previous_hash = entry.entry_hash
        expected_seq += 1
    return ChainVerification(ok=True, entries=expected_seq - 1, head_hash=previous_hash)


def _problem(entry: _StoredEntry, expected_seq: int, previous_hash: str) -> str | None:
    if entry.seq != expected_seq:
        return f"entry {expected_seq} is missing (next entry found is {entry.seq})"
    if entry.prev_hash != previous_hash:
        return f"entry {entry.seq} does not link to entry {entry.seq - 1}'s hash"
    try:
        recomputed = _hash_of(entry)
    except (ValueError, TypeError):
        return f"entry {entry.seq} holds unreadable details"
    if recomputed != entry.entry_hash:
        return f"entry {entry.seq} was altered: its content does not match its hash"
    return None
