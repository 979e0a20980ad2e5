"""The round engine: open a round, select participants, close stages, fail cleanly.

DESIGN.md, "One round, end to end". Each function here is one transaction over database
state alone, driving `privacy.secagg`'s server side (Bonawitz et al. 2017, Fig. 4):

    SCHEDULED -> ADVERTISE_KEYS -> SHARE_KEYS -> MASKED_INPUT -> CONSISTENCY_CHECK
              -> UNMASKING -> AGGREGATING -> COMPLETED        (or FAILED, with a reason)

A stage closes when every participant still in the round answered, or at its deadline; the
ones that did not answer are dropped; if fewer than t remain the round fails with the
secure-aggregation error as its reason. `advance` is safe to call at any time, any number of
times, from any process (it locks the round row): the API calls it when the last expected
message arrives, a countdown task at each deadline, and the periodic tick for every open
round (which also recovers from lost tasks). Functions return `Followup`s: Celery tasks the
caller sends once the transaction has committed.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final

import sqlalchemy as sa
from sqlalchemy.orm import Session

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.blobs.store import BlobNotFound, BlobStore
from coordinator.db import utcnow
from coordinator.errors import InvalidInput, StateConflict
from coordinator.federations.models import Federation
from coordinator.federations.service import get_federation
from coordinator.institutions.models import EnrollmentState, Institution
from coordinator.model_versions.service import (
    latest_version_number,
    model_blob_key,
    store_model_version,
)
from coordinator.rounds import service, state
from coordinator.rounds.followups import (
    ADVANCE_TASK,
    DEADLINE_GRACE_S,
    DISCARD_TASK,
    FINISH_TASK,
    SLICE_TASK,
    Followup,
)
from coordinator.rounds.models import (
    TERMINAL_STAGES,
    Participant,
    ParticipantStatus,
    ProtocolMessageKind,
    ProtocolRecord,
    Round,
    RoundRecord,
    RoundRecordKind,
    RoundStage,
    SliceState,
    UnmaskSlice,
)
from coordinator.settings import Settings
from federation.layout import ParameterLayout
from federation.round_api import DECLINE_BUDGET, AggregationMode
from federation.spec import FederationSpec
from privacy.secagg import (
    ConsistencySignature,
    IdentityPublicKey,
    KeyAdvert,
    NeighbourGraph,
    RoundConfig,
    RoundContext,
    RoundMember,
    SecAggError,
    ShareKeysMessage,
    UnmaskPlan,
    UnmaskResponse,
    close_advertise,
    close_consistency,
    close_masked_input,
    plan_unmask,
    recommended_graph,
    route_shares,
)

logger = logging.getLogger(__name__)

#: From this many participants on, `neighbour_graph = "auto"` uses the SecAgg+ graph.
AUTO_GRAPH_FROM: Final = 32


# --- opening a round --------------------------------------------------------------------------


def ensure_initial_model(session: Session, blobs: BlobStore, federation: Federation) -> int:
    """The latest model version, creating version 0 from `build_model(spec)` if there is none."""
    latest = latest_version_number(session, federation)
    if latest is not None:
        return latest
    from federation.model import build_model, model_vector  # torch: only when needed

    spec = federation.spec
    layout = ParameterLayout.model(spec)
    vector = model_vector(build_model(spec), layout).astype("<f4")
    content = vector.tobytes()
    blob = blobs.write(
        model_blob_key(federation, 0), [content], max_size=len(content), expected_size=len(content)
    )
    store_model_version(
        session,
        federation,
        version=0,
        blob=blob,
        layout_fingerprint=layout.fingerprint,
        actor=audit.SYSTEM,
    )
    return 0


def start_round(
    session: Session,
    blobs: BlobStore,
    settings: Settings,
    federation_name: str,
    *,
    actor: audit.Actor,
    now: datetime | None = None,
) -> tuple[Round, list[Followup]]:
    """Open the federation's next round and select its participants (commits).

    Refused (nothing changes) when another round is open or the federation asks for plain
    aggregation that this coordinator does not allow. With too few eligible agents the round
    is created and fails at once, with the reason recorded.
    """
    federation = get_federation(session, federation_name)
    spec = federation.spec
    if (
        AggregationMode(spec.secagg.mode) is AggregationMode.PLAIN
        and not settings.allow_plain_aggregation
    ):
        raise InvalidInput(
            f"federation '{federation.name}' asks for plain (unmasked) aggregation, which this "
            "coordinator refuses (set FMTL_ALLOW_PLAIN_AGGREGATION=true for benchmarks only)"
        )
    ensure_initial_model(session, blobs, federation)
    session.commit()
    round_ = service.open_round(session, federation, actor=actor, commit=False)
    followups = select(session, settings, round_, actor=actor, now=now)
    session.commit()
    return round_, followups


def eligible_institutions(
    session: Session, federation: Federation, settings: Settings, now: datetime
) -> list[Institution]:
    """Enrolled, seen recently (polled, or enrolled, within the window), not out of budget."""
    window = now - timedelta(seconds=settings.agent_seen_window_s)
    candidates = session.scalars(
        sa.select(Institution)
        .where(
            Institution.federation_id == federation.id,
            Institution.state == EnrollmentState.ENROLLED,
            Institution.public_key.is_not(None),
        )
        .order_by(Institution.id)
    ).all()
    out_of_budget = _declared_out_of_budget(session, federation)
    chosen = []
    for institution in candidates:
        seen = [t for t in (institution.last_seen_at, institution.enrolled_at) if t is not None]
        if seen and max(seen) >= window and institution.id not in out_of_budget:
            chosen.append(institution)
    return chosen


def _declared_out_of_budget(session: Session, federation: Federation) -> set[int]:
    """Institutions whose latest round ended with a decline for budget."""
    rows = session.execute(
        sa.select(Participant.institution_id, Round.number, Participant.status, ProtocolRecord.body)
        .join(Round, Participant.round_id == Round.id)
        .outerjoin(
            ProtocolRecord,
            sa.and_(
                ProtocolRecord.participant_id == Participant.id,
                ProtocolRecord.kind == ProtocolMessageKind.DECLINE,
            ),
        )
        .where(Round.federation_id == federation.id)
        .order_by(Round.number)
    ).all()
    latest: dict[int, bytes | None] = {}
    for institution_id, _, status, body in rows:
        latest[institution_id] = body if status is ParticipantStatus.DECLINED else None
    return {
        institution_id
        for institution_id, body in latest.items()
        if body is not None and body.decode(errors="replace") == DECLINE_BUDGET
    }


def _graph(spec: FederationSpec, n: int) -> NeighbourGraph | None:
    choice = spec.secagg.neighbour_graph
    if choice == "never" or (choice == "auto" and n < AUTO_GRAPH_FROM):
        return None
    # Degree and neighbourhood threshold for 1/3 colluding, 10% dropouts, 2^-40 (the agents'
    # default policy, privacy/secagg/graph_security.py); the seed is derived from the adverts.
    chosen = recommended_graph(n)
    if chosen is None:
        return None
    degree, threshold = chosen
    return NeighbourGraph(degree, threshold)


def select(
    session: Session,
    settings: Settings,
    round_: Round,
    *,
    actor: audit.Actor,
    now: datetime | None = None,
) -> list[Followup]:
    """SCHEDULED -> the first protocol stage: pick participants, fix t, the config, d."""
    now = now or utcnow()
    federation = session.get_one(Federation, round_.federation_id)
    spec = federation.spec
    schedule = spec.schedule
    candidates = eligible_institutions(session, federation, settings, now)
    if len(candidates) > schedule.max_participants:
        chosen = secrets.SystemRandom().sample(candidates, schedule.max_participants)
    else:
        chosen = list(candidates)
    chosen.sort(key=lambda institution: institution.id)
    n = len(chosen)
    minimum = max(schedule.min_participants, 2)
    if n < minimum:
        fail(
            session,
            round_,
            f"only {n} eligible agents (enrolled, seen in the last "
            f"{settings.agent_seen_window_s:.0f} s, within budget); the schedule needs at least "
            f"{minimum}",
        )
        return []
    mode = AggregationMode(spec.secagg.mode)
    threshold = spec.secagg.threshold(n)
    participants = service.select_participants(session, round_, chosen, threshold=threshold)
    update_layout = ParameterLayout.update(spec)
    try:
        config = RoundConfig(
            RoundContext(federation.name, round_.number),
            tuple(
                RoundMember(
                    participant.secagg_id,
                    institution.name,
                    IdentityPublicKey(bytes(institution.public_key or b"")),
                )
                for participant, institution in zip(participants, chosen, strict=True)
            ),
            threshold,
            update_layout.length,
            spec.secagg.bits,
            None if mode is AggregationMode.PLAIN else _graph(spec, n),
        )
    except SecAggError as exc:  # e.g. a graph that cannot be built for this n
        return fail(session, round_, f"selecting participants: {exc}")
    service.record_round_message(session, round_, RoundRecordKind.CONFIG, config.to_bytes())
    round_.vector_length = update_layout.length
    round_.layout_fingerprint = update_layout.fingerprint
    round_.base_version = latest_version_number(session, federation)
    round_.mode = mode.value
    first = RoundStage.MASKED_INPUT if mode is AggregationMode.PLAIN else RoundStage.ADVERTISE_KEYS
    return _enter(session, settings, round_, first, actor=actor, responders=n, now=now)


def _enter(
    session: Session,
    settings: Settings,
    round_: Round,
    stage: RoundStage,
    *,
    actor: audit.Actor,
    responders: int | None,
    now: datetime,
) -> list[Followup]:
    federation = session.get_one(Federation, round_.federation_id)
    timeout = federation.spec.schedule.stage_timeout_s
    if stage is RoundStage.AGGREGATING:
        timeout = settings.slice_lease_s
    deadline = now + timedelta(seconds=timeout)
    service.enter_stage(
        session, round_, stage, actor=actor, deadline=deadline, responders=responders
    )
    return [Followup(ADVANCE_TASK, (round_.id,), countdown=timeout + DEADLINE_GRACE_S)]


def fail(
    session: Session, round_: Round, reason: str, *, actor: audit.Actor = audit.SYSTEM
) -> list[Followup]:
    """End the round as FAILED with `reason` (recorded and audited); the follow-up deletes
    its masked uploads and unmasked slices once this transaction has committed."""
    logger.info("round %s failed: %s", round_.id, reason)
    service.enter_stage(session, round_, RoundStage.FAILED, actor=actor, reason=reason)
    purge_unmask_secrets(session, round_)
    return [Followup(DISCARD_TASK, (round_.id,))]


def fail_by_admin(
    session: Session, federation_name: str, number: int, reason: str, *, actor: audit.Actor
) -> tuple[Round, list[Followup]]:
    """An admin ends an open round as FAILED (commits): the way out of a round stuck in a
    stage, aggregation included, so that the next round can open. Audited with the actor
    and the reason; a round already over is refused (409)."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput("failing a round needs a reason")
    round_ = service.get_round(session, federation_name, number)
    locked = state.lock_round(session, round_.id)
    assert locked is not None
    if locked.stage in TERMINAL_STAGES:
        raise StateConflict(f"round {number} is already {locked.stage.value}")
    followups = fail(session, locked, f"failed by an admin: {reason}", actor=actor)
    session.commit()
    return locked, followups


