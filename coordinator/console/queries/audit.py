"""The audit log, filtered and keyset-paged by `seq`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit.models import AuditEntry
from coordinator.console.queries.paging import (
    AUDIT_PER_PAGE,
)


@dataclass(frozen=True)
class AuditFilter:
    action: str | None = None
    actor: str | None = None
    subject: str | None = None  # a prefix, e.g. "round:heart/"
    since: datetime | None = None
    until: datetime | None = None

    def where(self) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = []
        if self.action:
            clauses.append(sa.type_coerce(AuditEntry.action, sa.String) == self.action)
        if self.actor:
            clauses.append(AuditEntry.actor == self.actor)
        if self.subject:
            escaped = self.subject.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append(AuditEntry.subject.like(escaped + "%", escape="\\"))
        if self.since:
            clauses.append(AuditEntry.recorded_at >= self.since)
        if self.until:
            clauses.append(AuditEntry.recorded_at < self.until)
        return clauses


@dataclass(frozen=True)
class AuditLine:
    seq: int
    recorded_at: datetime
    actor: str
    action: str
    subject: str
    details: str
    entry_hash: str


@dataclass(frozen=True)
class AuditPage:
    lines: list[AuditLine]
    #: `before` of the next (older) page, and of the newer page, when they exist.
    older: int | None
    newer: int | None


def audit_page(session: Session, where: AuditFilter, before: int | None) -> AuditPage:
    """Up to AUDIT_PER_PAGE entries with seq < `before` (newest first), keyset-paged."""
    clauses = where.where()
    query = sa.select(
        AuditEntry.seq,
        AuditEntry.recorded_at,
        AuditEntry.actor,
        sa.type_coerce(AuditEntry.action, sa.String),
        AuditEntry.subject,
        AuditEntry.details,
        AuditEntry.entry_hash,
    ).where(*clauses)
    if before is not None:
        query = query.where(AuditEntry.seq < before)
    rows = session.execute(query.order_by(AuditEntry.seq.desc()).limit(AUDIT_PER_PAGE + 1)).all()
    lines = [AuditLine(*row) for row in rows[:AUDIT_PER_PAGE]]
    older = lines[-1].seq if len(rows) > AUDIT_PER_PAGE else None
    newer = None
    if lines and before is not None:
        newest = session.execute(
            sa.select(AuditEntry.seq)
            .where(*clauses, AuditEntry.seq > lines[0].seq)
            .order_by(AuditEntry.seq)
            .limit(AUDIT_PER_PAGE)
        ).all()
        if newest:
            newer = newest[-1][0] + 1
    return AuditPage(lines=lines, older=older, newer=newer)
