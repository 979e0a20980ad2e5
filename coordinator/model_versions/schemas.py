"""Wire shapes of the model-version endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class ModelVersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    round_id: int | None
    sha256: str
    size_bytes: int
    layout_fingerprint: str
    created_at: datetime
