"""What an agent may send and read in a round: each request is one transaction.

The agent endpoints (`coordinator/rounds/agent_views.py`) call these. Every message is
parsed as its `privacy.secagg` type and checked by the matching server-side `check_*`
function before it is stored, so a bad message gets a 4xx and changes nothing. Sending the
same bytes again is answered `repeat` whatever the stage (idempotent); different bytes for a
step already taken are refused (409). When the last expected message of a stage arrives, the
stage is closed at once (a follow-up task runs `engine.advance`), instead of waiting for its
deadline. Round state is read through `coordinator.rounds.state`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit import checkpoints
from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.blobs.store import BlobRef
from coordinator.db import utcnow
from coordinator.errors import InvalidInput, NotFound, StateConflict
from coordinator.federations.models import Federation
from coordinator.institutions.models import Institution
from coordinator.ledger.service import SpendReport, record_spend
from coordinator.model_versions.service import get_version
from coordinator.rounds import service, state
from coordinator.rounds.followups import ADVANCE_TASK, Followup
from coordinator.rounds.models import (
    STAGE_ORDER,
    TERMINAL_STAGES,
    MaskedUpdate,
    Participant,
    ParticipantStatus,
    ProtocolMessageKind,
    ProtocolRecord,
    Round,
    RoundRecordKind,
    RoundStage,
)
from federation.layout import ParameterLayout
from federation.round_api import (
    AggregationMode,
    MessageKind,
    MyStatus,
    Receipt,
    ReceiptOutcome,
    RoundAssignment,
    Stage,
    TrainingReport,
    masked_update_size,
)
from privacy.secagg import (
    ConsistencySignature,
    KeyAdvert,
    RoundConfig,
    SecAggError,
    ShareBundle,
    ShareKeysMessage,
    UnmaskResponse,
    check_advert,
    check_consistency_signature,
    check_share_keys,
    check_unmask_response,
    route_shares,
)

_STATUS: dict[ParticipantStatus, MyStatus] = {
    ParticipantStatus.SELECTED: MyStatus.SELECTED,
    ParticipantStatus.DROPPED: MyStatus.DROPPED,
    ParticipantStatus.DECLINED: MyStatus.DECLINED,
    ParticipantStatus.COMPLETED: MyStatus.COMPLETED,
}
_WIRE_KIND: dict[ProtocolMessageKind, MessageKind] = {
    ProtocolMessageKind.ADVERTISE_KEYS: MessageKind.ADVERTISE_KEYS,
    ProtocolMessageKind.SHARE_KEYS: MessageKind.SHARE_KEYS,
    ProtocolMessageKind.CONSISTENCY_SIGNATURE: MessageKind.CONSISTENCY_SIGNATURE,
    ProtocolMessageKind.UNMASK_SHARES: MessageKind.UNMASK_SHARES,
    ProtocolMessageKind.TRAINING_REPORT: MessageKind.TRAINING_REPORT,
    ProtocolMessageKind.DECLINE: MessageKind.DECLINE,
}


@dataclass(frozen=True)
class Accepted:
    receipt: Receipt
    followups: list[Followup]


def _federation(session: Session, institution: Institution) -> Federation:
    return session.get_one(Federation, institution.federation_id)


def _find(
    session: Session, institution: Institution, number: int, *, lock: bool
) -> tuple[Round, Participant]:
    query = sa.select(Round).where(
        Round.federation_id == institution.federation_id, Round.number == number
    )
    if lock:
        query = query.with_for_update()
    round_ = session.scalars(query.execution_options(populate_existing=True)).first()
    participant = None
    if round_ is not None:
        participant = session.scalars(
            sa.select(Participant).where(
                Participant.round_id == round_.id, Participant.institution_id == institution.id
            )
        ).first()
    if round_ is None or participant is None:
        raise NotFound(f"this agent takes no part in a round {number}")
    return round_, participant


def _secagg(call: Callable[[], object], what: str) -> None:
    try:
        call()
    except SecAggError as exc:
        raise InvalidInput(f"{what} refused: {exc}") from None


# --- reads ------------------------------------------------------------------------------------


def assignment(session: Session, institution: Institution) -> RoundAssignment | None:
    """The agent's latest round (any stage once it is selected), and note it was seen."""
    session.execute(
        sa.update(Institution).where(Institution.id == institution.id).values(last_seen_at=utcnow())
    )
    session.commit()
    row = session.execute(
        sa.select(Round, Participant)
        .join(Participant, Participant.round_id == Round.id)
        .where(Participant.institution_id == institution.id)
        .order_by(Round.number.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    round_, participant = row
    body = state.round_record(session, round_, RoundRecordKind.CONFIG)
    if body is None:  # failed while selecting: nothing for the agent to do
        return None
    config = RoundConfig.from_bytes(body)
    federation = _federation(session, institution)
    received = [
        _WIRE_KIND[kind]
        for kind in session.scalars(
            sa.select(ProtocolRecord.kind).where(ProtocolRecord.participant_id == participant.id)
        )
    ]
    if session.scalar(
        sa.select(MaskedUpdate.id).where(MaskedUpdate.participant_id == participant.id)
    ):
        received.append(MessageKind.MASKED_UPDATE)
    return RoundAssignment(
        federation=federation.name,
        round=round_.number,
        stage=Stage(round_.stage.value),
        stage_deadline=round_.stage_deadline,
        mode=AggregationMode(round_.mode),
        status=_STATUS[participant.status],
        participant_id=participant.secagg_id,
        participants=config.n,
        threshold=config.threshold,
        base_version=round_.base_version or 0,
        spec_fingerprint=federation.fingerprint,
        update_layout_fingerprint=round_.layout_fingerprint or "",
        vector_length=config.vector_length,
        bits=32 if config.bits == 32 else 64,
        config=config.to_bytes(),
        received=tuple(sorted(received)),
        failure_reason=round_.failure_reason,
        audit_checkpoint=checkpoints.latest(session),
    )


def _reached(round_: Round, stage: RoundStage) -> None:
    if round_.stage is RoundStage.FAILED:
        raise StateConflict(f"round {round_.number} failed: {round_.failure_reason}")
    if STAGE_ORDER.index(round_.stage) < STAGE_ORDER.index(stage):
        raise StateConflict(
            f"round {round_.number} is in stage {round_.stage.value}; this is available from "
            f"{stage.value} on"
        )


def peers_keys(session: Session, institution: Institution, number: int) -> bytes:
    round_, participant = _find(session, institution, number, lock=False)
    _reached(round_, RoundStage.SHARE_KEYS)
    broadcast = state.key_broadcast(session, round_)
    if participant.secagg_id not in broadcast.senders:
        raise StateConflict("this agent did not advertise keys in time and left the round")
    return broadcast.to_bytes()


def share_bundle(session: Session, institution: Institution, number: int) -> bytes:
    """The ciphertexts addressed to the caller by every agent in U2 (relayed, unread)."""
    round_, participant = _find(session, institution, number, lock=False)
    _reached(round_, RoundStage.MASKED_INPUT)
    config = state.round_config(session, round_)
    broadcast = state.key_broadcast(session, round_)
    bundles: dict[int, ShareBundle] = route_shares(
        config, broadcast, state.share_messages(session, round_)
    )
    bundle = bundles.get(participant.secagg_id)
    if bundle is None:
        raise StateConflict("this agent did not share keys in time and left the round")
    return bundle.to_bytes()


def survivors(session: Session, institution: Institution, number: int) -> bytes:
    round_, _ = _find(session, institution, number, lock=False)
    _reached(round_, RoundStage.CONSISTENCY_CHECK)
    return state.survivor_set(session, round_).to_bytes()


def proof(session: Session, institution: Institution, number: int) -> bytes:
    round_, _ = _find(session, institution, number, lock=False)
    _reached(round_, RoundStage.UNMASKING)
    return state.consistency_proof(session, round_).to_bytes()


@dataclass(frozen=True)
class ModelDownload:
    version: int
    blob_key: str
    sha256: str
    size: int
    layout_fingerprint: str


def global_model(session: Session, institution: Institution, number: int) -> ModelDownload:
    """The model version the round trains from (any selected participant, any stage)."""
    round_, _ = _find(session, institution, number, lock=False)
    if round_.base_version is None:
        raise StateConflict(f"round {round_.number} has no base model yet")
    federation = _federation(session, institution)
    version = get_version(session, federation.name, round_.base_version)
    return ModelDownload(
        version.version,
        version.blob_key,
        version.sha256,
        version.size_bytes,
        ParameterLayout.model(federation.spec).fingerprint,
    )


# --- messages ---------------------------------------------------------------------------------


def _repeat(
    session: Session, participant: Participant, kind: ProtocolMessageKind, body: bytes
) -> Receipt | None:
    existing = session.scalars(
        sa.select(ProtocolRecord).where(
            ProtocolRecord.participant_id == participant.id, ProtocolRecord.kind == kind
        )
    ).first()
    if existing is None:
        return None
    if existing.sha256 != hashlib.sha256(body).hexdigest():
        raise StateConflict(f"a different {kind.value} message was already received")
    return Receipt(kind=_WIRE_KIND[kind], outcome=ReceiptOutcome.REPEAT, sha256=existing.sha256)


def _open_for(round_: Round, participant: Participant, stage: RoundStage, what: str) -> None:
    if round_.stage is not stage:
        raise StateConflict(
            f"round {round_.number} is in stage {round_.stage.value}: {what} is accepted only "
            f"during {stage.value}"
        )
    if participant.status is not ParticipantStatus.SELECTED:
        raise StateConflict(f"this agent left round {round_.number} ({participant.status.value})")


def _store(
    session: Session,
    round_: Round,
    participant: Participant,
    institution: Institution,
    kind: ProtocolMessageKind,
    body: bytes,
) -> Accepted:
    record = service.record_message(session, participant, kind, body)
    federation = _federation(session, institution)
    audit.record(
        session,
        audit.Actor(audit.ActorKind.INSTITUTION, str(institution.id)),
        AuditAction.ROUND_MESSAGE_ACCEPTED,
        state.subject(federation, round_),
        {"participant": participant.secagg_id, "kind": kind.value, "sha256": record.sha256},
    )
    followups = []
    if round_.stage in state.STAGE_MESSAGE and state.stage_complete(session, round_):
        followups.append(Followup(ADVANCE_TASK, (round_.id,)))
    session.commit()
    receipt = Receipt(kind=_WIRE_KIND[kind], outcome=ReceiptOutcome.ACCEPTED, sha256=record.sha256)
    return Accepted(receipt, followups)


def _accept(
    session: Session,
    institution: Institution,
    number: int,
    kind: ProtocolMessageKind,
    stage: RoundStage,
    body: bytes,
    check: Callable[[Round, Participant, RoundConfig], None],
) -> Accepted:
    round_, participant = _find(session, institution, number, lock=True)
    repeat = _repeat(session, participant, kind, body)
    if repeat is not None:
        session.rollback()
        return Accepted(repeat, [])
    _open_for(round_, participant, stage, kind.value)
    config = state.round_config(session, round_)
    check(round_, participant, config)
    return _store(session, round_, participant, institution, kind, body)


def _own(sender: int, participant: Participant, what: str) -> None:
    if sender != participant.secagg_id:
        raise InvalidInput(
            f"the {what} names participant {sender}; this agent is {participant.secagg_id}"
        )


def accept_advert(session: Session, institution: Institution, number: int, body: bytes) -> Accepted:
    def check(round_: Round, participant: Participant, config: RoundConfig) -> None:
        def run() -> None:
            advert = KeyAdvert.from_bytes(body)
            _own(advert.sender, participant, "key advert")
            check_advert(config, advert)

        _secagg(run, "key advert")

    return _accept(
        session,
        institution,
        number,
        ProtocolMessageKind.ADVERTISE_KEYS,
        RoundStage.ADVERTISE_KEYS,
        body,
        check,
    )


def accept_shares(session: Session, institution: Institution, number: int, body: bytes) -> Accepted:
    def check(round_: Round, participant: Participant, config: RoundConfig) -> None:
        broadcast = state.key_broadcast(session, round_)

        def run() -> None:
            message = ShareKeysMessage.from_bytes(body)
            _own(message.sender, participant, "share keys message")
            check_share_keys(config, broadcast, message)

        _secagg(run, "share keys message")

    return _accept(
        session,
        institution,
        number,
        ProtocolMessageKind.SHARE_KEYS,
        RoundStage.SHARE_KEYS,
        body,
        check,
    )


def accept_signature(
    session: Session, institution: Institution, number: int, body: bytes
) -> Accepted:
    def check(round_: Round, participant: Participant, config: RoundConfig) -> None:
        survivor_set = state.survivor_set(session, round_)

        def run() -> None:
            signature = ConsistencySignature.from_bytes(body)
            _own(signature.sender, participant, "survivor signature")
            check_consistency_signature(config, survivor_set, signature)

        _secagg(run, "survivor signature")

    return _accept(
        session,
        institution,
        number,
        ProtocolMessageKind.CONSISTENCY_SIGNATURE,
        RoundStage.CONSISTENCY_CHECK,
        body,
        check,
    )


def accept_unmask(session: Session, institution: Institution, number: int, body: bytes) -> Accepted:
    def check(round_: Round, participant: Participant, config: RoundConfig) -> None:
        consistency = state.consistency_proof(session, round_)
        senders = state.share_senders(session, round_)

        def run() -> None:
            response = UnmaskResponse.from_bytes(body)
            _own(response.sender, participant, "unmask response")
            check_unmask_response(config, senders, consistency, response)

        _secagg(run, "unmask response")

    return _accept(
        session,
        institution,
        number,
        ProtocolMessageKind.UNMASK_SHARES,
        RoundStage.UNMASKING,
        body,
        check,
    )


def accept_report(
    session: Session, institution: Institution, number: int, report: TrainingReport
) -> Accepted:
    """Per-task metrics and DP spend, from a participant that uploaded its update.

    Checked and recorded at arrival: the spend goes into the ledger in this transaction
    (`coordinator.ledger.service.record_spend`), so a report the accountant cannot account
    for is refused now (4xx) instead of failing the round's completion, and a round that
    ends without completing keeps the spend. A report may arrive after its round ended
    (the agent trained, so it spent, either way); its metrics then count for nothing."""
    body = report.model_dump_json().encode()
    kind = ProtocolMessageKind.TRAINING_REPORT
    round_, participant = _find(session, institution, number, lock=True)
    repeat = _repeat(session, participant, kind, body)
    if repeat is not None:
        session.rollback()
        return Accepted(repeat, [])
    if not session.scalar(
        sa.select(MaskedUpdate.id).where(MaskedUpdate.participant_id == participant.id)
    ):
        raise StateConflict("a training report follows this agent's masked update")
    federation = _federation(session, institution)
    spec = federation.spec
    unknown = sorted(set(report.tasks) - set(spec.task_names))
    if unknown:
        raise InvalidInput(f"unknown task '{unknown[0]}' (the federation has {spec.task_names})")
    if round_.vector_length is not None and report.clipped > round_.vector_length:
        raise InvalidInput(
            f"{report.clipped} clipped coordinates reported; the update has {round_.vector_length}"
        )
    spend = report.spend
    if spend is None:
        if spec.dp.enabled:
            raise InvalidInput("this federation trains with DP: the report must carry its spend")
    else:
        if spend.accountant != spec.dp.accountant.value:
            raise InvalidInput(
                f"the federation accounts with '{spec.dp.accountant.value}', the report used "
                f"'{spend.accountant}'"
            )
        record_spend(
            session,
            round_,
            institution,
            SpendReport.from_wire(spend),
            actor=audit.Actor(audit.ActorKind.INSTITUTION, str(institution.id)),
        )
    return _store(session, round_, participant, institution, kind, body)


def decline(session: Session, institution: Institution, number: int, reason: str) -> Accepted:
    """The agent leaves the round at once; the round goes on without it if >= t remain."""
    kind = ProtocolMessageKind.DECLINE
    body = reason.encode()
    round_, participant = _find(session, institution, number, lock=True)
    repeat = _repeat(session, participant, kind, body)
    if repeat is not None:
        session.rollback()
        return Accepted(repeat, [])
    if round_.stage in TERMINAL_STAGES or round_.stage is RoundStage.AGGREGATING:
        raise StateConflict(f"round {round_.number} no longer needs this agent")
    if participant.status is not ParticipantStatus.SELECTED:
        raise StateConflict(f"this agent left round {round_.number} ({participant.status.value})")
    participant.status = ParticipantStatus.DECLINED
    participant.dropped_at_stage = round_.stage
    federation = _federation(session, institution)
    audit.record(
        session,
        audit.Actor(audit.ActorKind.INSTITUTION, str(institution.id)),
        AuditAction.ROUND_PARTICIPANT_DECLINED,
        state.subject(federation, round_),
        {"participant": participant.secagg_id, "stage": round_.stage.value, "reason": reason},
    )
    return _store(session, round_, participant, institution, kind, body)


# --- masked update (streamed) -----------------------------------------------------------------


@dataclass(frozen=True)
class UploadTarget:
    """Where and how big an agent's masked update must be."""

    round_id: bytes  # the round config digest the upload must carry
    sender: int
    bits: int
    vector_length: int
    size: int
    blob_prefix: str
    existing_sha256: str | None

    def repeat(self, sha256: str) -> Receipt | None:
        """The answer to an upload of an update already received (its signed digest
        `sha256`), without reading its body: a repeat, or 409 for other bytes."""
        if self.existing_sha256 is None:
            return None
        if self.existing_sha256 != sha256:
            raise StateConflict("a different masked update was already received")
        return Receipt(kind=MessageKind.MASKED_UPDATE, outcome=ReceiptOutcome.REPEAT, sha256=sha256)


def upload_target(session: Session, institution: Institution, number: int) -> UploadTarget:
    """Checks before any byte is read: the caller may upload now, and how much.

    Only during the masked-input stage; later, while the round is open, an upload already
    received is answered from its signed digest without reading (or storing) the body."""
    round_, participant = _find(session, institution, number, lock=False)
    existing = session.scalars(
        sa.select(MaskedUpdate).where(MaskedUpdate.participant_id == participant.id)
    ).first()
    if existing is None:
        _open_for(round_, participant, RoundStage.MASKED_INPUT, "a masked update")
    elif round_.stage in TERMINAL_STAGES:
        raise StateConflict(f"round {round_.number} is over ({round_.stage.value})")
    config = state.round_config(session, round_)
    federation = _federation(session, institution)
    session.rollback()
    return UploadTarget(
        round_id=config.digest,
        sender=participant.secagg_id,
        bits=config.bits,
        vector_length=config.vector_length,
        size=masked_update_size(config.vector_length, config.bits),
        blob_prefix=f"rounds/{federation.name}/{round_.number:06d}/masked",
        existing_sha256=None if existing is None else existing.sha256,
    )


def accept_masked_update(
    session: Session, institution: Institution, number: int, blob: BlobRef
) -> Accepted:
    """Record a stored upload (idempotent: the same bytes again are a repeat)."""
    round_, participant = _find(session, institution, number, lock=True)
    existing = session.scalars(
        sa.select(MaskedUpdate).where(MaskedUpdate.participant_id == participant.id)
    ).first()
    if existing is not None:
        if existing.sha256 != blob.sha256:
            raise StateConflict("a different masked update was already received")
        session.rollback()
        receipt = Receipt(
            kind=MessageKind.MASKED_UPDATE, outcome=ReceiptOutcome.REPEAT, sha256=blob.sha256
        )
        return Accepted(receipt, [])
    _open_for(round_, participant, RoundStage.MASKED_INPUT, "a masked update")
    service.record_masked_update(session, participant, blob)
    federation = _federation(session, institution)
    audit.record(
        session,
        audit.Actor(audit.ActorKind.INSTITUTION, str(institution.id)),
        AuditAction.ROUND_MESSAGE_ACCEPTED,
        state.subject(federation, round_),
        {"participant": participant.secagg_id, "kind": "masked_update", "sha256": blob.sha256},
    )
    followups = []
    if state.stage_complete(session, round_):
        followups.append(Followup(ADVANCE_TASK, (round_.id,)))
    session.commit()
    receipt = Receipt(
        kind=MessageKind.MASKED_UPDATE, outcome=ReceiptOutcome.ACCEPTED, sha256=blob.sha256
    )
    return Accepted(receipt, followups)
