"""Global model versions: register a stored vector as the next version, list, look up.

The vector itself is in the blob store (`model_blob_key`); a version row pins it by size and
SHA-256, so a changed or truncated file is detected before anyone trains from it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.blobs.store import BlobRef
from coordinator.errors import InvalidInput, NotFound, StateConflict
from coordinator.federations.models import Federation
from coordinator.federations.service import get_federation
from coordinator.model_versions.models import ModelVersion


def model_blob_key(federation: Federation, version: int) -> str:
    return f"models/{federation.name}/v{version:06d}.bin"


def store_model_version(
    session: Session,
    federation: Federation,
    *,
    version: int,
    blob: BlobRef,
    layout_fingerprint: str,
    actor: audit.Actor,
    round_id: int | None = None,
) -> ModelVersion:
    """Register `blob` as model `version` (the next one), in the caller's transaction."""
    latest = latest_version_number(session, federation)
    expected = 0 if latest is None else latest + 1
    if version != expected:
        raise StateConflict(
            f"federation '{federation.name}' expects model version {expected}, not {version}"
        )
    if blob.key != model_blob_key(federation, version):
        raise InvalidInput(f"model version {version} must be stored under its own blob key")
    record = ModelVersion(
        federation_id=federation.id,
        version=version,
        round_id=round_id,
        blob_key=blob.key,
        sha256=blob.sha256,
        size_bytes=blob.size,
        layout_fingerprint=layout_fingerprint,
    )
    session.add(record)
    session.flush()
    audit.record(
        session,
        actor,
        AuditAction.MODEL_VERSION_STORED,
        f"model:{federation.name}/{version}",
        {"sha256": blob.sha256, "size": blob.size, "layout": layout_fingerprint},
    )
    return record


def latest_version_number(session: Session, federation: Federation) -> int | None:
    return session.scalar(
        sa.select(sa.func.max(ModelVersion.version)).where(
            ModelVersion.federation_id == federation.id
        )
    )


def list_versions(session: Session, federation_name: str) -> list[ModelVersion]:
    federation = get_federation(session, federation_name)
    query = (
        sa.select(ModelVersion)
        .where(ModelVersion.federation_id == federation.id)
        .order_by(ModelVersion.version)
    )
    return list(session.scalars(query))


def get_version(session: Session, federation_name: str, version: int) -> ModelVersion:
    federation = get_federation(session, federation_name)
    found = session.scalars(
        sa.select(ModelVersion).where(
            ModelVersion.federation_id == federation.id, ModelVersion.version == version
        )
    ).first()
    if found is None:
        raise NotFound(f"federation '{federation_name}' has no model version {version}")
    return found
