"""Budget arithmetic: the noise that fits, and the refusal before overspending."""

from __future__ import annotations

import pytest
from opacus.accountants.utils import get_noise_multiplier

from privacy.dp import (
    Accountant,
    BudgetExceeded,
    InvalidBudget,
    check_round,
    epsilon_for,
    noise_for_budget,
)


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_noise_for_budget_spends_at_most_the_budget_and_close_to_it(kind: str) -> None:
    sigma = noise_for_budget(3.0, 1e-5, 0.1, 20, rounds=5, accountant_kind=kind)
    spent = epsilon_for([(sigma, 0.1, 100)], 1e-5, kind)
    assert 3.0 * 0.99 <= spent <= 3.0
    # Opacus' own search finds (about) the same sigma.
    theirs = get_noise_multiplier(
        target_epsilon=3.0, target_delta=1e-5, sample_rate=0.1, steps=100, accountant=kind
    )
    assert sigma == pytest.approx(theirs, rel=0.02)


def test_noise_for_budget_accounts_for_the_history() -> None:
    fresh = noise_for_budget(4.0, 1e-5, 0.2, 10, rounds=3)
    history = [(fresh, 0.2, 10)]
    after_one = noise_for_budget(4.0, 1e-5, 0.2, 10, rounds=2, history=history)
    # Spreading the same budget over the same rounds gives (nearly) the same sigma.
    assert after_one == pytest.approx(fresh, rel=0.02)
    assert epsilon_for([*history, (after_one, 0.2, 20)], 1e-5) <= 4.0


def test_a_budget_of_zero_names_the_setting() -> None:
    with pytest.raises(InvalidBudget, match=r"epsilon must be a finite number > 0, got 0"):
        noise_for_budget(0.0, 1e-5, 0.1, 10, rounds=1)
    with pytest.raises(InvalidBudget, match=r"budget epsilon must be"):
        check_round(Accountant(), 0.0, 1e-5, 1.0, 0.1, 10)
    with pytest.raises(InvalidBudget, match="delta"):
        noise_for_budget(1.0, 0.0, 0.1, 10, rounds=1)


def test_round_over_budget_is_refused_and_nothing_is_recorded() -> None:
    accountant = Accountant("rdp", [(1.0, 0.2, 50)])
    spent = accountant.epsilon(1e-5)
    with pytest.raises(BudgetExceeded) as refusal:
        check_round(accountant, spent + 0.01, 1e-5, 1.0, 0.2, 50)
    assert refusal.value.spent == pytest.approx(spent)
    assert refusal.value.projected > refusal.value.budget
    assert len(accountant.history) == 1
    projected = check_round(accountant, 100.0, 1e-5, 1.0, 0.2, 50)
    assert projected > spent


def test_spent_budget_cannot_buy_more_rounds() -> None:
    history = [(0.5, 0.5, 100)]
    with pytest.raises(BudgetExceeded, match="already spent"):
        noise_for_budget(1.0, 1e-5, 0.1, 10, rounds=1, history=history)
