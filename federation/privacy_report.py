"""The auditor's privacy report, as signed: its document, its envelope, the bytes signed.

The coordinator builds the report (`coordinator/reports/privacy.py`) and signs it with its
signing key (`coordinator/signing.py`) under `PRIVACY_REPORT_DOMAIN`; anyone holding the
public key checks it offline (`fmtl admin verify-report FILE`). The signature covers the
canonical JSON of the envelope: the document (every institution's (σ, q, steps) history,
ε reported and recomputed, the accountant, the audit chain's head and its verification)
and the SHA-256 of the HTML body that shows it, so neither the figures nor the page can be
changed without the key. This module holds the format only (no cryptography, no I/O).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

#: Domain of a privacy report's signature (see `federation.attestation.signed_message`).
PRIVACY_REPORT_DOMAIN: Final = b"fmtl/privacy-report/v1"
REPORT_FORMAT: Final = "fmtl-privacy-report/1"
#: Markers around the HTML body whose hash is signed, and the id of the embedded JSON.
BODY_START: Final = "<!--fmtl-report-body-->"
BODY_END: Final = "<!--/fmtl-report-body-->"
EMBEDDED_JSON_ID: Final = "fmtl-privacy-report"


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SpendLine(_Doc):
    round: int
    recorded_at: datetime
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    reported_epsilon: float
    recomputed_epsilon: float
    mismatch: bool


class InstitutionHistory(_Doc):
    name: str
    state: str
    tasks: list[str]
    budget_epsilon: float | None
    history: list[SpendLine]


class AuditHead(_Doc):
    ok: bool
    entries: int
    head_hash: str
    first_broken_seq: int | None
    reason: str | None
    #: Signed checkpoints of the chain checked with it (`ok` covers them), and the latest.
    checkpoints: int = 0
    latest_checkpoint: int | None = None
    latest_checkpoint_seq: int | None = None


class UnreportedSpend(_Doc):
    """An institution whose masked update is in an ended round, with no spend on record."""

    institution: str
    round: int
    stage: str


class ReportDocument(_Doc):
    federation: str
    spec_fingerprint: str
    accountant: str
    accountant_detail: str
    since: datetime | None
    until: datetime | None
    generated_at: datetime
    coordinator_version: str
    institutions: list[InstitutionHistory]
    mismatches: int
    audit: AuditHead
    #: Rounds where the ledger is a lower bound: the spend never arrived.
    unreported: list[UnreportedSpend] = Field(default_factory=list)


class SignedReport(_Doc):
    """What is signed: the document and the hash of the HTML body rendered from it."""

    format: str = REPORT_FORMAT
    document: ReportDocument
    html_body_sha256: str | None = Field(pattern=r"^[0-9a-f]{64}$")

    def payload(self) -> bytes:
        """Canonical JSON: sorted keys, no whitespace, ASCII."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode("ascii")


class ReportEnvelope(_Doc):
    """The archived JSON: the signed report, the signature and the key that made it."""

    signed: SignedReport
    key_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    public_key: str = Field(description="Ed25519 public key, URL-safe base64 (no padding).")
    signature: str = Field(description="Ed25519 signature, URL-safe base64 (no padding).")
