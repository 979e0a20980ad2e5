"""The audit log for auditors (and admins): read it, verify its hash chain."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, JsonValue

from coordinator.api.deps import AuditorDep, SessionDep
from coordinator.api.problems import problem_responses
from coordinator.audit import service
from coordinator.audit.models import AuditAction

router = APIRouter(
    prefix="/api/v1/audit", tags=["audit"], responses=problem_responses(401, 403, 422)
)


class AuditEntryOut(BaseModel):
    seq: int
    recorded_at: datetime
    actor: str
    action: AuditAction
    subject: str
    details: dict[str, JsonValue]
    prev_hash: str
    entry_hash: str


class ChainVerificationOut(BaseModel):
    ok: bool
    entries: int
    head_hash: str
    first_broken_seq: int | None
    reason: str | None


@router.get("", summary="Audit entries after `after_seq`, oldest first")
def list_entries(
    _: AuditorDep,
    session: SessionDep,
    after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntryOut]:
    return [
        AuditEntryOut(
            seq=entry.seq,
            recorded_at=entry.recorded_at,
            actor=entry.actor,
            action=entry.action,
            subject=entry.subject,
            details=json.loads(entry.details),
            prev_hash=entry.prev_hash,
            entry_hash=entry.entry_hash,
        )
        for entry in service.list_entries(session, after_seq=after_seq, limit=limit)
    ]


@router.get("/verify", summary="Verify the whole hash chain; names the first broken entry")
def verify_chain(_: AuditorDep, session: SessionDep) -> ChainVerificationOut:
    result = service.verify(session)
    return ChainVerificationOut(
        ok=result.ok,
        entries=result.entries,
        head_hash=result.head_hash,
        first_broken_seq=result.first_broken_seq,
        reason=result.reason,
    )