def purge_unmask_secrets(session: Session, round_: Round) -> None:
    """Delete what could unmask more than the sum once the round is over: the unmask plan
    (reconstructed seeds) and the survivors' unmask responses (shares of b_u and of dropped
    agents' mask keys). docs/secagg.md, "What the server learns"."""
    session.execute(
        sa.delete(RoundRecord).where(
            RoundRecord.round_id == round_.id, RoundRecord.kind == RoundRecordKind.UNMASK_PLAN
        )
    )
    participants = sa.select(Participant.id).where(Participant.round_id == round_.id)
    session.execute(
        sa.delete(ProtocolRecord).where(
            ProtocolRecord.participant_id.in_(participants),
            ProtocolRecord.kind == ProtocolMessageKind.UNMASK_SHARES,
        )
    )


def drop(session: Session, round_: Round, participant: Participant, stage: RoundStage) -> None:
    """A participant missed `stage`: it takes no further part (audited)."""
    service.mark_dropped(session, participant, stage)
    federation = session.get_one(Federation, round_.federation_id)
    audit.record(
        session,
        audit.SYSTEM,
        AuditAction.ROUND_PARTICIPANT_DROPPED,
        state.subject(federation, round_),
        {"participant": participant.secagg_id, "stage": stage.value},
    )


