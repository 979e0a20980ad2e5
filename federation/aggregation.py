"""How one agent's training becomes its aggregation input, and how sums become a model.

Both halves live here so that the in-process benchmark, the agent and the coordinator run
the very same arithmetic (the service adds security, not error).

Agent side — `local_contribution`: for each aggregated part (encoder, each head) the agent
puts `w · clip(local − global)` in the float segment and `w` in the part's counter, where
`w` is 0 for a task it holds no labels for, else 1 (`participation`) or its number of
labelled samples (`samples`, capped at the counter bound), and its validation statistics
(`federation.metrics`, zeros for a task it did not evaluate) in their segments. Secure
aggregation then yields only Σ w·Δ and Σ w per part, and the statistics' sums.

Coordinator side — `apply_sums`: the averaged update of a part is Σ w·Δ / Σ w (a part
nobody trained stays as it was), and the strategy applies it: FedAvg adds it times the
server learning rate; FedAvgM adds a server momentum of it (Hsu et al. 2019, "Measuring
the Effects of Non-Identical Data Distribution"; McMahan et al. 2018 use it for DP-FedAvg);
FedAdam and FedYogi (Reddi et al. 2021, Alg. 2) treat it as a pseudo-gradient with
server-side moments. The moments live in `ServerState`; only coordinates of parts someone
trained this round move them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from federation.errors import AggregationError
from federation.layout import COUNT_PREFIX, ENCODER, HEAD_PREFIX, ParameterLayout, SegmentKind
from federation.metrics import Statistics, to_segments
from federation.spec import CounterWeighting, FederationSpec, Strategy

FloatVector = NDArray[np.float64]


def counter_name(part: str) -> str:
    return COUNT_PREFIX + (ENCODER if part == ENCODER else part[len(HEAD_PREFIX) :])


def update_clip(spec: FederationSpec) -> float:
    """The float clipping range of update segments as secure aggregation must encode them.

    Δ is clipped to `secagg.clip_range` and then multiplied by a weight of at most the
    counter bound, so the encoded float values lie within clip_range × bound.
    """
    layout = ParameterLayout.update(spec)
    bound = layout.counter_segments[0].bound
    return spec.secagg.clip_range * bound


@dataclass(frozen=True)
class Contribution:
    """One agent's aggregation input, by update-layout segment, and what was clipped."""

    segments: dict[str, NDArray[np.generic]]
    clipped: int

    def vector(self, layout: ParameterLayout) -> FloatVector:
        out = layout.join(self.segments, dtype=np.float64)
        return out.astype(np.float64)


def local_contribution(
    spec: FederationSpec,
    global_vector: FloatVector,
    local_vector: FloatVector,
    *,
    train_samples: int,
    labelled: Mapping[str, int],
    statistics: Mapping[str, Statistics] | None = None,
) -> Contribution:
    """The update-layout segments of one agent after local training.

    `labelled[task]` is the number of training samples labelled for that task (0 or absent:
    the agent does not hold it and contributes zeros to that head and its counter).
    `statistics[task]` are the task's validation statistics of the global model
    (`federation.metrics.evaluate`); a task absent there contributes zeros.
    """
    model_layout = ParameterLayout.model(spec)
    update_layout = ParameterLayout.update(spec)
    model_layout.check(global_vector)
    model_layout.check(local_vector)
    unknown = [t for t in labelled if t not in spec.task_names]
    if unknown:
        raise AggregationError(f"unknown tasks {unknown} (federation has {spec.task_names})")
    bound = update_layout.counter_segments[0].bound
    samples = spec.aggregation.counter_weighting is CounterWeighting.SAMPLES
    clip = spec.secagg.clip_range
    segments: dict[str, NDArray[np.generic]] = {}
    clipped = 0
    for segment in update_layout.float_segments:
        part = segment.name
        count = train_samples if part == ENCODER else labelled.get(part[len(HEAD_PREFIX) :], 0)
        weight = 0 if count <= 0 else (min(count, bound) if samples else 1)
        m = model_layout.segment(part)
        delta = local_vector[m.offset : m.end] - global_vector[m.offset : m.end]
        if weight:
            clipped += int(np.count_nonzero(np.abs(delta) > clip))
            values = np.clip(delta, -clip, clip) * float(weight)
        else:
            values = np.zeros(m.length)
        segments[part] = values
        segments[counter_name(part)] = np.array([weight], dtype=np.int64)
    segments.update(to_segments(spec, statistics or {}))
    return Contribution(segments, clipped)


