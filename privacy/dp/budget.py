"""Budget arithmetic: what a round costs, the noise that fits a budget, the refusal.

An agent calls `noise_for_budget` to choose sigma so that its budget is spent evenly over
the rounds it plans to join, `check_round` before it trains (raising `BudgetExceeded`
before a single step could overspend), and `Accountant.record` after the round.

Both reserve the noise sampler's slack (`privacy.dp.noise.sampler_slack`) when told what
the history draws (`NoiseDraws`: pairs, steps, smallest σ) and, for a plan, how many
pairs a step draws: ε is computed at the δ the sampler leaves and the sampler's ε is
added, so the institution's (ε, δ) holds for the implementation, not only for ideal
Gaussians.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from privacy.dp.accountant import (
    Accountant,
    AccountantKind,
    HistoryEntry,
    check_delta,
    check_entry,
    epsilon_for,
)
from privacy.dp.errors import BudgetExceeded, InvalidBudget
from privacy.dp.noise import NoiseDraws, sampler_slack

#: Largest noise multiplier `noise_for_budget` considers; beyond it training learns nothing.
MAX_NOISE_MULTIPLIER: Final = 1e4
#: The bisection stops when epsilon is within this fraction below the target.
EPSILON_TOLERANCE: Final = 0.005


@dataclass(frozen=True)
class RoundPlan:
    """What one round of local training will do, and therefore spend.

    `noise_multiplier` is 0 when the federation trains without DP.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        check_entry(self.noise_multiplier, self.sample_rate, self.steps)

    def entry(self) -> HistoryEntry:
        return HistoryEntry(self.noise_multiplier, self.sample_rate, self.steps)


def reserved_for_sampler(
    delta: float, draws: NoiseDraws, budget_epsilon: float = math.inf
) -> tuple[float, float]:
    """(the sampler's ε, the ideal δ left) for `draws` under a budget's δ;
    `BudgetExceeded` when the sampler's slack alone would take all of δ."""
    slack = sampler_slack(draws)
    delta_left = slack.ideal_delta(delta)
    if not delta_left > 0.0:
        raise BudgetExceeded(
            f"{draws.pairs} noise pairs over {draws.steps} steps at noise multipliers down "
            f"to {draws.min_noise_multiplier:g} would take all of delta {delta:g}",
            spent=0.0,
            projected=math.inf,
            budget=budget_epsilon,
        )
    return slack.epsilon, delta_left


def check_epsilon_budget(epsilon: float, setting: str = "epsilon") -> float:
    if not math.isfinite(epsilon) or epsilon <= 0.0:
        raise InvalidBudget(f"{setting} must be a finite number > 0, got {epsilon}")
    return float(epsilon)


def noise_for_budget(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps_per_round: int,
    rounds: int,
    accountant_kind: AccountantKind | str = AccountantKind.RDP,
    history: Iterable[HistoryEntry | tuple[float, float, int]] = (),
    *,
    drawn: NoiseDraws | None = None,
    pairs_per_step: int = 0,
) -> float:
    """The smallest noise multiplier that keeps the total within `epsilon` after `rounds`
    more rounds of `steps_per_round` steps at `sample_rate`, on top of `history`.

    With `drawn` (what the history drew) and `pairs_per_step`, the sampler's slack of the
    history and of all those rounds is reserved. Raises `InvalidBudget` for a budget of 0
    (or less) and `BudgetExceeded` when the history alone already spent it, or when no
    sigma up to `MAX_NOISE_MULTIPLIER` fits.
    """
    check_epsilon_budget(epsilon)
    check_delta(delta)
    if rounds < 1:
        raise InvalidBudget(f"rounds must be >= 1, got {rounds}")
    past = [check_entry(*entry) for entry in history]
    check_entry(1.0, sample_rate, steps_per_round)
    spent = epsilon_for(past, delta, accountant_kind)
    if spent >= epsilon:
        raise BudgetExceeded(
            f"epsilon {spent:.3f} is already spent of a budget of {epsilon:.3f}",
            spent=spent,
            projected=spent,
            budget=epsilon,
        )
    total_steps = steps_per_round * rounds
    history_draws = drawn if drawn is not None else NoiseDraws()

    def eps(sigma: float) -> float:
        planned = NoiseDraws(pairs_per_step * total_steps, total_steps, sigma)
        try:
            sampler_eps, delta_left = reserved_for_sampler(delta, history_draws + planned)
        except BudgetExceeded:
            return math.inf
        with warnings.catch_warnings():
            # Probes far from the answer hit the largest or smallest RDP order; only the
            # answer matters.
            warnings.filterwarnings(
                "ignore", message="Optimal order is the (largest|smallest) alpha"
            )
            history = [*past, (sigma, sample_rate, total_steps)]
            return epsilon_for(history, delta_left, accountant_kind) + sampler_eps

    # Keep the sigma of the previous round when it still spreads the budget evenly: the
    # same noise every round (and no search).
    if past:
        last = past[-1].noise_multiplier
        value = eps(last) if last > 0 else math.inf
        if epsilon * (1.0 - EPSILON_TOLERANCE) <= value <= epsilon:
            return last
    low, high = 0.0, 1.0
    while eps(high) > epsilon:
        low, high = high, 2.0 * high
        if high > MAX_NOISE_MULTIPLIER:
            raise BudgetExceeded(
                f"no noise multiplier up to {MAX_NOISE_MULTIPLIER:g} keeps {rounds} rounds of "
                f"{steps_per_round} steps within epsilon {epsilon:.3f}",
                spent=spent,
                projected=math.inf,
                budget=epsilon,
            )
    # Invariant: eps(high) <= epsilon < eps(low) (or low = 0).
    for _ in range(60):
        mid = 0.5 * (low + high)
        value = eps(mid)
        if value > epsilon:
            low = mid
        else:
            high = mid
            if epsilon - value <= EPSILON_TOLERANCE * epsilon:
                break
    return high


def check_round(
    accountant: Accountant,
    budget_epsilon: float,
    delta: float,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    *,
    drawn: NoiseDraws | None = None,
    pairs_per_step: int = 0,
) -> float:
    """The projected epsilon of a planned round; `BudgetExceeded` if it passes the budget.

    With `drawn` (what the history drew) and `pairs_per_step`, the projection is the
    accountant's ε at the δ the sampler leaves, plus the sampler's ε."""
    check_epsilon_budget(budget_epsilon, "budget epsilon")
    draws = (drawn if drawn is not None else NoiseDraws()) + NoiseDraws(
        pairs_per_step * steps, steps, noise_multiplier if pairs_per_step else math.inf
    )
    sampler_eps, delta_left = reserved_for_sampler(delta, draws, budget_epsilon)
    spent = accountant.epsilon(delta)
    projected = (
        accountant.projected_epsilon(noise_multiplier, sample_rate, steps, delta_left) + sampler_eps
    )
    if projected > budget_epsilon:
        raise BudgetExceeded(
            f"the round would bring epsilon from {spent:.3f} to {projected:.3f} "
            f"(delta {delta:g}), over the budget of {budget_epsilon:.3f}",
            spent=spent,
            projected=projected,
            budget=budget_epsilon,
        )
    return projected


__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "RoundPlan",
    "check_epsilon_budget",
    "check_round",
    "noise_for_budget",
    "reserved_for_sampler",
]
