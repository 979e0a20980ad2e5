"""The graph's security bounds: exact tails, the model behind them, the chosen parameters."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from privacy.secagg import GraphPolicy, InvalidArgument, check_graph, graph_risk, recommended_graph
from privacy.secagg.graph import neighbours
from privacy.secagg.graph_security import max_colluders, smallest_threshold


def _enumerated_tail(population: int, marked: int, draws: int, at_least: int) -> Fraction:
    """P(X >= at_least), X ~ Hypergeometric, by listing every draw (small cases only)."""
    hits = sum(
        1
        for chosen in itertools.combinations(range(population), draws)
        if sum(1 for item in chosen if item < marked) >= at_least
    )
    return Fraction(hits, math.comb(population, draws))


def _log2(probability: Fraction) -> float:
    return min(0.0, math.log2(probability)) if probability else -math.inf


@pytest.mark.parametrize(("n", "degree", "threshold"), [(9, 4, 3), (10, 6, 4), (13, 8, 6)])
def test_the_bounds_are_union_bounds_of_exact_tails(n: int, degree: int, threshold: int) -> None:
    policy = GraphPolicy(collusion_fraction=0.34, dropout_fraction=0.2)
    risk = graph_risk(n, degree, threshold, policy)
    c, dropped = risk.colluders, risk.dropouts
    exposure = (n - c) * _enumerated_tail(n - 1, c, degree, threshold - 1)
    assert risk.log2_exposure == pytest.approx(_log2(exposure), abs=1e-9)
    starved = n * _enumerated_tail(n - 1, dropped, degree, degree - threshold + 1)
    run = n * Fraction(math.comb(dropped, degree // 2), math.comb(n, degree // 2))
    assert risk.log2_dropout_failure == pytest.approx(_log2(starved + run), abs=1e-9)
    assert risk.log2_exposure > -math.inf or risk.log2_dropout_failure > -math.inf


def test_the_bound_holds_for_the_graph_the_code_builds() -> None:
    """The model behind the bounds (a participant's neighbours are a uniform k-subset of the
    others) against the real Harary graph over many seeds: how often one participant has
    >= threshold - 1 colluding neighbours matches the exact tail (a weak graph, so that it
    happens often enough to count)."""
    n, degree, threshold = 30, 4, 3
    ids = list(range(1, n + 1))
    coalition = set(range(1, 11))
    seeds = 400
    hits = 0
    for counter in range(seeds):
        graph = neighbours(ids, counter.to_bytes(32, "big"), degree)
        hits += len(graph[n] & coalition) >= threshold - 1
    exact = float(_enumerated_tail(n - 1, len(coalition), degree, threshold - 1))
    assert hits / seeds == pytest.approx(exact, abs=0.08)  # about 3 standard deviations


@pytest.mark.parametrize("n", [32, 50, 100, 1000])
def test_recommended_graphs_meet_the_policy_and_are_the_smallest_that_do(n: int) -> None:
    policy = GraphPolicy()
    chosen = recommended_graph(n, policy)
    assert chosen is not None
    degree, threshold = chosen
    assert check_graph(n, degree, threshold, policy) is None
    assert graph_risk(n, degree, threshold, policy).log2_exposure <= -40
    smaller = degree - 2
    best = smallest_threshold(n, smaller, policy)
    assert best is None or check_graph(n, smaller, best, policy) is not None
    assert check_graph(n, degree, threshold - 1, policy) is not None  # ℓ is minimal too


def test_small_rounds_get_a_graph_only_where_no_coalition_can_reach_a_threshold() -> None:
    assert recommended_graph(4) is None  # the complete graph
    degree, threshold = recommended_graph(10) or (0, 0)
    risk = graph_risk(10, degree, threshold)
    assert risk.colluders < threshold - 1  # 3 colluders, 4 needed: never, not just rarely
    assert risk.log2_exposure == -math.inf


def test_a_stricter_policy_needs_a_larger_graph() -> None:
    default = recommended_graph(1000)
    stricter = recommended_graph(1000, GraphPolicy(collusion_fraction=0.4))
    assert default is not None
    assert stricter is not None
    assert stricter[0] > default[0]
    assert check_graph(1000, *default, GraphPolicy(collusion_fraction=0.4)) is not None


def test_too_weak_degree_or_threshold_is_explained() -> None:
    reason = check_graph(1000, 30, 21)
    assert reason is not None
    assert "333 colluding" in reason
    assert "2^-40" in reason
    dropouts = check_graph(1000, 126, 126)  # private enough, but 10% dropouts starve it
    assert dropouts is not None
    assert "dropouts" in dropouts
    assert check_graph(10, 12, 8) is not None  # not a graph on 10 participants


def test_collusion_tolerance_is_at_least_the_stated_fraction() -> None:
    for n in (100, 1000):
        degree, threshold = recommended_graph(n) or (0, 0)
        assert max_colluders(n, degree, threshold) >= GraphPolicy().colluders(n)
    assert max_colluders(100, 20, 14) < 33  # the old rule of thumb did not tolerate n/3


@pytest.mark.parametrize(
    "values",
    [
        {"collusion_fraction": 0.5},
        {"collusion_fraction": -0.1},
        {"dropout_fraction": 0.6},
        {"log2_target": 0.0},
        {"log2_target": -2000.0},
    ],
)
def test_invalid_policies_are_refused(values: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        GraphPolicy(**values)
