"""What the coordinator's Celery tasks do, as plain functions of the runtime.

`coordinator.worker` wraps them as Celery tasks and sends the `Followup`s they return once
their transaction has committed; keeping the work here means it can be called and tested
without a broker. Every function works from database state alone and is safe to run twice
or concurrently (the round row is locked while a stage closes; slices are leased).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa

from coordinator.audit import checkpoints
from coordinator.audit import service as audit
from coordinator.auth.signatures import purge_expired_nonces
from coordinator.db import utcnow
from coordinator.errors import CoordinatorError
from coordinator.federations.models import Federation
from coordinator.rounds import aggregation, engine, state
from coordinator.rounds.followups import Followup
from coordinator.rounds.models import TERMINAL_STAGES, Round
from coordinator.rounds.service import overdue_rounds
from coordinator.runtime import Runtime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickReport:
    nonces_purged: int
    overdue_rounds: tuple[int, ...]  # round ids past their stage deadline
    started_rounds: tuple[int, ...] = ()
    #: The number of the audit checkpoint this tick signed, if it signed one.
    checkpoint: int | None = None
    followups: tuple[Followup, ...] = field(default=(), repr=False)


def tick(runtime: Runtime) -> TickReport:
    """Periodic housekeeping from database state alone (safe to run twice, or concurrently).

    Forgets signature nonces that can no longer be replayed; advances every open round
    (closing stages past their deadline, re-sending unmasking slices whose worker died);
    starts the rounds of federations with a `round_interval_s` schedule; signs an audit
    checkpoint when the log grew and the last one is `audit_checkpoint_interval_s` old.
    """
    followups: list[Followup] = []
    with runtime.db.scope() as session:
        purged = purge_expired_nonces(session)
        overdue = tuple(round_.id for round_ in overdue_rounds(session))
        open_ids = state.open_round_ids(session)
    for round_id in open_ids:
        followups += advance_round(runtime, round_id)
    started = _scheduled_starts(runtime, followups)
    if overdue:
        logger.info("rounds past their stage deadline: %s", overdue)
    return TickReport(
        nonces_purged=purged,
        overdue_rounds=overdue,
        started_rounds=started,
        checkpoint=sign_audit_checkpoint(runtime),
        followups=tuple(followups),
    )


def sign_audit_checkpoint(runtime: Runtime) -> int | None:
    """Sign the next audit checkpoint if one is due (`coordinator.audit.checkpoints`)."""
    try:
        with runtime.db.scope() as session:
            signed = checkpoints.sign_checkpoint(
                session,
                runtime.signing_key,
                min_interval_s=runtime.settings.audit_checkpoint_interval_s,
            )
    except sa.exc.IntegrityError:  # another process signed the same number first
        return None
    except Exception:  # never let it stop the tick's round work
        logger.exception("audit checkpoint not signed")
        return None
    return None if signed is None else signed.number


def _scheduled_starts(runtime: Runtime, followups: list[Followup]) -> tuple[int, ...]:
    started = []
    now = utcnow()
    with runtime.db.scope() as session:
        federations = session.scalars(sa.select(Federation).order_by(Federation.id)).all()
        due = []
        for federation in federations:
            interval = federation.spec.schedule.round_interval_s
            if interval is None:
                continue
            if federation.next_round_at is None:
                federation.next_round_at = now
            if federation.next_round_at > now:
                continue
            busy = session.scalar(
                sa.select(Round.id).where(
                    Round.federation_id == federation.id, Round.stage.not_in(TERMINAL_STAGES)
                )
            )
            if busy is None:
                due.append(federation.name)
                federation.next_round_at = now + timedelta(seconds=interval)
        session.commit()
        for name in due:
            try:
                round_, more = engine.start_round(
                    session,
                    runtime.blobs,
                    runtime.settings,
                    name,
                    actor=audit.SYSTEM,
                )
            except CoordinatorError as exc:
                session.rollback()
                logger.warning("scheduled round of '%s' not started: %s", name, exc.detail)
                continue
            started.append(round_.id)
            followups += more
    return tuple(started)


def advance_round(runtime: Runtime, round_id: int) -> list[Followup]:
    """Close the round's stage if it is complete or overdue (see `engine.advance`)."""
    try:
        with runtime.db.scope() as session:
            return engine.advance(session, runtime.settings, round_id)
    except CoordinatorError as exc:
        logger.warning("round %s cannot advance: %s", round_id, exc.detail)
        return []


def unmask_slice(runtime: Runtime, round_id: int, index: int) -> list[Followup]:
    return aggregation.unmask_one_slice(runtime, round_id, index)


def finish_round(runtime: Runtime, round_id: int) -> list[Followup]:
    return aggregation.finish(runtime, round_id)


def discard_round_blobs(runtime: Runtime, round_id: int) -> list[Followup]:
    """Delete a failed round's masked uploads and slices (see `engine.fail`)."""
    with runtime.db.scope() as session:
        count = engine.discard_failed_round_blobs(session, runtime.blobs, round_id)
    if count:
        logger.info("round %s failed: %d blobs deleted", round_id, count)
    return []
