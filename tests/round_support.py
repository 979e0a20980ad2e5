"""Round-test helpers shared by unit and integration tests: a trivial `LocalWork`.

`FixedDeltaWork` "trains" by adding a fixed vector to the global model, so a test knows
exactly what each agent contributes and can compute the aggregate the coordinator must store;
its validation statistics come from a small made-up split per task held, so a test also
knows the federation-wide metrics the coordinator must record (`expected_metrics`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from agent.local_work import Decision, LocalResult
from federation import metrics
from federation.aggregation import Contribution, apply_sums, local_contribution
from federation.layout import ParameterLayout
from federation.round_api import RoundAssignment, SpendReport
from federation.spec import FederationSpec, TaskKind


@dataclass
class FixedDeltaWork:
    """Local work whose update is `delta` (model layout) on the tasks in `labelled`."""

    spec: FederationSpec
    delta: NDArray[np.float64]
    labelled: dict[str, int]
    train_samples: int = 10
    decline_reason: str | None = None
    accuracy: float = 0.75
    #: Send its own metrics in clear, as an institution that opted in.
    share_own_metrics: bool = False
    seed: int = 0
    #: What its spend report says (a test may make it absurd, or another δ than the spec's).
    noise_multiplier: float = 1.1
    spend_delta: float = 1e-5
    trained: list[int] = field(default_factory=list)  # round numbers trained

    def statistics(self) -> dict[str, metrics.Statistics]:
        """Validation statistics of a made-up split of 20 samples per task held."""
        rng = np.random.default_rng(self.seed)
        out = {}
        for name, count in self.labelled.items():
            if count <= 0:
                continue
            task = self.spec.task(name)
            outputs = rng.normal(0.0, 2.0, (20, task.output_dim))
            if task.kind is TaskKind.REGRESSION:
                labels = rng.normal(0.0, 1.0, 20)
            else:
                labels = rng.integers(0, 2 if task.kind is TaskKind.BINARY else task.output_dim, 20)
            out[name] = metrics.evaluate(task, outputs, labels, rng.uniform(0.0, 2.0, 20))
        return out

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
            statistics=self.statistics(),
        )

    def train(self, assignment: RoundAssignment, global_vector: NDArray[np.float64]) -> LocalResult:
        self.trained.append(assignment.round)
        tasks = [task for task, count in self.labelled.items() if count > 0]
        return LocalResult(
            contribution=self.contribution(global_vector),
            metrics={task: {"accuracy": self.accuracy} for task in tasks}
            if self.share_own_metrics
            else {},
            spend=SpendReport(
                noise_multiplier=self.noise_multiplier,
                sample_rate=0.01,
                steps=100,
                delta=self.spend_delta,
                epsilon=0.5,
                accountant="rdp",
                run_id=secrets.token_urlsafe(12),  # a fresh training run each time
            ),
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


def expected_metrics(
    spec: FederationSpec, works: Sequence[FixedDeltaWork]
) -> dict[str, metrics.TaskMetrics]:
    """The federation-wide metrics of the works' pooled validation statistics."""
    per_work = [work.statistics() for work in works]
    return {
        task.name: metrics.task_metrics(
            task, metrics.pooled(task, [s[task.name] for s in per_work if task.name in s])
        )
        for task in spec.tasks
    }