# --- closing stages ---------------------------------------------------------------------------


def advance(
    session: Session, settings: Settings, round_id: int, *, now: datetime | None = None
) -> list[Followup]:
    """Close the round's current stage if it is complete or past its deadline (commits)."""
    now = now or utcnow()
    round_ = state.lock_round(session, round_id)
    if round_ is None or round_.stage in TERMINAL_STAGES:
        session.rollback()
        return []
    followups: list[Followup] = []
    if round_.stage is RoundStage.SCHEDULED:
        if round_.scheduled_for is None or round_.scheduled_for <= now:
            followups = select(session, settings, round_, actor=audit.SYSTEM, now=now)
    elif round_.stage is RoundStage.AGGREGATING:
        followups = recover_aggregation(session, settings, round_, now=now)
    else:
        overdue = round_.stage_deadline is not None and round_.stage_deadline <= now
        if overdue or state.stage_complete(session, round_):
            followups = _close(session, settings, round_, now=now)
    session.commit()
    return followups


def _close(session: Session, settings: Settings, round_: Round, *, now: datetime) -> list[Followup]:
    stage = round_.stage
    done = state.answered(session, round_)
    for participant in state.active(round_):
        if participant.secagg_id not in done:
            drop(session, round_, participant, stage)
    responders = len(done & {p.secagg_id for p in round_.participants})
    try:
        config = state.round_config(session, round_)
        nxt = _closers[stage](session, settings, round_, config)
    except SecAggError as exc:
        return fail(session, round_, f"{stage.value}: {exc}")
    if nxt is RoundStage.AGGREGATING:
        followups = _enter(
            session, settings, round_, nxt, actor=audit.SYSTEM, responders=responders, now=now
        )
        slices = session.scalars(
            sa.select(UnmaskSlice)
            .where(UnmaskSlice.round_id == round_.id)
            .order_by(UnmaskSlice.index)
        ).all()
        return followups + [Followup(SLICE_TASK, (round_.id, s.index)) for s in slices]
    return _enter(
        session, settings, round_, nxt, actor=audit.SYSTEM, responders=responders, now=now
    )


