"""The accountant: Opacus' own arithmetic, persisted history, restore and continue."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from privacy.dp import Accountant, InvalidPrivacyParameter, epsilon_for, published_sample_rate
from privacy.dp.accountant import RDP_ORDERS


def opacus_epsilon(kind: str, steps: list[tuple[float, float, int]], delta: float) -> float:
    """Opacus' accountant driven step by step, as its optimizer hook does (RDP at the
    ledger's integer orders, each order's RDP from Opacus' own per-order function)."""
    accountant = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for sigma, q, n in steps:
        for _ in range(n):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    if kind == "rdp":
        return float(accountant.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))
    return float(accountant.get_epsilon(delta=delta))


@pytest.mark.parametrize("kind", ["rdp", "prv"])
@pytest.mark.parametrize(
    ("sigma", "q", "steps", "delta"),
    [(1.1, 0.01, 1000, 1e-5), (2.5, 0.25, 40, 1e-5), (0.8, 0.5, 12, 1e-6)],
)
def test_epsilon_equals_opacus_for_the_same_parameters(
    kind: str, sigma: float, q: float, steps: int, delta: float
) -> None:
    accountant = Accountant(kind)
    accountant.record(sigma, q, steps)
    expected = opacus_epsilon(kind, [(sigma, q, steps)], delta)
    assert accountant.epsilon(delta) == pytest.approx(expected, rel=1e-9)
    assert epsilon_for([(sigma, q, steps)], delta, kind) == pytest.approx(expected, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(st.floats(0.5, 8.0), st.floats(0.01, 1.0), st.integers(1, 30)),
        min_size=1,
        max_size=4,
    )
)
def test_rdp_history_of_rounds_equals_opacus_stepwise(
    rounds: list[tuple[float, float, int]],
) -> None:
    accountant = Accountant("rdp", rounds)
    assert accountant.epsilon(1e-5) == pytest.approx(opacus_epsilon("rdp", rounds, 1e-5), rel=1e-9)


def test_restored_accountant_continues_where_it_stopped() -> None:
    first = Accountant("rdp")
    first.record(1.5, 0.1, 50)
    state = json.loads(json.dumps(first.state_dict()))  # it survives JSON
    restored = Accountant.from_state_dict(state)
    assert restored.history == first.history
    assert restored.epsilon(1e-5) == first.epsilon(1e-5)
    restored.record(1.5, 0.1, 50)
    uninterrupted = Accountant("rdp")
    uninterrupted.record(1.5, 0.1, 50)
    uninterrupted.record(1.5, 0.1, 50)
    assert restored.epsilon(1e-5) == pytest.approx(uninterrupted.epsilon(1e-5), rel=1e-12)
    assert restored.epsilon(1e-5) > first.epsilon(1e-5)
    assert restored.steps == 100


def test_projected_epsilon_is_the_epsilon_after_the_round() -> None:
    accountant = Accountant("prv", [(1.2, 0.2, 10)])
    projected = accountant.projected_epsilon(1.2, 0.2, 10, 1e-5)
    assert accountant.steps == 10  # projecting records nothing
    accountant.record(1.2, 0.2, 10)
    assert accountant.epsilon(1e-5) == pytest.approx(projected, rel=1e-9)


def test_state_of_another_kind_or_damaged_is_refused() -> None:
    state = Accountant("prv", [(1.0, 0.1, 3)]).state_dict()
    with pytest.raises(InvalidPrivacyParameter, match="kind 'prv'"):
        Accountant("rdp").load_state_dict(state)
    with pytest.raises(InvalidPrivacyParameter, match="history"):
        Accountant("prv").load_state_dict({**state, "history": [[1.0, 0.1]]})
    with pytest.raises(InvalidPrivacyParameter, match="sample_rate"):
        Accountant("prv").load_state_dict({**state, "history": [[1.0, 1.5, 3]]})
    with pytest.raises(InvalidPrivacyParameter, match="version"):
        Accountant("prv").load_state_dict({"kind": "prv", "history": []})


def test_no_noise_has_no_finite_epsilon_and_nothing_spends_nothing() -> None:
    assert math.isinf(epsilon_for([(0.0, 0.1, 1)], 1e-5))
    assert Accountant("prv").epsilon(1e-5) == 0.0


def test_unknown_kind_names_the_setting() -> None:
    with pytest.raises(InvalidPrivacyParameter, match=r"accountant: unknown kind 'gdp'"):
        Accountant("gdp")


@pytest.mark.parametrize(
    ("q", "sigma"), [(0.01, 1.1), (0.28125, 2.95), (0.6875, 4.94), (0.999, 0.7), (1.0, 2.0)]
)
def test_each_order_is_opacus_integer_order_rdp(q: float, sigma: float) -> None:
    from privacy.dp.accountant import _rdp_per_step

    expected = rdp_analysis.compute_rdp(
        q=q, noise_multiplier=sigma, steps=1, orders=[float(a) for a in RDP_ORDERS]
    )
    assert _rdp_per_step(q, sigma) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("q", [1e-6, 0.013, 0.26, 0.27, 0.4, 0.653, 0.99, 1.0])
def test_published_sample_rate_rounds_up_onto_a_coarse_dyadic_grid(q: float) -> None:
    published = published_sample_rate(q)
    assert q <= published <= min(1.0, 1.125 * q)
    assert published_sample_rate(published) == published  # on the grid: a fixed point
    mantissa, _ = math.frexp(published)
    assert (mantissa * 16).is_integer()  # 4 significant binary digits


def test_sampling_rates_inside_one_grid_step_publish_the_same_value() -> None:
    """Training sets of 293 to 315 rows at batch 64 all publish q = 0.21875: the published
    rate tells N only to within a factor 16/15 here (9/8 at worst)."""
    assert {published_sample_rate(64 / n) for n in range(293, 316)} == {0.21875}
