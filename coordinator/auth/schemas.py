"""Wire shapes of the token endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from coordinator.auth.models import Role

TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}$"  # noqa: S105 - a pattern


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOKEN_NAME_PATTERN, description="Who or what uses the token.")
    role: Role
    expires_in_days: int = Field(default=90, ge=1, le=366)


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    created_by_id: int | None


class TokenIssued(TokenOut):
    token: str = Field(description="The secret. Shown this once; only its hash is stored.")


class WhoAmI(BaseModel):
    token_id: int
    name: str
    role: Role
