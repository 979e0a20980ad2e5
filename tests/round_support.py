"""Round-test helpers shared by unit and integration tests: a trivial `LocalWork`.

`FixedDeltaWork` "trains" by adding a fixed vector to the global model, so a test knows
exactly what each agent contributes and can compute the aggregate the coordinator must store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from agent.local_work import Decision, LocalResult
from federation.aggregation import Contribution, apply_sums, local_contribution
from federation.layout import ParameterLayout
from federation.round_api import RoundAssignment, SpendReport
from federation.spec import FederationSpec


@dataclass
class FixedDeltaWork:
    """Local work whose update is `delta` (model layout) on the tasks in `labelled`."""

    spec: FederationSpec
    delta: NDArray[np.float64]
    labelled: dict[str, int]
    train_samples: int = 10
    decline_reason: str | None = None
    accuracy: float = 0.75
    trained: list[int] = field(default_factory=list)  # round numbers trained

    def decide(self, assignment: RoundAssignment) -> Decision:
        if self.decline_reason is not None:
            return Decision.decline(self.decline_reason)
        return Decision.accept()

    def contribution(self, global_vector: NDArray[np.float64]) -> Contribution:
        return local_contribution(
            self.spec,
            global_vector,
            global_vector + self.delta,
            train_samples=self.train_samples,
            labelled=self.labelled,
        )

    def train(self, assignment: RoundAssignment, global_vector: NDArray[np.float64]) -> LocalResult:
        self.trained.append(assignment.round)
        tasks = [task for task, count in self.labelled.items() if count > 0]
        return LocalResult(
            contribution=self.contribution(global_vector),
            metrics={task: {"accuracy": self.accuracy} for task in tasks},
            spend=SpendReport(
                noise_multiplier=1.1,
                sample_rate=0.01,
                steps=100,
                delta=1e-5,
                epsilon=0.5,
                accountant="rdp",
            ),
            n_validation=dict.fromkeys(tasks, 20),
            train_samples=self.train_samples,
        )


def small_deltas(
    spec: FederationSpec, count: int, seed: int = 0, scale: float = 0.01
) -> list[NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    length = ParameterLayout.model(spec).length
    return [rng.normal(0.0, scale, length) for _ in range(count)]


def expected_model(
    spec: FederationSpec,
    global_vector: NDArray[np.float64],
    works: Sequence[FixedDeltaWork],
) -> NDArray[np.float64]:
    """The next model from the exact (unencoded) sum of the works' contributions."""
    layout = ParameterLayout.update(spec)
    total = np.zeros(layout.length)
    for work in works:
        total += work.contribution(global_vector).vector(layout)
    sums: Mapping[str, NDArray[np.generic]] = {
        s.name: (
            total[s.offset : s.end]
            if s.kind.value == "float"
            else np.rint(total[s.offset : s.end]).astype(np.int64)
        )
        for s in layout.segments
    }
    new, _, _ = apply_sums(spec, global_vector, sums)
    return new
