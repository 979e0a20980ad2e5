"""The privacy ledger for auditors (and admins): as JSON, or exported as CSV."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from coordinator.api.deps import AuditorDep, SessionDep
from coordinator.api.problems import problem_responses
from coordinator.ledger import service
from coordinator.ledger.export import ledger_csv
from federation.spec import NAME_PATTERN

router = APIRouter(
    prefix="/api/v1/ledger", tags=["ledger"], responses=problem_responses(401, 403, 422)
)

NameFilter = Annotated[str | None, Query(pattern=NAME_PATTERN)]


class LedgerEntryOut(BaseModel):
    federation: str
    institution: str
    round: int
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    reported_epsilon: float
    recomputed_epsilon: float
    budget_epsilon: float | None
    mismatch: bool
    recorded_at: datetime
    delta_mismatch: bool
    spec_delta: float | None
    run_id: str | None


class UnreportedSpendOut(BaseModel):
    federation: str
    institution: str
    round: int
    stage: str


@router.get("", summary="Privacy spend per institution and round, reported and recomputed")
def list_ledger(
    _: AuditorDep,
    session: SessionDep,
    federation: NameFilter = None,
    institution: NameFilter = None,
    mismatch_only: bool = False,
) -> list[LedgerEntryOut]:
    rows = service.list_ledger(
        session, federation=federation, institution=institution, mismatch_only=mismatch_only
    )
    return [
        LedgerEntryOut(
            federation=row.federation,
            institution=row.institution,
            round=row.round_number,
            accountant=row.accountant,
            noise_multiplier=row.noise_multiplier,
            sample_rate=row.sample_rate,
            steps=row.steps,
            delta=row.delta,
            reported_epsilon=row.reported_epsilon,
            recomputed_epsilon=row.recomputed_epsilon,
            budget_epsilon=row.budget_epsilon,
            mismatch=row.mismatch,
            recorded_at=row.recorded_at,
            delta_mismatch=row.delta_mismatch,
            spec_delta=row.spec_delta,
            run_id=row.run_id,
        )
        for row in rows
    ]


@router.get(
    "/unreported",
    summary="Ended rounds where an institution uploaded an update but never reported its spend",
)
def list_unreported(
    _: AuditorDep,
    session: SessionDep,
    federation: NameFilter = None,
    institution: NameFilter = None,
) -> list[UnreportedSpendOut]:
    return [
        UnreportedSpendOut(
            federation=row.federation,
            institution=row.institution,
            round=row.round_number,
            stage=row.stage,
        )
        for row in service.unreported_spends(
            session, federation=federation, institution=institution
        )
    ]


@router.get(
    "/export.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "The ledger as CSV."}},
    summary="The ledger as CSV",
)
def export_ledger(
    _: AuditorDep,
    session: SessionDep,
    federation: NameFilter = None,
    institution: NameFilter = None,
) -> StreamingResponse:
    rows = service.list_ledger(session, federation=federation, institution=institution)
    return StreamingResponse(
        ledger_csv(rows),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="fmtl-privacy-ledger.csv"'},
    )
