"""Follow-up tasks: what a round transaction asks the worker to do once it has committed.

The round modules (`protocol`, `engine`, `aggregation`) return `Followup`s instead of
sending Celery tasks themselves, so that a task never runs against a transaction that was
rolled back, and so that the round code stays free of the broker (`coordinator.worker`
sends them; `coordinator.tasks` runs them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

ADVANCE_TASK: Final = "fmtl.round.advance"
SLICE_TASK: Final = "fmtl.round.unmask_slice"
FINISH_TASK: Final = "fmtl.round.finish"
DISCARD_TASK: Final = "fmtl.round.discard_blobs"
#: Extra delay of a deadline's countdown task, so it runs after the deadline, not before.
DEADLINE_GRACE_S: Final = 0.5


@dataclass(frozen=True)
class Followup:
    """A Celery task to send after the transaction that asked for it has committed."""

    task: str
    args: tuple[int, ...]
    countdown: float | None = None


class FollowupSink(Protocol):
    """Where a request hands the follow-ups of its committed transaction (injected into the
    HTTP layer, which so never imports the worker: `coordinator.worker.FollowupDispatcher`)."""

    def send(self, followups: Sequence[Followup]) -> None: ...
