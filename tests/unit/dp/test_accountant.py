"""The accountant: Opacus' own epsilon, persisted history, restore and continue."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from privacy.dp import Accountant, InvalidPrivacyParameter, epsilon_for


def opacus_epsilon(kind: str, steps: list[tuple[float, float, int]], delta: float) -> float:
    """Opacus' accountant driven step by step, as its optimizer hook does."""
    accountant = RDPAccountant() if kind == "rdp" else PRVAccountant()
    for sigma, q, n in steps:
        for _ in range(n):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
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
