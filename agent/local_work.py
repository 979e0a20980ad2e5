"""The contract between the round driver and the institution's local work.

`RoundParticipant` (the driver, agent/round_participant.py) asks a `LocalWork` whether to
join a round (`Decision`) and, once the round's shares are in, to train (`LocalResult`).
`agent.work.AgentWork` is the production implementation; tests and benchmarks bring their
own. Keeping the contract apart from the driver lets them import it without the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from agent.coordinator_client import ClientError
from federation.aggregation import Contribution
from federation.round_api import RoundAssignment, SpendReport


@dataclass(frozen=True)
class Decision:
    """Whether to take part in a round; a decline carries its reason (e.g. "budget")."""

    join: bool
    reason: str | None = None

    @classmethod
    def accept(cls) -> Decision:
        return cls(True)

    @classmethod
    def decline(cls, reason: str) -> Decision:
        return cls(False, reason)


@dataclass(frozen=True)
class LocalResult:
    """What local training produced for one round."""

    #: The update segments, weight counters and validation statistics (masked and summed).
    contribution: Contribution
    #: What is sent in clear besides the spend: task -> metric -> value of the global model
    #: on the local validation split, where the institution opted in; else empty.
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    spend: SpendReport | None = None


class LocalWork(Protocol):
    """The institution's side of a round: whether to join, and the local training."""

    def decide(self, assignment: RoundAssignment) -> Decision: ...

    def train(
        self, assignment: RoundAssignment, global_vector: NDArray[np.float64]
    ) -> LocalResult: ...


class CannotContinue(ClientError):
    """This agent cannot go on with the round (it leaves it and says why)."""
