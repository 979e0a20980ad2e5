"""The audit log for auditors (and admins): read it, verify its hash chain against the
signed checkpoints and an expected head; agents page through the checkpoints."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, JsonValue

from coordinator.api.deps import AgentDep, AuditorDep, RuntimeDep, SessionDep
from coordinator.api.problems import problem_responses
from coordinator.audit import checkpoints, service
from coordinator.audit.models import AuditAction
from federation.attestation import (
    MAX_CHECKPOINTS_PER_PAGE,
    AuditCheckpoint,
    CheckpointPage,
    HexDigest,
)
from federation.wire import AGENT_API_PREFIX

router = APIRouter(
    prefix="/api/v1/audit", tags=["audit"], responses=problem_responses(401, 403, 422)
)
agent_router = APIRouter(
    prefix=AGENT_API_PREFIX + "/audit", tags=["agent"], responses=problem_responses(401, 422)
)
AfterNumber = Annotated[int, Query(ge=0, le=2**62, description="Checkpoints after this one.")]


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
    #: Signed checkpoints checked against the chain and the coordinator's key.
    checkpoints: int = 0
    latest_checkpoint: AuditCheckpoint | None = None
    key_id: str | None = None
    #: The head the caller expected (`expect_head`), found in the chain when `ok`.
    expected_head: str | None = None


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


@router.get(
    "/verify",
    summary="Verify the hash chain, its signed checkpoints and (optionally) an expected head",
)
def verify_chain(
    _: AuditorDep,
    session: SessionDep,
    runtime: RuntimeDep,
    expect_head: Annotated[
        HexDigest | None,
        Query(description="An entry hash seen earlier (e.g. a head `verify` reported)."),
    ] = None,
) -> ChainVerificationOut:
    result = checkpoints.verify_anchored(
        session, runtime.signing_key.public_key, expect_head=expect_head
    )
    chain = result.chain
    return ChainVerificationOut(
        ok=result.ok,
        entries=chain.entries,
        head_hash=chain.head_hash,
        first_broken_seq=chain.first_broken_seq,
        reason=chain.reason or result.problem,
        checkpoints=result.checkpoints,
        latest_checkpoint=result.latest_checkpoint,
        key_id=result.key_id,
        expected_head=expect_head,
    )


@router.get("/checkpoints", summary="Signed checkpoints of the audit log, oldest first")
def list_checkpoints(
    _: AuditorDep,
    session: SessionDep,
    after: AfterNumber = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_CHECKPOINTS_PER_PAGE)] = MAX_CHECKPOINTS_PER_PAGE,
) -> CheckpointPage:
    return CheckpointPage(checkpoints=tuple(checkpoints.page(session, after=after, limit=limit)))


@agent_router.get(
    "/checkpoints",
    summary="Signed audit checkpoints after a number (the agent checks they extend its own)",
)
def agent_checkpoints(
    _: AgentDep,
    session: SessionDep,
    after: AfterNumber = 0,
) -> CheckpointPage:
    return CheckpointPage(checkpoints=tuple(checkpoints.page(session, after=after)))
