"""What the coordinator's Celery tasks do, as plain functions of the runtime.

`coordinator.worker` wraps them as Celery tasks; keeping the work here means it can be
called and tested without a broker. The round engine adds its tasks (stage deadlines,
unmasking slices, applying the aggregate) beside `tick`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from coordinator.auth.signatures import purge_expired_nonces
from coordinator.rounds.service import overdue_rounds
from coordinator.runtime import Runtime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickReport:
    nonces_purged: int
    overdue_rounds: tuple[int, ...]  # round ids past their stage deadline


def tick(runtime: Runtime) -> TickReport:
    """Periodic housekeeping from database state alone (safe to run twice, or concurrently).

    Forgets signature nonces that can no longer be replayed, and finds rounds whose stage
    deadline has passed; closing those stages is the round engine's (it hooks in here).
    """
    with runtime.db.scope() as session:
        purged = purge_expired_nonces(session)
        overdue = tuple(round_.id for round_ in overdue_rounds(session))
    if overdue:
        logger.info("rounds past their stage deadline: %s", overdue)
    return TickReport(nonces_purged=purged, overdue_rounds=overdue)
