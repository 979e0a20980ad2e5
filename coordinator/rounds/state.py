"""Reading a round's state: what the protocol, the engine and aggregation all need to see.

Pure reads over the round's rows (no writes, no commits), shared by the request side
(`protocol`), the stage machine (`engine`) and the workers (`aggregation`), so that none of
those three has to import another to read a round. The coordinator-derived records (config,
key broadcast, survivor set, consistency proof, unmask plan) are parsed into their
`privacy.secagg` types here; a record that is not there yet is a `StateConflict`.
"""

from __future__ import annotations

import json
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.errors import StateConflict
from coordinator.federations.models import Federation
from coordinator.rounds.models import (
    TERMINAL_STAGES,
    MaskedUpdate,
    Participant,
    ParticipantStatus,
    ProtocolMessageKind,
    ProtocolRecord,
    Round,
    RoundRecord,
    RoundRecordKind,
    RoundStage,
    UnmaskSlice,
)
from federation.round_api import AggregationMode, TrainingReport
from privacy.secagg import (
    ConsistencyProof,
    KeyBroadcast,
    RoundConfig,
    ShareKeysMessage,
    SurvivorSet,
    UnmaskPlan,
)

#: What each protocol stage waits for from every participant still in the round.
STAGE_MESSAGE: Final[dict[RoundStage, ProtocolMessageKind | None]] = {
    RoundStage.ADVERTISE_KEYS: ProtocolMessageKind.ADVERTISE_KEYS,
    RoundStage.SHARE_KEYS: ProtocolMessageKind.SHARE_KEYS,
    RoundStage.MASKED_INPUT: None,  # a masked update (a blob), not a protocol record
    RoundStage.CONSISTENCY_CHECK: ProtocolMessageKind.CONSISTENCY_SIGNATURE,
    RoundStage.UNMASKING: ProtocolMessageKind.UNMASK_SHARES,
}


def subject(federation: Federation, round_: Round) -> str:
    """The audit subject of a round: `round:<federation>/<number>`."""
    return f"round:{federation.name}/{round_.number}"


