"""The protocol's laws: with >= t survivors the sum (and only the sum) comes out, below t a
typed error, with and without the SecAgg+ neighbour graph, with dropouts at every stage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from privacy.secagg import FixedPointCodec, FloatSegment, ThresholdNotMet

from .roundsim import (
    STAGES,
    exact_sum,
    expected_outcome,
    make_federation,
    no_dropouts,
    random_inputs,
    run_round,
)

PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def round_shapes(draw: st.DrawFn, graph: bool) -> dict[str, int | None]:
    n = draw(st.integers(min_value=5 if graph else 3, max_value=40))
    threshold = draw(st.integers(min_value=n // 2 + 1, max_value=n))
    shape: dict[str, int | None] = {"n": n, "threshold": threshold, "degree": None, "local": None}
    if graph:
        degree = draw(st.sampled_from(list(range(2, n - 1, 2))))
        shape["degree"] = degree
        shape["local"] = draw(st.integers(min_value=(degree + 1) // 2 + 1, max_value=degree + 1))
    return shape


@st.composite
def dropout_schedules(
    draw: st.DrawFn, ids: tuple[int, ...], keep: int
) -> dict[str, frozenset[int]]:
    """Drop participants at every stage while at least `keep` of them remain."""
    remaining = list(ids)
    schedule = {}
    for stage in STAGES:
        budget = max(0, len(remaining) - keep)
        count = draw(st.integers(min_value=0, max_value=min(budget, 3)))
        dropped = draw(st.permutations(remaining))[:count]
        schedule[stage] = frozenset(dropped)
        remaining = [pid for pid in remaining if pid not in dropped]
    return schedule


def _check_round(shape: dict[str, int | None], data: st.DataObject, bits: int = 32) -> None:
    n, threshold = shape["n"], shape["threshold"]
    assert n is not None
    assert threshold is not None
    federation = make_federation(
        n, threshold, 12, bits=bits, degree=shape["degree"], graph_threshold=shape["local"]
    )
    config = federation.config
    dropouts = data.draw(dropout_schedules(config.ids, keep=threshold))
    inputs = random_inputs(config, np.random.default_rng(data.draw(st.integers(0, 2**32))))
    outcome = run_round(federation, inputs, dropouts)
    expected = expected_outcome(outcome.config, dropouts)
    event("revealed the sum" if expected is not None else "failed below threshold")
    event(f"n in [{n // 10 * 10}, {n // 10 * 10 + 9}]")
    if expected is None:
        assert isinstance(outcome.error, ThresholdNotMet), outcome.error
        assert outcome.total is None
    else:
        assert outcome.error is None, outcome.error
        assert outcome.survivors == expected
        np.testing.assert_array_equal(outcome.total, exact_sum(config, inputs, expected))


@PROPERTY_SETTINGS
@given(shape=round_shapes(graph=False), data=st.data())
def test_sum_of_survivors_is_exact_with_dropouts_at_every_stage(shape, data) -> None:
    _check_round(shape, data)


@PROPERTY_SETTINGS
@given(shape=round_shapes(graph=True), data=st.data())
def test_neighbour_graph_gives_the_sum_or_a_typed_error(shape, data) -> None:
    _check_round(shape, data)


@settings(max_examples=8, deadline=None)
@given(shape=round_shapes(graph=False), data=st.data())
def test_64_bit_rounds_sum_exactly(shape, data) -> None:
    _check_round(shape, data, bits=64)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(min_value=3, max_value=20),
    stage=st.sampled_from(STAGES),
    graph=st.booleans(),
    data=st.data(),
)
def test_below_threshold_the_round_fails_with_a_typed_error(n, stage, graph, data) -> None:
    threshold = n // 2 + 1
    degree = local = None
    if graph and n >= 5:
        degree = 2 * data.draw(st.integers(1, (n - 2) // 2))
        local = degree // 2 + 1
    federation = make_federation(n, threshold, 8, degree=degree, graph_threshold=local)
    dropped = frozenset(data.draw(st.permutations(federation.config.ids))[: n - threshold + 1])
    dropouts = no_dropouts() | {stage: dropped}
    outcome = run_round(
        federation, random_inputs(federation.config, np.random.default_rng(1)), dropouts
    )
    assert isinstance(outcome.error, ThresholdNotMet)
    assert outcome.total is None


def test_round_survives_a_client_restart_between_every_step() -> None:
    federation = make_federation(9, 6, 20, degree=4, graph_threshold=3)
    inputs = random_inputs(federation.config, np.random.default_rng(2))
    dropouts = no_dropouts() | {"masked_input": frozenset({4}), "unmask": frozenset({2})}
    outcome = run_round(federation, inputs, dropouts, restore_each_step=True)
    expected = expected_outcome(outcome.config, dropouts)
    assert expected is not None
    assert outcome.error is None
    np.testing.assert_array_equal(outcome.total, exact_sum(federation.config, inputs, expected))


@pytest.mark.parametrize("bits", [32, 64])
def test_decoded_aggregate_is_the_sum_of_the_survivors_updates(bits: int) -> None:
    n, d = 12, 64
    federation = make_federation(n, 8, d, bits=bits)
    codec = FixedPointCodec([FloatSegment("encoder", d, clip=2.0)], bits=bits, max_participants=n)
    rng = np.random.default_rng(3)
    updates = {pid: rng.uniform(-2.0, 2.0, d) for pid in federation.config.ids}
    inputs = {pid: codec.encode({"encoder": u}, rng=rng).vector for pid, u in updates.items()}
    dropouts = no_dropouts() | {"share_keys": frozenset({3}), "masked_input": frozenset({5, 11})}
    outcome = run_round(federation, inputs, dropouts)
    assert outcome.total is not None
    survivors = outcome.survivors
    assert survivors == tuple(pid for pid in range(1, n + 1) if pid not in {3, 5, 11})
    decoded = codec.decode_sum(outcome.total)["encoder"]
    plain = sum(updates[pid] for pid in survivors)
    assert np.max(np.abs(decoded - plain)) <= codec.max_sum_error("encoder", len(survivors))
