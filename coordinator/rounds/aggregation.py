"""Aggregating a round: unmask the sum slice by slice, then apply it as the next model.

DESIGN.md, "One round", steps 6-7. When unmasking closes, the engine stores the
`UnmaskPlan` and cuts [0, d) into `UnmaskSlice` rows. Each slice is one Celery task
(`unmask_slice`, sent as a group): it takes a lease on its row, reads the same coordinate
range of every survivor's stored upload once (ranged reads into reused buffers, a few in
flight) and adds each in place mod 2^k (`masked_sum.sum_masked_range`), removes the
masks (`privacy.secagg.unmask_slice`, AES-CTR is seekable) and stores the slice of the sum
as a blob. A worker killed mid-slice leaves the lease to expire, after which the tick sends
the slice again; a slice done twice writes the same bytes (blobs are write-once and accept
identical content). The task that stores the last slice runs `finish` itself (the tick
sends it as a task when that worker died first), which decodes the sum, applies
the federation's strategy (`federation.aggregation.apply_sums`), stores the new model
version, records the federation-wide task-wise results (from the summed validation
statistics) and the per-institution ones institutions opted to send, and completes the
round. The privacy spend is on record already (written when each report arrived); what
is recorded here is isolated per institution and can never keep a round from completing.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import numpy as np
import sqlalchemy as sa

from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.blobs.store import BlobNotFound
from coordinator.db import utcnow
from coordinator.federations.models import Federation
from coordinator.institutions.models import Institution
from coordinator.ledger.models import PrivacySpend
from coordinator.ledger.service import SpendReport, record_spend
from coordinator.model_versions.service import (
    get_version,
    latest_version_number,
    model_blob_key,
    store_model_version,
)
from coordinator.results.service import (
    MetricValue,
    record_federation_metrics,
    record_task_metrics,
)
from coordinator.rounds import engine, service, state
from coordinator.rounds.followups import Followup
from coordinator.rounds.masked_sum import read_ring_slices, ring_bytes, sum_masked_range
from coordinator.rounds.models import (
    Participant,
    ParticipantStatus,
    Round,
    RoundStage,
    SliceState,
    UnmaskSlice,
)
from coordinator.runtime import Runtime
from federation.aggregation import ServerState, apply_sums
from federation.errors import FederationError
from federation.layout import ParameterLayout
from federation.metrics import federation_metrics
from federation.round_api import TrainingReport, update_codec
from privacy.secagg import MaskedInput, SecAggError, ring_dtype, unmask_slice

logger = logging.getLogger(__name__)


def _slice_blob_key(federation: Federation, round_: Round, index: int) -> str:
    return f"rounds/{federation.name}/{round_.number:06d}/sum/{index:06d}.bin"


def _server_state_key(federation: Federation, version: int) -> str:
    return f"models/{federation.name}/v{version:06d}.server-state"


def unmask_one_slice(runtime: Runtime, round_id: int, index: int) -> list[Followup]:
    """Unmask slice `index` of the round, unless it is done or another worker holds it."""
    settings, blobs = runtime.settings, runtime.blobs
    now = utcnow()
    with runtime.db.scope() as session:
        taken = session.execute(
            sa.update(UnmaskSlice)
            .where(
                UnmaskSlice.round_id == round_id,
                UnmaskSlice.index == index,
                UnmaskSlice.state == SliceState.PENDING,
                sa.or_(UnmaskSlice.lease_expires_at.is_(None), UnmaskSlice.lease_expires_at <= now),
            )
            .values(
                lease_expires_at=now + timedelta(seconds=settings.slice_lease_s),
                attempts=UnmaskSlice.attempts + 1,
            )
        )
        session.commit()
        if getattr(taken, "rowcount", 0) != 1:
            return []
        round_ = session.get_one(Round, round_id)
        if round_.stage is not RoundStage.AGGREGATING:
            return []
        federation = session.get_one(Federation, round_.federation_id)
        slice_row = session.scalars(
            sa.select(UnmaskSlice).where(
                UnmaskSlice.round_id == round_id, UnmaskSlice.index == index
            )
        ).one()
        start, stop = int(slice_row.start), int(slice_row.stop)
        plan = state.unmask_plan(session, round_)
        uploads = state.uploaders(session, round_)
        keys = [uploads[pid].blob_key for pid in plan.survivors]
        key = _slice_blob_key(federation, round_, index)
        subject = state.subject(federation, round_)
    total = np.zeros(stop - start, dtype=ring_dtype(plan.bits))
    first, _ = MaskedInput.byte_range(start, stop, plan.bits)
    # Each survivor's range read once into a reused buffer and added in place (mod 2^k).
    sum_masked_range(blobs, keys, first, total)
    unmask_slice(plan, total, start, stop, in_place=True)
    content = ring_bytes(total)
    ref = blobs.write(key, [content], max_size=len(content), expected_size=len(content))
    with runtime.db.scope() as session:
        locked = state.lock_round(session, round_id)
        if locked is None or locked.stage is not RoundStage.AGGREGATING:
            return []
        row = session.scalars(
            sa.select(UnmaskSlice).where(
                UnmaskSlice.round_id == round_id, UnmaskSlice.index == index
            )
        ).one()
        if row.state is SliceState.PENDING:
            row.state = SliceState.DONE
            row.blob_key = ref.key
            row.sha256 = ref.sha256
            row.finished_at = utcnow()
            audit.record(
                session,
                audit.SYSTEM,
                AuditAction.ROUND_SLICE_UNMASKED,
                subject,
                {"slice": index, "start": start, "stop": stop, "sha256": ref.sha256},
            )
        pending = session.scalar(
            sa.select(sa.func.count())
            .select_from(UnmaskSlice)
            .where(UnmaskSlice.round_id == round_id, UnmaskSlice.state == SliceState.PENDING)
        )
        session.commit()
    if pending:
        return []
    # The worker that stored the last slice finishes the round itself, as the request that
    # brings a stage's last message closes it: no hand-off through the broker. (`finish` runs
    # once: it locks the round and checks its stage; the tick's FINISH_TASK stays the way
    # back for a round whose last slice worker died before this.)
    return finish(runtime, round_id)


def finish(runtime: Runtime, round_id: int) -> list[Followup]:
    """Decode the sum, store the next model version, record results and spend, complete."""
    blobs = runtime.blobs
    with runtime.db.scope() as session:
        round_ = state.lock_round(session, round_id)
        if round_ is None or round_.stage is not RoundStage.AGGREGATING:
            return []
        slices = session.scalars(
            sa.select(UnmaskSlice)
            .where(UnmaskSlice.round_id == round_id)
            .order_by(UnmaskSlice.index)
        ).all()
        if any(s.state is not SliceState.DONE for s in slices):
            return []
        federation = session.get_one(Federation, round_.federation_id)
        spec = federation.spec
        config = state.round_config(session, round_)
        plan = state.unmask_plan(session, round_)
        # Each slice read straight into its place in the sum: no per-slice arrays, no concat.
        total = np.empty(config.vector_length, dtype=ring_dtype(config.bits))
        read_ring_slices(blobs, [(s.blob_key or "", s.start, s.stop) for s in slices], total)
        base = round_.base_version or 0
        try:
            sums = update_codec(spec, config.n).decode_sum(total).segments
            base_row = get_version(session, federation.name, base)
            global_vector = np.frombuffer(
                blobs.read_range(base_row.blob_key, 0, base_row.size_bytes), dtype="<f4"
            ).astype(np.float64)
            server_state = ServerState()
            if spec.aggregation.strategy.keeps_state:
                try:
                    ref = blobs.stat(_server_state_key(federation, base))
                    server_state = ServerState.from_bytes(
                        blobs.read_range(ref.key, 0, ref.size), global_vector.shape[0]
                    )
                except BlobNotFound:
                    server_state = ServerState()
            new_vector, new_state, report = apply_sums(spec, global_vector, sums, server_state)
            found = federation_metrics(spec, sums)
        except (SecAggError, FederationError) as exc:
            followups = engine.fail(session, round_, f"aggregating: {exc}")
            session.commit()
            return followups
        version = (latest_version_number(session, federation) or 0) + 1
        content = new_vector.astype("<f4").tobytes()
        blob = blobs.write(
            model_blob_key(federation, version),
            [content],
            max_size=len(content),
            expected_size=len(content),
        )
        if spec.aggregation.strategy.keeps_state:
            state_bytes = new_state.to_bytes()
            blobs.write(
                _server_state_key(federation, version),
                [state_bytes],
                max_size=len(state_bytes),
                expected_size=len(state_bytes),
            )
        store_model_version(
            session,
            federation,
            version=version,
            blob=blob,
            layout_fingerprint=ParameterLayout.model(spec).fingerprint,
            actor=audit.SYSTEM,
            round_id=round_.id,
        )
        survivors = set(plan.survivors)
        _record_results(session, round_, survivors)
        record_federation_metrics(session, round_, found)
        for participant in round_.participants:
            if participant.secagg_id in survivors:
                participant.status = ParticipantStatus.COMPLETED
        service.enter_stage(
            session,
            round_,
            RoundStage.COMPLETED,
            actor=audit.SYSTEM,
            responders=len(survivors),
        )
        # The plan's seeds with one stored upload would unmask more than the sum: drop both.
        engine.purge_unmask_secrets(session, round_)
        keys = state.round_blob_keys(session, round_.id)
        session.commit()
        logger.info(
            "round %s completed: model version %s (parts updated: %s)",
            round_id,
            version,
            ", ".join(report.updated_parts),
        )
    engine.delete_round_blobs(blobs, keys)
    return []


def _record_results(session: sa.orm.Session, round_: Round, survivors: set[int]) -> None:
    """The metrics survivors that opted in sent in clear, and any spend not yet on record
    (spends are recorded when their report arrives; a report stored by an older version
    is recorded here). Each institution's records are one savepoint: whatever goes wrong
    with them is logged and rolled back alone, and never keeps the round from completing."""
    reports = state.training_reports(session, round_)
    by_id = {p.id: p for p in round_.participants}
    for participant_id, report in sorted(reports.items()):
        participant = by_id[participant_id]
        try:
            with session.begin_nested():
                _record_one(session, round_, participant, report, survivors)
        except Exception:  # isolated on purpose: completion must not depend on it
            logger.exception(
                "round %s: the report of participant %s was not recorded",
                round_.id,
                participant.secagg_id,
            )


def _record_one(
    session: sa.orm.Session,
    round_: Round,
    participant: Participant,
    report: TrainingReport,
    survivors: set[int],
) -> None:
    institution = session.get_one(Institution, participant.institution_id)
    actor = audit.Actor(audit.ActorKind.INSTITUTION, str(institution.id))
    spend = report.spend
    if spend is not None and not session.scalar(
        sa.select(PrivacySpend.id).where(
            PrivacySpend.round_id == round_.id, PrivacySpend.institution_id == institution.id
        )
    ):
        record_spend(
            session,
            round_,
            institution,
            SpendReport.from_wire(spend),
            actor=actor,
        )
    if participant.secagg_id not in survivors:
        return
    values = [
        MetricValue(task, metric, value)
        for task, task_report in sorted(report.tasks.items())
        for metric, value in sorted(task_report.metrics.items())
    ]
    if values:
        record_task_metrics(session, round_, values, actor=actor, institution=institution)
