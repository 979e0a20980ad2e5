"""The flat parameter layout: one vector of named segments that both sides agree on.

Two layouts come out of a `FederationSpec`, both computed from the spec alone (no torch), so
the coordinator and every agent agree on every coordinate without exchanging anything:

- the **model layout** — the global model's parameters: `encoder`, then `head.<task>` for
  every task, in the spec's task order. Model versions are stored as this vector (float32).
- the **update layout** — what one agent contributes to secure aggregation each round
  (DESIGN.md, "One round", step 4): the encoder update, the update of each aggregated head,
  and one integer weight counter per aggregated part (`count.encoder`, `count.<task>`). An
  agent without a task contributes zeros to that head *and* its counter, masked like
  everything else, so per-task averages come out of the sum without any plain counts.
  Under FedPer personalisation (`personalisation.mode = "fedper"`) the heads stay
  local and only the encoder is aggregated.
  Then, for every task, the validation statistics of `federation.metrics`
  (`metric.<task>.<statistic>`: exact counts and fixed-point sums), from which the
  coordinator computes federation-wide metrics without any institution's own.

Within a segment the parameters are flattened in the order `torch.nn.Module.parameters()`
yields them for that part of the model (`federation.model` checks this on every load).
A layout's fingerprint names it; a vector made for another layout is refused.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Final

import numpy as np
from numpy.typing import NDArray

from federation.encoders import linear_stack_size
from federation.errors import LayoutMismatch
from federation.metrics import StatisticKind, statistics
from federation.spec import CounterWeighting, FederationSpec, TaskSpec

ENCODER: Final = "encoder"
HEAD_PREFIX: Final = "head."
COUNT_PREFIX: Final = "count."

#: Largest value a weight counter holds with `counter_weighting = participation`: each
#: institution counts once.
PARTICIPATION_COUNTER_MAX: Final = 1
#: With `counter_weighting = samples` a counter holds the number of labelled samples; this
#: bounds it (an agent with more samples reports this many: its weight saturates).
SAMPLES_COUNTER_MAX: Final = 1_000_000


class SegmentKind(enum.StrEnum):
    FLOAT = "float"  # a model part's update
    COUNTER = "counter"  # a model part's weight
    STATISTIC_COUNT = "statistic_count"  # validation counts: integers in [0, bound]
    STATISTIC_SUM = "statistic_sum"  # validation sums: reals in [-bound, bound]


@dataclass(frozen=True)
class Segment:
    """A named, contiguous run of coordinates: `[offset, offset + length)`."""

    name: str
    kind: SegmentKind
    offset: int
    length: int
    #: For a counter or a statistic: the largest absolute value one participant may put in
    #: each coordinate.
    bound: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def part(self) -> str:
        """The model part a segment belongs to: `encoder` or `head.<task>`."""
        if self.name.startswith(COUNT_PREFIX):
            rest = self.name[len(COUNT_PREFIX) :]
            return ENCODER if rest == ENCODER else HEAD_PREFIX + rest
        return self.name


def encoder_size(spec: FederationSpec) -> int:
    """Parameters of the shared encoder, whatever its kind (from the spec alone)."""
    return spec.model.encoder.parameter_count()


def head_size(spec: FederationSpec, task: TaskSpec) -> int:
    widths = (spec.model.encoder.output_dim, *spec.model.head.hidden, task.output_dim)
    return linear_stack_size(widths)


class ParameterLayout:
    """An ordered tuple of segments covering `[0, length)` without gaps."""

    def __init__(self, kind: str, segments: Sequence[Segment]) -> None:
        offset = 0
        names: set[str] = set()
        for segment in segments:
            if segment.offset != offset or segment.length < 1:
                raise ValueError(f"segment '{segment.name}' leaves a gap or is empty")
            if segment.name in names:
                raise ValueError(f"segment '{segment.name}' appears twice")
            names.add(segment.name)
            offset = segment.end
        self.kind = kind
        self.segments: tuple[Segment, ...] = tuple(segments)
        self.length = offset
        self._by_name = {segment.name: segment for segment in self.segments}

    # -- construction -----------------------------------------------------------------

    @classmethod
    def model(cls, spec: FederationSpec) -> ParameterLayout:
        """The global model's parameters: encoder, then every task's head."""
        sizes = [(ENCODER, encoder_size(spec))]
        sizes += [(HEAD_PREFIX + task.name, head_size(spec, task)) for task in spec.tasks]
        return cls("model", _float_segments(sizes))

    @classmethod
    def update(cls, spec: FederationSpec) -> ParameterLayout:
        """One agent's secure-aggregation input: float updates, weight counters, then the
        validation statistics of every task."""
        parts = [ENCODER]
        if spec.heads_aggregated:
            parts += [HEAD_PREFIX + task.name for task in spec.tasks]
        model = cls.model(spec)
        floats = _float_segments([(part, model.segment(part).length) for part in parts])
        bound = (
            SAMPLES_COUNTER_MAX
            if spec.aggregation.counter_weighting is CounterWeighting.SAMPLES
            else PARTICIPATION_COUNTER_MAX
        )
        offset = floats[-1].end
        counters = []
        for part in parts:
            suffix = ENCODER if part == ENCODER else part[len(HEAD_PREFIX) :]
            counters.append(Segment(COUNT_PREFIX + suffix, SegmentKind.COUNTER, offset, 1, bound))
            offset += 1
        stats = []
        for statistic in statistics(spec):
            kind = (
                SegmentKind.STATISTIC_COUNT
                if statistic.kind is StatisticKind.COUNT
                else SegmentKind.STATISTIC_SUM
            )
            stats.append(
                Segment(statistic.segment, kind, offset, statistic.length, statistic.bound)
            )
            offset += statistic.length
        return cls("update", [*floats, *counters, *stats])

    # -- queries ----------------------------------------------------------------------

    def segment(self, name: str) -> Segment:
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(self._by_name)
            raise KeyError(f"the {self.kind} layout has no segment '{name}' ({known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def float_segments(self) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.kind is SegmentKind.FLOAT)

    @property
    def counter_segments(self) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.kind is SegmentKind.COUNTER)

    @property
    def statistic_segments(self) -> tuple[Segment, ...]:
        return tuple(
            s
            for s in self.segments
            if s.kind in (SegmentKind.STATISTIC_COUNT, SegmentKind.STATISTIC_SUM)
        )

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 over kind and every (name, kind, offset, length, bound)."""
        text = (
            self.kind
            + "|"
            + ";".join(
                f"{s.name}:{s.kind.value}:{s.offset}:{s.length}:{s.bound}" for s in self.segments
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()

    # -- vectors ----------------------------------------------------------------------

    def check(self, vector: NDArray[np.generic], *, fingerprint: str | None = None) -> None:
        """Refuse a vector of another layout (by fingerprint or length) or a non-finite one."""
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise LayoutMismatch(
                f"vector was made for layout {fingerprint[:12]}, this {self.kind} layout is "
                f"{self.fingerprint[:12]}"
            )
        if vector.ndim != 1 or vector.shape[0] != self.length:
            raise LayoutMismatch(
                f"{self.kind} vector has shape {vector.shape}, the layout needs ({self.length},)"
            )
        if np.issubdtype(vector.dtype, np.floating) and not np.all(np.isfinite(vector)):
            raise LayoutMismatch(f"{self.kind} vector holds NaN or Inf")

    def split(self, vector: NDArray[np.generic]) -> dict[str, NDArray[np.generic]]:
        """Views of each segment of a vector of this layout."""
        self.check(vector)
        return {s.name: vector[s.offset : s.end] for s in self.segments}

    def join(
        self, parts: Mapping[str, NDArray[np.generic]], dtype: type[np.generic] = np.float64
    ) -> NDArray[np.generic]:
        """One vector from every segment's values (missing or extra segments are refused)."""
        missing = [s.name for s in self.segments if s.name not in parts]
        extra = [name for name in parts if name not in self._by_name]
        if missing or extra:
            raise LayoutMismatch(f"segments missing: {missing}, unknown: {extra}")
        out = np.empty(self.length, dtype=dtype)
        for s in self.segments:
            values = np.asarray(parts[s.name]).reshape(-1)
            if values.shape[0] != s.length:
                raise LayoutMismatch(
                    f"segment '{s.name}' has {values.shape[0]} values, the layout needs {s.length}"
                )
            out[s.offset : s.end] = values
        return out

    def zeros(self) -> NDArray[np.float64]:
        return np.zeros(self.length, dtype=np.float64)


def _float_segments(sizes: Sequence[tuple[str, int]]) -> list[Segment]:
    segments = []
    offset = 0
    for name, length in sizes:
        segments.append(Segment(name, SegmentKind.FLOAT, offset, length))
        offset += length
    return segments