def _close_advertise(
    session: Session, settings: Settings, round_: Round, config: RoundConfig
) -> RoundStage:
    adverts = [
        KeyAdvert.from_bytes(b)
        for b in state.active_bodies(session, round_, ProtocolMessageKind.ADVERTISE_KEYS)
    ]
    broadcast = close_advertise(config, adverts)
    service.record_round_message(
        session, round_, RoundRecordKind.KEY_BROADCAST, broadcast.to_bytes()
    )
    return RoundStage.SHARE_KEYS


def _close_share(
    session: Session, settings: Settings, round_: Round, config: RoundConfig
) -> RoundStage:
    bodies = state.active_bodies(session, round_, ProtocolMessageKind.SHARE_KEYS)
    route_shares(
        config,
        state.key_broadcast(session, round_),
        [ShareKeysMessage.from_bytes(b) for b in bodies],
    )
    return RoundStage.MASKED_INPUT


def _close_masked(
    session: Session, settings: Settings, round_: Round, config: RoundConfig
) -> RoundStage:
    alive = {p.secagg_id for p in state.active(round_)}
    uploaded = [pid for pid in state.uploaders(session, round_) if pid in alive]
    if state.mode_of(round_) is AggregationMode.PLAIN:
        survivors = close_masked_input(config, config.ids, uploaded)
        plan = UnmaskPlan.plain(config, survivors.survivors)
        _prepare_aggregation(session, settings, round_, plan)
        return RoundStage.AGGREGATING
    survivors = close_masked_input(config, state.share_senders(session, round_), uploaded)
    service.record_round_message(
        session, round_, RoundRecordKind.SURVIVOR_SET, survivors.to_bytes()
    )
    return RoundStage.CONSISTENCY_CHECK


