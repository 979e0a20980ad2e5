"""The agent side of a round over HTTP: every request signed (RFC 9421), every one idempotent.

Thin: each handler translates HTTP into one call of `coordinator.rounds.protocol` and sends
the follow-up tasks it returns (closing a stage early) once the transaction committed.
The masked update is the one streamed body: its signature is verified from the headers
before any byte is read, its header is checked against the round, its size is exactly the
round's, and its SHA-256 must equal the signed `Content-Digest`, or nothing is kept.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from coordinator.api.deps import (
    Access,
    AccessKind,
    AgentDep,
    DetachedAgentDep,
    FollowupsDep,
    RuntimeDep,
    SessionDep,
    declare_access,
)
from coordinator.api.problems import problem_responses
from coordinator.auth.signatures import ReceivedRequest, verify_agent_headers
from coordinator.blobs.store import BlobRef, BlobStore
from coordinator.errors import CoordinatorError, InvalidInput, PayloadTooLarge, SignatureRejected
from coordinator.institutions.models import Institution
from coordinator.rounds import protocol
from coordinator.rounds.protocol import Accepted, UploadTarget
from coordinator.runtime import Runtime
from federation.round_api import (
    BINARY_MEDIA_TYPE,
    LONG_POLL_HEADER,
    MAX_WORK_WAIT_S,
    MODEL_DTYPE_HEADER,
    MODEL_LAYOUT_HEADER,
    MODEL_SHA256_HEADER,
    MODEL_VERSION_HEADER,
    AdvertiseKeys,
    ConsistencyProofOut,
    Decline,
    PeersKeys,
    Receipt,
    SharesIn,
    SharesOut,
    SurvivorSetOut,
    SurvivorSignature,
    TrainingReport,
    UnmaskShares,
    WorkStatus,
    work_state,
)
from federation.wire import AGENT_API_PREFIX, UPLOAD_PREFIX
from privacy.secagg import MalformedMessage, MaskedInput

__all__ = ["UPLOAD_PREFIX", "router", "upload_router"]

#: Bytes handed to the blob store at a time while an upload streams in.
UPLOAD_CHUNK_BYTES = 1 << 20

router = APIRouter(
    prefix=AGENT_API_PREFIX,
    tags=["rounds (agents)"],
    responses=problem_responses(401, 404, 409, 422),
)
upload_router = APIRouter(
    prefix=UPLOAD_PREFIX,
    tags=["rounds (agents)"],
    responses=problem_responses(401, 404, 409, 413, 422),
)

RoundNumber = Annotated[int, Path(ge=1, le=2**31 - 1, description="Round number (from 1).")]


def _send(followups: FollowupsDep, accepted: Accepted) -> Receipt:
    followups.send(accepted.followups)
    return accepted.receipt


@router.get("/work", summary="The calling agent's current round and stage (long poll)")
async def work(
    institution: DetachedAgentDep,
    runtime: RuntimeDep,
    response: Response,
    wait_s: Annotated[
        float,
        Query(
            ge=0.0,
            le=MAX_WORK_WAIT_S,
            description="Hold the answer up to this long while the agent's work is still "
            "`seen` (long poll); 0: answer at once.",
        ),
    ] = 0.0,
    seen: Annotated[
        str | None,
        Query(max_length=300, description="What the agent saw last (`work_state`)."),
    ] = None,
) -> WorkStatus:
    """Answers at once, or, with `wait_s` and `seen`, as soon as the agent's round, stage
    or status differs from `seen` (a stage change wakes it through the round events), at
    the latest after `wait_s`. No database connection is held while it waits."""

    def read() -> WorkStatus:
        with runtime.db.scope() as session:
            return WorkStatus(
                assignment=protocol.assignment(session, institution),
                poll_after_s=runtime.settings.work_poll_interval_s,
            )

    response.headers[LONG_POLL_HEADER] = f"{MAX_WORK_WAIT_S:g}"
    deadline = time.monotonic() + wait_s
    with runtime.events.listen(institution.federation_id) as waiter:
        found = await run_in_threadpool(read)
        while seen is not None and work_state(found.assignment) == seen:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await waiter.wait(min(left, runtime.settings.work_recheck_s))
            found = await run_in_threadpool(read)
    return found


@router.post("/rounds/{number}/keys", summary="Round 0: advertise this round's public keys")
def advertise_keys(
    number: RoundNumber,
    body: AdvertiseKeys,
    institution: AgentDep,
    session: SessionDep,
    followups: FollowupsDep,
) -> Receipt:
    return _send(followups, protocol.accept_advert(session, institution, number, body.advert))


@router.get("/rounds/{number}/keys", summary="Round 1 input: every advertised key (U1)")
def peers_keys(number: RoundNumber, institution: AgentDep, session: SessionDep) -> PeersKeys:
    return PeersKeys(broadcast=protocol.peers_keys(session, institution, number))


@router.post("/rounds/{number}/shares", summary="Round 1: encrypted shares for every holder")
def send_shares(
    number: RoundNumber,
    body: SharesOut,
    institution: AgentDep,
    session: SessionDep,
    followups: FollowupsDep,
) -> Receipt:
    return _send(followups, protocol.accept_shares(session, institution, number, body.message))


@router.get("/rounds/{number}/shares", summary="Round 2 input: the shares addressed to me")
def fetch_shares(number: RoundNumber, institution: AgentDep, session: SessionDep) -> SharesIn:
    return SharesIn(bundle=protocol.share_bundle(session, institution, number))


@router.get(
    "/rounds/{number}/model",
    response_class=Response,
    responses={200: {"content": {BINARY_MEDIA_TYPE: {}}, "description": "The model vector."}},
    summary="The global model this round trains from (binary, model layout)",
)
def global_model(
    number: RoundNumber,
    institution: AgentDep,
    runtime: RuntimeDep,
    session: SessionDep,
    dtype: Annotated[Literal["float32", "float64"], Query()] = "float32",
) -> Response:
    found = protocol.global_model(session, institution, number)
    content = runtime.blobs.read_range(found.blob_key, 0, found.size)
    if dtype == "float64":
        content = np.frombuffer(content, dtype="<f4").astype("<f8").tobytes()
    return Response(
        content,
        media_type=BINARY_MEDIA_TYPE,
        headers={
            MODEL_VERSION_HEADER: str(found.version),
            MODEL_DTYPE_HEADER: dtype,
            MODEL_LAYOUT_HEADER: found.layout_fingerprint,
            MODEL_SHA256_HEADER: hashlib.sha256(content).hexdigest(),
        },
    )


@router.get("/rounds/{number}/survivors", summary="Round 3 input: the survivor set to sign")
def survivors(number: RoundNumber, institution: AgentDep, session: SessionDep) -> SurvivorSetOut:
    return SurvivorSetOut(survivors=protocol.survivors(session, institution, number))


@router.post("/rounds/{number}/consistency", summary="Round 3: my signature of the survivor set")
def sign_survivors(
    number: RoundNumber,
    body: SurvivorSignature,
    institution: AgentDep,
    session: SessionDep,
    followups: FollowupsDep,
) -> Receipt:
    return _send(followups, protocol.accept_signature(session, institution, number, body.signature))


@router.get("/rounds/{number}/consistency", summary="Round 4 input: >= t signatures on U3")
def consistency_proof(
    number: RoundNumber, institution: AgentDep, session: SessionDep
) -> ConsistencyProofOut:
    return ConsistencyProofOut(proof=protocol.proof(session, institution, number))


@router.post("/rounds/{number}/unmask", summary="Round 4: my shares for unmasking")
def unmask(
    number: RoundNumber,
    body: UnmaskShares,
    institution: AgentDep,
    session: SessionDep,
    followups: FollowupsDep,
) -> Receipt:
    return _send(followups, protocol.accept_unmask(session, institution, number, body.response))


@router.post("/rounds/{number}/report", summary="Task-wise metrics of the global model, DP spend")
def report(
    number: RoundNumber,
    body: TrainingReport,
    institution: AgentDep,
    session: SessionDep,
    followups: FollowupsDep,
) -> Receipt:
    return _send(followups, protocol.accept_report(session, institution, number, body))


@router.post("/rounds/{number}/decline", summary="Leave the round now, with a reason")
def decline(
    number: RoundNumber,
    body: Decline,
    institution: AgentDep,
    session: SessionDep,
    followups: FollowupsDep,
) -> Receipt:
    return _send(followups, protocol.decline(session, institution, number, body.reason))


# --- the streamed masked update -------------------------------------------------------------


async def signed_upload(request: Request, runtime: RuntimeDep) -> tuple[Institution, bytes]:
    """The signing institution and the SHA-256 the body must have (verified from headers)."""
    received = ReceivedRequest(
        method=request.method,
        raw_path=request.scope.get("raw_path", request.url.path.encode()).decode("latin-1"),
        query=request.scope.get("query_string", b"").decode("latin-1"),
        headers=list(request.headers.items()),
        body=None,
    )

    def verify() -> tuple[Institution, bytes]:
        with runtime.db.scope() as session:
            signed = verify_agent_headers(session, received, runtime.signature_policy)
            session.expunge(signed.institution)
            return signed.institution, signed.content_sha256

    return await run_in_threadpool(verify)


declare_access(signed_upload, Access(AccessKind.AGENT))
SignedUploadDep = Annotated[tuple[Institution, bytes], Depends(signed_upload)]


async def _checked_stream(request: Request, target: UploadTarget) -> AsyncIterator[bytes]:
    """The body in chunks of about `UPLOAD_CHUNK_BYTES` (fewer hops to the blob writer's
    thread), refused as soon as its header does not fit the round."""
    buffered: list[bytes] = []
    size = 0
    checked = False
    async for chunk in request.stream():
        buffered.append(chunk)
        size += len(chunk)
        if not checked and size >= MaskedInput.HEADER_SIZE:
            _check_header(b"".join(buffered)[: MaskedInput.HEADER_SIZE], target)
            checked = True
        if checked and size >= UPLOAD_CHUNK_BYTES:
            yield b"".join(buffered)
            buffered, size = [], 0
    if not checked:
        raise InvalidInput("the masked update is shorter than its header")
    if buffered:
        yield b"".join(buffered)


def _check_header(header: bytes, target: UploadTarget) -> None:
    try:
        parsed = MaskedInput.parse_header(header)
    except MalformedMessage as exc:
        raise InvalidInput(f"not a masked update: {exc}") from None
    if parsed.round_id != target.round_id:
        raise InvalidInput("the masked update belongs to another round")
    if parsed.sender != target.sender:
        raise InvalidInput(
            f"the masked update names participant {parsed.sender}; this agent is {target.sender}"
        )
    if parsed.bits != target.bits:
        raise InvalidInput(f"the round aggregates {target.bits}-bit integers, not {parsed.bits}")
    if parsed.vector_length != target.vector_length:
        raise InvalidInput(
            f"the masked update has {parsed.vector_length} coordinates; the round's update "
            f"layout needs {target.vector_length} coordinates of {target.bits} bits"
        )


@upload_router.put(
    "/rounds/{number}/masked-update",
    status_code=status.HTTP_200_OK,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    summary="Round 2: upload my masked update (binary privacy.secagg MaskedInput, streamed)",
)
async def upload_masked_update(
    number: RoundNumber,
    signed: SignedUploadDep,
    runtime: RuntimeDep,
    request: Request,
    followups: FollowupsDep,
) -> Receipt:
    institution, digest = signed
    target = await run_in_threadpool(_target, runtime, institution, number)
    repeat = target.repeat(digest.hex())
    if repeat is not None:  # received already: no byte is read or stored
        return repeat
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) != target.size):
        if length.isdigit() and int(length) > target.size:
            raise PayloadTooLarge(f"a masked update of this round is {target.size} bytes")
        raise InvalidInput(f"a masked update of this round is exactly {target.size} bytes")
    key = f"{target.blob_prefix}/{target.sender:06d}-{digest.hex()[:32]}.bin"
    blobs: BlobStore = runtime.blobs
    stored = await blobs.write_stream(
        key,
        _checked_stream(request, target),
        max_size=target.size,
        expected_size=target.size,
    )
    try:
        if stored.sha256 != digest.hex():
            raise SignatureRejected("the body does not match its signed Content-Digest")
        accepted = await run_in_threadpool(_record, runtime, institution, number, stored)
    except CoordinatorError:
        if stored.sha256 != target.existing_sha256:  # keep nothing of a refused upload
            await run_in_threadpool(blobs.delete, key)
        raise
    await run_in_threadpool(followups.send, accepted.followups)
    return accepted.receipt


def _target(runtime: Runtime, institution: Institution, number: int) -> UploadTarget:
    with runtime.db.scope() as session:
        return protocol.upload_target(session, institution, number)


def _record(runtime: Runtime, institution: Institution, number: int, stored: BlobRef) -> Accepted:
    with runtime.db.scope() as session:
        return protocol.accept_masked_update(session, institution, number, stored)
