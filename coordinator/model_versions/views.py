"""Model-version endpoints: metadata for every reader, the vector for admins and operators."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import StreamingResponse

from coordinator.api.deps import OperatorDep, ReaderDep, RuntimeDep, SessionDep
from coordinator.api.problems import problem_responses
from coordinator.model_versions import service
from coordinator.model_versions.schemas import ModelVersionOut
from federation.spec import NAME_PATTERN

router = APIRouter(
    prefix="/api/v1/federations/{federation}/models",
    tags=["models"],
    responses=problem_responses(401, 403, 404, 422),
)

FederationName = Annotated[str, Path(pattern=NAME_PATTERN, description="Federation name.")]
Version = Annotated[int, Path(ge=0, le=2**31 - 1, description="Model version (0 = initial).")]


@router.get("", summary="A federation's model versions")
def list_versions(
    federation: FederationName, _: ReaderDep, session: SessionDep
) -> list[ModelVersionOut]:
    return [
        ModelVersionOut.model_validate(item) for item in service.list_versions(session, federation)
    ]


@router.get("/{version}", summary="One model version's metadata")
def get_version(
    federation: FederationName, version: Version, _: ReaderDep, session: SessionDep
) -> ModelVersionOut:
    return ModelVersionOut.model_validate(service.get_version(session, federation, version))


@router.get(
    "/{version}/vector",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The vector."}},
    summary="Download a model version's parameter vector (admin, operator)",
)
def download_version(
    federation: FederationName,
    version: Version,
    _: OperatorDep,
    runtime: RuntimeDep,
    session: SessionDep,
) -> StreamingResponse:
    record = service.get_version(session, federation, version)
    return StreamingResponse(
        runtime.blobs.iter_chunks(record.blob_key),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(record.size_bytes),
            "Repr-Digest": f"sha-256=:{_b64(record.sha256)}:",
        },
    )


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")
