"""Wire shapes of the institution endpoints (agent-facing ones are in `federation.wire`)."""

from __future__ import annotations

import base64
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from coordinator.institutions.models import EnrollmentState, Institution
from coordinator.institutions.service import key_fingerprint
from federation.spec import Name


class InvitationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="The institution's name within the federation.")
    tasks: list[Name] = Field(min_length=1, max_length=64, description="Tasks it holds labels for.")
    ttl_hours: int | None = Field(
        default=None, ge=1, le=24 * 90, description="Validity of the token; default from settings."
    )


class InvitationRenew(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_hours: int | None = Field(default=None, ge=1, le=24 * 90)


class InstitutionOut(BaseModel):
    id: int
    name: str
    federation: str
    state: EnrollmentState
    tasks: list[str]
    key_fingerprint: str | None = Field(description="SHA-256 of the identity public key.")
    public_key: str | None = Field(
        default=None,
        description="The Ed25519 identity public key (URL-safe base64), what the admin signs "
        "into the roster.",
    )
    invited_at: datetime
    enrolled_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, institution: Institution) -> InstitutionOut:
        key = institution.public_key
        return cls(
            id=institution.id,
            name=institution.name,
            federation=institution.federation.name,
            state=institution.state,
            tasks=[task.name for task in institution.tasks],
            key_fingerprint=None if key is None else key_fingerprint(key),
            public_key=None if key is None else base64.urlsafe_b64encode(key).decode().rstrip("="),
            invited_at=institution.invited_at,
            enrolled_at=institution.enrolled_at,
            revoked_at=institution.revoked_at,
        )


class InvitationOut(BaseModel):
    institution: InstitutionOut
    enrollment_token: str = Field(description="One-time token. Shown once; hand it over securely.")
    expires_at: datetime