def _close_consistency(
    session: Session, settings: Settings, round_: Round, config: RoundConfig
) -> RoundStage:
    signatures = [
        ConsistencySignature.from_bytes(b)
        for b in state.active_bodies(session, round_, ProtocolMessageKind.CONSISTENCY_SIGNATURE)
    ]
    proof = close_consistency(config, state.survivor_set(session, round_), signatures)
    service.record_round_message(
        session, round_, RoundRecordKind.CONSISTENCY_PROOF, proof.to_bytes()
    )
    return RoundStage.UNMASKING


def _close_unmasking(
    session: Session, settings: Settings, round_: Round, config: RoundConfig
) -> RoundStage:
    responses = [
        UnmaskResponse.from_bytes(b)
        for b in state.active_bodies(session, round_, ProtocolMessageKind.UNMASK_SHARES)
    ]
    plan = plan_unmask(
        config,
        state.key_broadcast(session, round_),
        state.share_messages(session, round_),
        state.consistency_proof(session, round_),
        responses,
    )
    _prepare_aggregation(session, settings, round_, plan)
    return RoundStage.AGGREGATING


_closers = {
    RoundStage.ADVERTISE_KEYS: _close_advertise,
    RoundStage.SHARE_KEYS: _close_share,
    RoundStage.MASKED_INPUT: _close_masked,
    RoundStage.CONSISTENCY_CHECK: _close_consistency,
    RoundStage.UNMASKING: _close_unmasking,
}


def _prepare_aggregation(
    session: Session, settings: Settings, round_: Round, plan: UnmaskPlan
) -> None:
    """Store the unmask plan and cut [0, d) into slices for the workers."""
    service.record_round_message(session, round_, RoundRecordKind.UNMASK_PLAN, plan.to_bytes())
    step = settings.unmask_slice_coordinates
    length = plan.vector_length
    for index, start in enumerate(range(0, length, step)):
        session.add(
            UnmaskSlice(
                round_id=round_.id, index=index, start=start, stop=min(start + step, length)
            )
        )
    session.flush()


def recover_aggregation(
    session: Session, settings: Settings, round_: Round, *, now: datetime
) -> list[Followup]:
    """Re-send slices nobody holds a live lease on; finish when every slice is done."""
    slices = session.scalars(
        sa.select(UnmaskSlice).where(UnmaskSlice.round_id == round_.id).order_by(UnmaskSlice.index)
    ).all()
    pending = [s for s in slices if s.state is SliceState.PENDING]
    if not pending:
        return [Followup(FINISH_TASK, (round_.id,))]
    # A slice nobody has taken yet may just be waiting in the queue: re-send it only once a
    # whole lease period has passed (the stage deadline); a taken one once its lease ran out.
    queue_timed_out = round_.stage_deadline is None or round_.stage_deadline <= now
    stale = [
        s
        for s in pending
        if (s.lease_expires_at is None and queue_timed_out)
        or (s.lease_expires_at is not None and s.lease_expires_at <= now)
    ]
    if not stale:
        return []
    round_.stage_deadline = now + timedelta(seconds=settings.slice_lease_s)
    # Check again once the re-sent slices' leases could have run out (the tick does too).
    again = Followup(
        ADVANCE_TASK, (round_.id,), countdown=settings.slice_lease_s + DEADLINE_GRACE_S
    )
    return [*(Followup(SLICE_TASK, (round_.id, s.index)) for s in stale), again]


def delete_round_blobs(blobs: BlobStore, keys: Sequence[str]) -> None:
    for key in keys:
        with contextlib.suppress(BlobNotFound):
            blobs.delete(key)


def discard_failed_round_blobs(session: Session, blobs: BlobStore, round_id: int) -> int:
    """Delete a FAILED round's uploads and slices (idempotent); returns how many keys."""
    round_ = session.get(Round, round_id)
    if round_ is None or round_.stage is not RoundStage.FAILED:
        return 0
    keys = state.round_blob_keys(session, round_id)
    session.rollback()  # read only: end the transaction before the file work
    delete_round_blobs(blobs, keys)
    return len(keys)