def lock_round(session: Session, round_id: int) -> Round | None:
    """The round row, locked until the transaction ends (PostgreSQL; SQLite serialises)."""
    return session.scalars(
        sa.select(Round)
        .where(Round.id == round_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()


def open_round_ids(session: Session) -> list[int]:
    return list(
        session.scalars(
            sa.select(Round.id).where(Round.stage.not_in(TERMINAL_STAGES)).order_by(Round.id)
        )
    )


def mode_of(round_: Round) -> AggregationMode:
    return AggregationMode(round_.mode)


def round_record(session: Session, round_: Round, kind: RoundRecordKind) -> bytes | None:
    return session.scalar(
        sa.select(RoundRecord.body).where(
            RoundRecord.round_id == round_.id, RoundRecord.kind == kind
        )
    )


def round_config(session: Session, round_: Round) -> RoundConfig:
    """The round's config; with a neighbour graph, bound to the seed of the key broadcast
    once there is one (the graph is a hash of the adverts, privacy/secagg/graph.py)."""
    body = round_record(session, round_, RoundRecordKind.CONFIG)
    if body is None:
        raise StateConflict(f"round {round_.number} has no participants yet")
    config = RoundConfig.from_bytes(body)
    if config.graph is not None:
        broadcast = round_record(session, round_, RoundRecordKind.KEY_BROADCAST)
        if broadcast is not None:
            config = config.bind_graph(KeyBroadcast.from_bytes(broadcast))
    return config


def key_broadcast(session: Session, round_: Round) -> KeyBroadcast:
    body = round_record(session, round_, RoundRecordKind.KEY_BROADCAST)
    if body is None:
        raise StateConflict(f"round {round_.number} has not broadcast the keys yet")
    return KeyBroadcast.from_bytes(body)


def survivor_set(session: Session, round_: Round) -> SurvivorSet:
    body = round_record(session, round_, RoundRecordKind.SURVIVOR_SET)
    if body is None:
        raise StateConflict(f"round {round_.number} has no survivor set yet")
    return SurvivorSet.from_bytes(body)


def consistency_proof(session: Session, round_: Round) -> ConsistencyProof:
    body = round_record(session, round_, RoundRecordKind.CONSISTENCY_PROOF)
    if body is None:
        raise StateConflict(f"round {round_.number} has no consistency proof yet")
    return ConsistencyProof.from_bytes(body)


def unmask_plan(session: Session, round_: Round) -> UnmaskPlan:
    body = round_record(session, round_, RoundRecordKind.UNMASK_PLAN)
    if body is None:
        raise StateConflict(f"round {round_.number} has no unmask plan")
    return UnmaskPlan.from_bytes(body)


def messages(
    session: Session, round_: Round, kind: ProtocolMessageKind
) -> list[tuple[Participant, bytes]]:
    """Every stored message of `kind` in the round, by participant (in secagg id order)."""
    rows = session.execute(
        sa.select(Participant, ProtocolRecord.body)
        .join(ProtocolRecord, ProtocolRecord.participant_id == Participant.id)
        .where(Participant.round_id == round_.id, ProtocolRecord.kind == kind)
        .order_by(Participant.secagg_id)
    ).all()
    return [(participant, body) for participant, body in rows]


def active_bodies(session: Session, round_: Round, kind: ProtocolMessageKind) -> list[bytes]:
    """The messages of `kind` from participants still in the round."""
    return [
        body
        for participant, body in messages(session, round_, kind)
        if participant.status is ParticipantStatus.SELECTED
    ]


def share_messages(session: Session, round_: Round) -> list[ShareKeysMessage]:
    return [
        ShareKeysMessage.from_bytes(body)
        for _, body in messages(session, round_, ProtocolMessageKind.SHARE_KEYS)
    ]


def share_senders(session: Session, round_: Round) -> tuple[int, ...]:
    """U2: who shared keys (their messages were accepted during SHARE_KEYS)."""
    return tuple(p.secagg_id for p, _ in messages(session, round_, ProtocolMessageKind.SHARE_KEYS))


def training_reports(session: Session, round_: Round) -> dict[int, TrainingReport]:
    """Reports of the round by participant row id."""
    return {
        participant.id: TrainingReport.model_validate(json.loads(body))
        for participant, body in messages(session, round_, ProtocolMessageKind.TRAINING_REPORT)
    }


def uploaders(session: Session, round_: Round) -> dict[int, MaskedUpdate]:
    """Masked updates of the round by secagg id."""
    rows = session.execute(
        sa.select(Participant.secagg_id, MaskedUpdate)
        .join(MaskedUpdate, MaskedUpdate.participant_id == Participant.id)
        .where(Participant.round_id == round_.id)
    ).all()
    return {int(secagg_id): update for secagg_id, update in rows}


def active(round_: Round) -> list[Participant]:
    return [p for p in round_.participants if p.status is ParticipantStatus.SELECTED]


def answered(session: Session, round_: Round) -> set[int]:
    """Secagg ids of the participants that answered the current stage."""
    if round_.stage is RoundStage.MASKED_INPUT:
        return set(uploaders(session, round_))
    kind = STAGE_MESSAGE.get(round_.stage)
    if kind is None:
        return set()
    return {p.secagg_id for p, _ in messages(session, round_, kind)}


def stage_complete(session: Session, round_: Round) -> bool:
    """Every participant still in the round answered the current protocol stage."""
    if round_.stage not in STAGE_MESSAGE:
        return False
    done = answered(session, round_)
    return all(p.secagg_id in done for p in active(round_))


def round_blob_keys(session: Session, round_id: int) -> list[str]:
    """The blobs a round leaves behind: its masked uploads and its unmasked slices."""
    uploads = session.scalars(
        sa.select(MaskedUpdate.blob_key)
        .join(Participant, MaskedUpdate.participant_id == Participant.id)
        .where(Participant.round_id == round_id)
    )
    slices = session.scalars(
        sa.select(UnmaskSlice.blob_key).where(
            UnmaskSlice.round_id == round_id, UnmaskSlice.blob_key.is_not(None)
        )
    )
    return [*uploads, *(key for key in slices if key)]
