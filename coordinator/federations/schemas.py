"""Wire shapes of the federation endpoints (the request body is the FederationSpec itself)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from coordinator.federations.models import Federation, FederationStatus
from federation.spec import FederationSpec


class FederationSummary(BaseModel):
    id: int
    name: str
    status: FederationStatus
    fingerprint: str
    tasks: list[str]
    created_at: datetime

    @classmethod
    def of(cls, federation: Federation) -> FederationSummary:
        return cls(
            id=federation.id,
            name=federation.name,
            status=federation.status,
            fingerprint=federation.fingerprint,
            tasks=[task.name for task in federation.tasks],
            created_at=federation.created_at,
        )


class FederationOut(FederationSummary):
    spec: FederationSpec

    @classmethod
    def of(cls, federation: Federation) -> FederationOut:
        return cls(**FederationSummary.of(federation).model_dump(), spec=federation.spec)
