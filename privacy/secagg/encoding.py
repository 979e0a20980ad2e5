"""Fixed-point encoding of updates into Z_2^k, and decoding of their sums.

Secure aggregation adds integers mod 2^k, so each participant's update is encoded first.
The caller describes its vector as named segments, in order:

- `FloatSegment(name, length, clip)`: values are clipped to [-clip, clip] (the number of
  clipped coordinates is reported, never hidden), multiplied by a scale and rounded to an
  integer by *unbiased stochastic rounding* (round up with probability equal to the
  fractional part, so E[encode(x)] = scale·x and the sum's error has mean zero);
- `IntSegment(name, length, max_abs)`: integers with |value| <= max_abs (counters), encoded
  exactly; a value out of range is an error, not clipped.

Negative values are two's complement in Z_2^k. The scale comes from the bits k and the
maximum number of participants n: each float coordinate maps into [-M, M] with
M = min(floor((2^(k-1) - 1) / n), 2^53), and each int segment must satisfy
n·max_abs <= 2^(k-1) - 1, so the sum of up to n inputs never wraps and decodes exactly.
(2^53 bounds M because float64 holds integers exactly only up to there; with k = 64 that
is finer than the float inputs anyway.) A decoded float sum is within n/scale of the true
sum of the clipped inputs coordinate-wise, plus float64 rounding (`max_sum_error`), with zero
mean error.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from privacy.secagg.errors import InvalidArgument
from privacy.secagg.ring import RingVector, check_ring_vector, ring_dtype

FLOAT_EXACT_INT: Final = 2**53  # largest M such that every integer in [-M, M] is a float64
# Relative float64 rounding allowed per input in max_sum_error: a few units in the last place
# (2^-52) for scaling, decoding and the caller's own float sum.
FLOAT64_SLACK: Final = 2.0**-50
MAX_CLIP: Final = 1e12
MAX_SEGMENT_NAME: Final = 128


def _check_segment_header(name: object, length: object) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_SEGMENT_NAME:
        raise InvalidArgument(
            f"a segment name must be a string of 1 to {MAX_SEGMENT_NAME} characters"
        )
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise InvalidArgument(
            f"segment '{name}': the length must be a positive int, got {length!r}"
        )


@dataclass(frozen=True)
class FloatSegment:
    """Real values, clipped to [-clip, clip] and stochastically rounded."""

    name: str
    length: int
    clip: float

    def __post_init__(self) -> None:
        _check_segment_header(self.name, self.length)
        if not isinstance(self.clip, int | float) or not 0 < self.clip <= MAX_CLIP:
            raise InvalidArgument(
                f"segment '{self.name}': clip must be in (0, {MAX_CLIP:g}], got {self.clip!r}"
            )


@dataclass(frozen=True)
class IntSegment:
    """Integers with |value| <= max_abs (e.g. per-task weight counters), encoded exactly."""

    name: str
    length: int
    max_abs: int

    def __post_init__(self) -> None:
        _check_segment_header(self.name, self.length)
        if isinstance(self.max_abs, bool) or not isinstance(self.max_abs, int) or self.max_abs < 1:
            raise InvalidArgument(
                f"segment '{self.name}': max_abs must be a positive int, got {self.max_abs!r}"
            )


Segment = FloatSegment | IntSegment


@dataclass(frozen=True)
class EncodedUpdate:
    """An encoded update and, per float segment, how many coordinates were clipped."""

    vector: RingVector = field(repr=False)
    clipped: Mapping[str, int]

    @property
    def total_clipped(self) -> int:
        return sum(self.clipped.values())


@dataclass(frozen=True)
class DecodedSum:
    """A decoded sum per segment: float64 arrays for float segments, int64 for int ones."""

    segments: Mapping[str, NDArray[np.float64] | NDArray[np.int64]] = field(repr=False)

    def __getitem__(self, name: str) -> NDArray[np.float64] | NDArray[np.int64]:
        if name not in self.segments:
            raise InvalidArgument(f"no segment named '{name}' (have: {', '.join(self.segments)})")
        return self.segments[name]


class FixedPointCodec:
    """Encodes updates laid out as `segments` for aggregation in Z_2^bits of up to
    `max_participants` inputs, and decodes their sums."""

    def __init__(
        self, segments: Sequence[Segment], *, bits: int = 32, max_participants: int
    ) -> None:
        self._dtype = ring_dtype(bits)
        if not segments:
            raise InvalidArgument("a vector layout needs at least one segment")
        if (
            isinstance(max_participants, bool)
            or not isinstance(max_participants, int)
            or max_participants < 1
        ):
            raise InvalidArgument(
                f"max_participants must be a positive int, got {max_participants!r}"
            )
        names = [s.name for s in segments]
        if len(set(names)) != len(names):
            raise InvalidArgument("segment names must be distinct")
        self.bits = bits
        self.max_participants = max_participants
        self.segments: tuple[Segment, ...] = tuple(segments)
        limit = (2 ** (bits - 1) - 1) // max_participants
        self._float_bound = min(limit, FLOAT_EXACT_INT)
        if self._float_bound < 1:
            raise InvalidArgument(f"{bits} bits cannot sum {max_participants} inputs")
        self._offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for segment in self.segments:
            if isinstance(segment, IntSegment) and segment.max_abs > limit:
                raise InvalidArgument(
                    f"segment '{segment.name}': max_abs {segment.max_abs} times "
                    f"{max_participants} participants would wrap {bits}-bit sums "
                    f"(at most {limit} allowed)"
                )
            self._offsets[segment.name] = (offset, offset + segment.length)
            offset += segment.length
        self.length = offset

    def scale(self, segment: FloatSegment) -> float:
        """Integer units per unit of value: clip maps to M."""
        return float(self._float_bound / segment.clip)

    def resolution(self, name: str) -> float:
        """Value of one integer unit of float segment `name` (the rounding step)."""
        segment = self.segment(name)
        if not isinstance(segment, FloatSegment):
            raise InvalidArgument(f"segment '{name}' holds integers (resolution 1)")
        return 1.0 / self.scale(segment)

    def max_sum_error(self, name: str, participants: int) -> float:
        """Worst-case |decoded - exact| per coordinate of float segment `name`'s sum of
        `participants` inputs.

        Each input contributes less than one rounding step, plus float64 rounding of the
        scaling and decoding (FLOAT64_SLACK·clip per input, which only matters with k = 64,
        where the step is about as fine as float64 itself).
        """
        segment = self.segment(name)
        if not isinstance(segment, FloatSegment):
            raise InvalidArgument(f"segment '{name}' holds integers: its sums are exact")
        return participants * (self.resolution(name) + FLOAT64_SLACK * segment.clip)

    def segment(self, name: str) -> Segment:
        """The segment called `name`."""
        for segment in self.segments:
            if segment.name == name:
                return segment
        raise InvalidArgument(f"no segment named '{name}'")

    def encode(
        self, parts: Mapping[str, NDArray[np.generic]], *, rng: np.random.Generator | None = None
    ) -> EncodedUpdate:
        """Encode one update given as {segment name: 1-D array}; every segment, no other.

        Float segments need a floating dtype and finite values; int segments an integer
        dtype and |value| <= max_abs. `rng` drives stochastic rounding (default: seeded
        from `secrets`; inject one only in tests).
        """
        if not isinstance(parts, Mapping):
            raise InvalidArgument("encode takes a mapping of segment name to array")
        unknown = sorted(set(parts) - set(self._offsets))
        if unknown:
            raise InvalidArgument(
                f"unknown segment '{unknown[0]}' (layout: {', '.join(self._offsets)})"
            )
        generator = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        out = np.empty(self.length, dtype=self._dtype)
        clipped: dict[str, int] = {}
        for segment in self.segments:
            if segment.name not in parts:
                raise InvalidArgument(f"segment '{segment.name}' is missing")
            values = self._checked(segment, parts[segment.name])
            start, stop = self._offsets[segment.name]
            if isinstance(segment, FloatSegment):
                integers, clipped[segment.name] = self._round(segment, values, generator)
            else:
                integers = values.astype(np.int64)
            out[start:stop] = integers.view(np.uint64).astype(self._dtype)
        return EncodedUpdate(out, clipped)

    def _checked(self, segment: Segment, values: object) -> NDArray[np.generic]:
        where = f"segment '{segment.name}'"
        if not isinstance(values, np.ndarray):
            raise InvalidArgument(f"{where}: expected a numpy array, got {type(values).__name__}")
        if values.shape != (segment.length,):
            raise InvalidArgument(
                f"{where}: expected shape ({segment.length},), got {values.shape}"
            )
        if isinstance(segment, FloatSegment):
            if not np.issubdtype(values.dtype, np.floating):
                raise InvalidArgument(f"{where}: expected a floating dtype, got {values.dtype}")
            finite = np.isfinite(values)
            if not finite.all():
                index = int(np.argmin(finite))
                raise InvalidArgument(
                    f"{where}: coordinate {index} is {values[index]} (NaN/Inf are refused)"
                )
        else:
            if not np.issubdtype(values.dtype, np.integer):
                raise InvalidArgument(f"{where}: expected an integer dtype, got {values.dtype}")
            too_big = np.abs(values.astype(np.float64)) > segment.max_abs
            if too_big.any():
                index = int(np.argmax(too_big))
                raise InvalidArgument(
                    f"{where}: coordinate {index} = {values[index]} exceeds "
                    f"max_abs {segment.max_abs}"
                )
        return values

    def _round(
        self, segment: FloatSegment, values: NDArray[np.generic], rng: np.random.Generator
    ) -> tuple[NDArray[np.int64], int]:
        real = values.astype(np.float64)
        over = int(np.count_nonzero(np.abs(real) > segment.clip))
        np.clip(real, -segment.clip, segment.clip, out=real)
        scaled = real * self.scale(segment)
        floor = np.floor(scaled)
        rounded = floor + (rng.random(scaled.shape[0]) < scaled - floor)
        # Guard against float rounding in clip·scale lifting a value one unit past M.
        np.clip(rounded, -self._float_bound, self._float_bound, out=rounded)
        return rounded.astype(np.int64), over

    def decode_sum(self, total: RingVector) -> DecodedSum:
        """Decode Σ x_u mod 2^k of at most max_participants encoded inputs, per segment."""
        check_ring_vector(total, self.bits, self.length, "the unmasked sum")
        # Two's complement read in place (a view); each segment is converted once, straight
        # into its result (no widened copy of the whole sum first).
        signed = total.view(np.int32 if self.bits == 32 else np.int64)
        result: dict[str, NDArray[np.float64] | NDArray[np.int64]] = {}
        for segment in self.segments:
            start, stop = self._offsets[segment.name]
            part = signed[start:stop]
            if isinstance(segment, FloatSegment):
                values = np.empty(stop - start, dtype=np.float64)
                np.divide(part, self.scale(segment), out=values)
                result[segment.name] = values
            else:
                result[segment.name] = part.astype(np.int64)
        return DecodedSum(result)