@dataclass
class ServerState:
    """Server-optimizer state carried between rounds: first and second moments (FedAvgM
    uses the first only, FedAvg none)."""

    m: FloatVector | None = None
    v: FloatVector | None = None

    def to_bytes(self) -> bytes:
        if self.m is None:
            return b""
        v = self.v if self.v is not None else np.zeros_like(self.m)
        return np.concatenate([self.m, v]).astype("<f8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, length: int) -> ServerState:
        if not data:
            return cls()
        both = np.frombuffer(data, dtype="<f8")
        if both.shape[0] != 2 * length:
            raise AggregationError("server optimizer state does not fit the model layout")
        return cls(both[:length].copy(), both[length:].copy())


@dataclass(frozen=True)
class AggregateReport:
    """What the sums said: the total weight behind each part, and which parts moved."""

    weights: dict[str, float] = field(default_factory=dict)

    @property
    def updated_parts(self) -> tuple[str, ...]:
        return tuple(part for part, weight in self.weights.items() if weight > 0)


def average_update(
    spec: FederationSpec, sums: Mapping[str, NDArray[np.generic]]
) -> tuple[FloatVector, AggregateReport]:
    """Σ w·Δ / Σ w per part, as a model-layout vector (zeros where Σ w = 0)."""
    model_layout = ParameterLayout.model(spec)
    update_layout = ParameterLayout.update(spec)
    # The validation statistics may come along (a decoded round sum) or not (in-process).
    needed = {s.name for s in (*update_layout.float_segments, *update_layout.counter_segments)}
    known = {s.name for s in update_layout.segments}
    if not needed <= set(sums) <= known:
        raise AggregationError(
            f"sums have segments {sorted(sums)}, the update layout needs {sorted(needed)}"
        )
    average = model_layout.zeros()
    weights: dict[str, float] = {}
    for segment in update_layout.float_segments:
        total = np.asarray(sums[segment.name], dtype=np.float64)
        weight_arr = np.asarray(sums[counter_name(segment.name)])
        if total.shape != (segment.length,) or weight_arr.shape != (1,):
            raise AggregationError(f"sum of '{segment.name}' has the wrong shape")
        if not np.all(np.isfinite(total)):
            raise AggregationError(f"sum of '{segment.name}' holds NaN or Inf")
        weight = float(weight_arr[0])
        if weight < 0:
            raise AggregationError(f"counter of '{segment.name}' is negative ({weight})")
        weights[segment.name] = weight
        if weight > 0:
            m = model_layout.segment(segment.name)
            np.divide(total, weight, out=average[m.offset : m.end])
    return average, AggregateReport(weights)


def apply_sums(
    spec: FederationSpec,
    global_vector: FloatVector,
    sums: Mapping[str, NDArray[np.generic]],
    state: ServerState | None = None,
) -> tuple[FloatVector, ServerState, AggregateReport]:
    """The next global model from the previous one and the round's decoded sums."""
    model_layout = ParameterLayout.model(spec)
    model_layout.check(global_vector)
    update, report = average_update(spec, sums)
    agg = spec.aggregation
    state = state or ServerState()
    if agg.strategy is Strategy.FEDAVG:
        # In place on the fresh average: no temporaries of the model's size.
        update *= agg.server_lr
        update += global_vector
        return update, state, report
    # Only coordinates of parts someone trained this round take a step or move a moment.
    mask = np.zeros(model_layout.length, dtype=bool)
    for part in report.updated_parts:
        s = model_layout.segment(part)
        mask[s.offset : s.end] = True
    m = state.m if state.m is not None else model_layout.zeros()
    v = state.v if state.v is not None else model_layout.zeros()
    if agg.strategy is Strategy.FEDAVGM:
        m = np.where(mask, agg.server_momentum * m + update, m)
        step = np.where(mask, agg.server_lr * m, 0.0)
        return global_vector + step, ServerState(m, v), report
    m = np.where(mask, agg.adam_beta1 * m + (1 - agg.adam_beta1) * update, m)
    squared = update**2
    if agg.strategy is Strategy.FEDYOGI:
        # Yogi: v moves towards Δ² additively, by at most (1 - β2)Δ² per round.
        v = np.where(mask, v - (1 - agg.adam_beta2) * squared * np.sign(v - squared), v)
    else:
        v = np.where(mask, agg.adam_beta2 * v + (1 - agg.adam_beta2) * squared, v)
    step = np.where(mask, agg.server_lr * m / (np.sqrt(v) + agg.adam_tau), 0.0)
    return global_vector + step, ServerState(m, v), report


__all__ = [
    "AggregateReport",
    "Contribution",
    "SegmentKind",
    "ServerState",
    "apply_sums",
    "average_update",
    "counter_name",
    "local_contribution",
    "update_clip",
]
