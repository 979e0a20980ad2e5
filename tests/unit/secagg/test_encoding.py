"""Fixed-point codec: sums decode within the stated error, rounding is unbiased, counters
are exact, nothing wraps at the maximum number of participants, bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import (
    FixedPointCodec,
    FloatSegment,
    IntSegment,
    InvalidArgument,
    ring_dtype,
)


def _sum_mod(vectors: list[np.ndarray], bits: int) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for vector in vectors:
        total += vector  # uint arithmetic wraps mod 2^k, as the aggregation does
    return total


@settings(max_examples=40, deadline=None)
@given(
    bits=st.sampled_from([32, 64]),
    n=st.integers(min_value=1, max_value=1000),
    clip=st.floats(min_value=1e-3, max_value=1e3),
    participants=st.integers(min_value=1, max_value=6),
    data=st.data(),
)
def test_sum_decodes_within_the_stated_error(bits, n, clip, participants, data) -> None:
    participants = min(participants, n)
    codec = FixedPointCodec(
        [FloatSegment("w", 5, clip), IntSegment("count", 2, 3)], bits=bits, max_participants=n
    )
    updates = [
        np.array(data.draw(st.lists(st.floats(-clip, clip), min_size=5, max_size=5)))
        for _ in range(participants)
    ]
    counts = [
        np.array(data.draw(st.lists(st.integers(-3, 3), min_size=2, max_size=2)))
        for _ in range(participants)
    ]
    encoded = [
        codec.encode({"w": u, "count": c}, rng=np.random.default_rng(i)).vector
        for i, (u, c) in enumerate(zip(updates, counts, strict=True))
    ]
    decoded = codec.decode_sum(_sum_mod(encoded, bits))
    assert decoded["w"].dtype == np.float64
    assert decoded["count"].dtype == np.int64
    assert np.all(np.abs(decoded["w"] - sum(updates)) <= codec.max_sum_error("w", participants))
    np.testing.assert_array_equal(decoded["count"], sum(counts))


@pytest.mark.parametrize("bits", [32, 64])
def test_extremes_of_every_participant_do_not_wrap(bits: int) -> None:
    n = 1000
    codec = FixedPointCodec(
        [FloatSegment("w", 3, 2.5), IntSegment("count", 1, 7)], bits=bits, max_participants=n
    )
    for sign in (1.0, -1.0):
        one = codec.encode({"w": np.full(3, sign * 2.5), "count": np.array([int(sign) * 7])}).vector
        decoded = codec.decode_sum(_sum_mod([one] * n, bits))
        np.testing.assert_allclose(
            decoded["w"], sign * 2.5 * n, rtol=0, atol=codec.max_sum_error("w", n)
        )
        assert decoded["count"][0] == sign * 7 * n


def test_stochastic_rounding_is_unbiased() -> None:
    codec = FixedPointCodec([FloatSegment("w", 200_000, 1.0)], max_participants=100)
    step = codec.resolution("w")
    value = 0.3 * step + 12 * step  # 12.3 units: rounds to 12 or 13
    encoded = codec.encode({"w": np.full(200_000, value)}, rng=np.random.default_rng(6)).vector
    units = encoded.view(np.int32).astype(np.float64)
    assert set(np.unique(units)) == {12.0, 13.0}
    # Mean 12.3 units; the standard error of the mean is sqrt(0.3 * 0.7 / 200000) ≈ 0.001.
    assert abs(units.mean() - 12.3) < 0.006


def test_clipped_coordinates_are_counted_and_saturate() -> None:
    codec = FixedPointCodec(
        [FloatSegment("a", 4, 1.0), FloatSegment("b", 2, 5.0)], max_participants=3
    )
    result = codec.encode({"a": np.array([0.5, 3.0, -7.0, 1.0]), "b": np.array([4.0, -6.0])})
    assert result.clipped == {"a": 2, "b": 1}
    assert result.total_clipped == 3
    decoded = codec.decode_sum(result.vector)
    assert decoded["a"][1] == pytest.approx(1.0)
    assert decoded["a"][2] == pytest.approx(-1.0)
    assert decoded["b"][1] == pytest.approx(-5.0)


def test_default_randomness_differs_between_calls() -> None:
    codec = FixedPointCodec([FloatSegment("w", 1000, 1.0)], max_participants=10)
    values = np.full(1000, 0.5 * codec.resolution("w"))
    first, second = codec.encode({"w": values}).vector, codec.encode({"w": values}).vector
    assert not np.array_equal(first, second)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({"w": np.array([1.0, np.nan, 0.0])}, "NaN"),
        ({"w": np.array([1.0, 0.0, np.inf])}, "coordinate 2"),
        ({"w": np.array([1, 2, 3])}, "floating dtype"),
        ({"w": np.zeros(4)}, "shape"),
        ({"w": [0.0, 0.0, 0.0]}, "numpy array"),
        ({}, "missing"),
        ({"w": np.zeros(3), "extra": np.zeros(1)}, "unknown segment 'extra'"),
    ],
)
def test_bad_float_input_is_refused_with_a_clear_error(parts, message) -> None:
    codec = FixedPointCodec([FloatSegment("w", 3, 1.0)], max_participants=4)
    with pytest.raises(InvalidArgument, match=message):
        codec.encode(parts)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([1.0, 2.0]), "integer dtype"),
        (np.array([1, 11]), "exceeds max_abs 10"),
        (np.array([-11, 0]), "coordinate 0"),
    ],
)
def test_bad_counter_input_is_refused_not_clipped(values, message) -> None:
    codec = FixedPointCodec([IntSegment("count", 2, 10)], max_participants=4)
    with pytest.raises(InvalidArgument, match=message):
        codec.encode({"count": values})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"segments": [IntSegment("c", 1, 2**31)], "max_participants": 2}, "would wrap"),
        ({"segments": [FloatSegment("w", 1, 1.0)], "max_participants": 0}, "max_participants"),
        ({"segments": [FloatSegment("w", 1, 1.0)], "max_participants": 2, "bits": 16}, "bits"),
        ({"segments": [], "max_participants": 2}, "at least one segment"),
        (
            {"segments": [FloatSegment("w", 1, 1.0), IntSegment("w", 1, 1)], "max_participants": 2},
            "distinct",
        ),
    ],
)
def test_bad_layouts_are_refused(kwargs, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        FixedPointCodec(**kwargs)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: FloatSegment("w", 0, 1.0), "length"),
        (lambda: FloatSegment("w", 3, float("nan")), "clip"),
        (lambda: FloatSegment("w", 3, -1.0), "clip"),
        (lambda: IntSegment("", 3, 1), "name"),
        (lambda: IntSegment("c", 3, 0), "max_abs"),
    ],
)
def test_bad_segments_are_refused(factory, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        factory()


def test_decode_refuses_a_vector_of_the_wrong_kind() -> None:
    codec = FixedPointCodec([FloatSegment("w", 3, 1.0)], max_participants=4)
    with pytest.raises(InvalidArgument, match="dtype"):
        codec.decode_sum(np.zeros(3, dtype=np.float64))
    with pytest.raises(InvalidArgument, match="shape"):
        codec.decode_sum(np.zeros(4, dtype=ring_dtype(32)))
    with pytest.raises(InvalidArgument, match="no segment named 'v'"):
        codec.decode_sum(np.zeros(3, dtype=ring_dtype(32)))["v"]
