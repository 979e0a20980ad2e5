"""How large the SecAgg+ graph must be: degree k and neighbourhood threshold ℓ for a stated
fraction γ of colluding institutions and δ of dropouts (Bell et al., CCS 2020, §3-§4).

The graph (`graph.neighbours`) is a Harary graph over a uniformly random cyclic order of the
n participants (SHA-256 of a seed nobody chose, `graph.derive_seed`), so the k neighbours of
any one participant are a uniformly random k-subset of the other n − 1. A secret of u is
shared among u and its k neighbours, ℓ of which reconstruct it.

**Exposure.** The adversary is the coordinator together with c = ⌊γn⌋ institutions fixed
before the round (it sees their keys and shares). It learns an honest u's update only if
it gets both u's self-mask seed b_u and every pairwise mask of u:

- with ≥ ℓ colluders among u's neighbours it reconstructs b_u and s_u^SK outright;
- with ℓ − 1 it can claim that every honest neighbour of u dropped: the survivors still
  hold ℓ shares of b_u (u's own and the colluders'), the "dropped" neighbours' mask keys
  are reconstructed as the protocol says, and u's upload is unmasked on its own;
- with fewer, every survivor set the honest clients accept leaves u tied by a pairwise
  mask to another honest survivor, so u's update comes out only inside a sum. (This rests
  on the consistency check: one survivor set per round, 2t > n + c, which is the round
  threshold's rule, not the graph's.)

So P(exposure) ≤ Σ_honest u P(X_u ≥ ℓ − 1) = (n − c)·P(X ≥ ℓ − 1), X ~ Hypergeometric(n − 1,
c, k): a union bound over the honest participants of an exact hypergeometric tail.

**Failure from dropouts.** With D = ⌈δn⌉ participants dropping at any stage after round 0
(independently of the graph), the round fails only if some participant keeps fewer than ℓ
surviving holders, i.e. ≥ k − ℓ + 1 of its k neighbours dropped, or the survivors fall
apart in the graph, which needs a run of k/2 consecutive dropped participants in the cyclic
order. P(fail) ≤ n·P(Y ≥ k − ℓ + 1) + n·C(D, k/2)/C(n, k/2), Y ~ Hypergeometric(n − 1, D, k)
(union bounds, exact tails). Colluders refusing to answer are not counted: they can always
make a round fail. Nor is |U_i| ≥ t, which is the round threshold's rule.

Every probability is computed exactly with Python integers and reported as log2 (−inf when
it is 0: a coalition smaller than ℓ − 1 can never expose anyone). With k = n − 1 (the
complete graph, ℓ = t) the same formulas hold with X = c and Y = D.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from privacy.secagg.errors import InvalidArgument

if TYPE_CHECKING:
    from privacy.secagg.config import RoundConfig

#: Fraction of the institutions assumed to collude with the coordinator.
DEFAULT_COLLUSION_FRACTION: Final = 1 / 3
#: Fraction of the participants assumed to drop out of a round after advertising keys.
DEFAULT_DROPOUT_FRACTION: Final = 0.1
#: Target: log2 of the largest acceptable probability of exposure (and of a failed round).
DEFAULT_LOG2_TARGET: Final = -40.0


@dataclass(frozen=True)
class GraphPolicy:
    """What a graph must withstand: γ colluding, δ dropping, at probability ≤ 2^log2_target."""

    collusion_fraction: float = DEFAULT_COLLUSION_FRACTION
    dropout_fraction: float = DEFAULT_DROPOUT_FRACTION
    log2_target: float = DEFAULT_LOG2_TARGET

    def __post_init__(self) -> None:
        for name in ("collusion_fraction", "dropout_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 0.5:
                raise InvalidArgument(f"the graph policy's {name} must be in [0, 0.5)")
        target = self.log2_target
        if not isinstance(target, (int, float)) or not -1000.0 <= target <= -1.0:
            raise InvalidArgument("the graph policy's log2_target must be in [-1000, -1]")

    def colluders(self, n: int) -> int:
        """c = ⌊γn⌋ (a hair of slack so that γ = 1/3 gives exactly n/3 for n = 3m)."""
        return math.floor(self.collusion_fraction * n + 1e-9)

    def dropouts(self, n: int) -> int:
        """D = ⌈δn⌉."""
        return math.ceil(self.dropout_fraction * n - 1e-9)


@dataclass(frozen=True)
class GraphRisk:
    """The bounds for one (n, k, ℓ) under one policy; log2 of probabilities (−inf: 0)."""

    n: int
    degree: int
    threshold: int
    colluders: int
    dropouts: int
    log2_exposure: float
    log2_dropout_failure: float

    @property
    def complete(self) -> bool:
        return self.degree >= self.n - 1

    def meets(self, policy: GraphPolicy) -> bool:
        target = policy.log2_target
        return self.log2_exposure <= target and self.log2_dropout_failure <= target


def _log2(value: int) -> float:
    return math.log2(value) if value > 0 else -math.inf


def _log2_add(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    if high == -math.inf:
        return high
    return high + math.log2(1.0 + 2.0 ** (low - high))


def _tail_numerators(population: int, marked: int, draws: int) -> list[int]:
    """S[j] = C(population, draws)·P(X ≥ j) for X ~ Hypergeometric(population, marked, draws),
    j = 0..draws+1 (exact integers)."""
    terms = [
        math.comb(marked, j) * math.comb(population - marked, draws - j) for j in range(draws + 1)
    ]
    tails = [0] * (draws + 2)
    for j in range(draws, -1, -1):
        tails[j] = tails[j + 1] + terms[j]
    return tails


def _check_shape(n: int, degree: int, threshold: int) -> None:
    for name, value in (("n", n), ("degree", degree), ("threshold", threshold)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"the graph's {name} must be an int")
    if n < 2 or not 2 <= degree <= n - 1 or not degree + 1 < 2 * threshold <= 2 * (degree + 1):
        raise InvalidArgument(
            f"no graph of degree {degree} and threshold {threshold} on {n} participants"
        )


def graph_risk(n: int, degree: int, threshold: int, policy: GraphPolicy | None = None) -> GraphRisk:
    """Upper bounds on P(exposure) and P(failure from dropouts) for the graph H(degree, n) with
    neighbourhood threshold `threshold` (degree = n − 1, threshold = t: the complete graph)."""
    policy = policy or GraphPolicy()
    _check_shape(n, degree, threshold)
    c, dropped = policy.colluders(n), policy.dropouts(n)
    log2_all = _log2(math.comb(n - 1, degree))
    exposed = _tail_numerators(n - 1, c, degree)[threshold - 1]
    log2_exposure = _log2(n - c) + _log2(exposed) - log2_all if exposed and n > c else -math.inf
    starved = _tail_numerators(n - 1, min(dropped, n - 1), degree)[degree - threshold + 1]
    log2_fail = _log2(n) + _log2(starved) - log2_all if starved else -math.inf
    if degree < n - 1:  # a run of k/2 dropped in a row can cut the cycle (not the complete graph)
        half = degree // 2
        log2_run = _log2(n) + _log2(math.comb(dropped, half)) - _log2(math.comb(n, half))
        log2_fail = _log2_add(log2_fail, log2_run)
    # A union bound can pass 1; a probability cannot.
    return GraphRisk(n, degree, threshold, c, dropped, min(log2_exposure, 0.0), min(log2_fail, 0.0))


def smallest_threshold(n: int, degree: int, policy: GraphPolicy | None = None) -> int | None:
    """The smallest ℓ with P(exposure) ≤ target for this degree (None if even ℓ = k + 1 is not
    enough). Smaller is better for dropouts, so it is the one to pick."""
    policy = policy or GraphPolicy()
    _check_shape(n, degree, degree + 1)
    c = policy.colluders(n)
    tails = _tail_numerators(n - 1, c, degree)
    log2_all = _log2(math.comb(n - 1, degree)) - _log2(n - c)
    for threshold in range(degree // 2 + 1, degree + 2):
        exposed = tails[threshold - 1]
        if not exposed or _log2(exposed) - log2_all <= policy.log2_target:
            return threshold
    return None


@functools.lru_cache(maxsize=256)
def recommended_graph(n: int, policy: GraphPolicy | None = None) -> tuple[int, int] | None:
    """The smallest even degree k < n − 1, with the smallest threshold ℓ, that meets `policy`
    (default γ = 1/3, δ = 0.1, 2^-40); None when none does: use the complete graph."""
    policy = policy or GraphPolicy()
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InvalidArgument(f"a round needs an int of at least 2 participants, got {n!r}")
    for degree in range(2, n - 1, 2):
        threshold = smallest_threshold(n, degree, policy)
        if threshold is not None and graph_risk(n, degree, threshold, policy).meets(policy):
            return degree, threshold
    return None


def max_colluders(n: int, degree: int, threshold: int, policy: GraphPolicy | None = None) -> int:
    """The largest coalition c for which P(exposure) ≤ the policy's target (the collusion
    tolerance of a graph; the policy's own collusion fraction is not used)."""
    policy = policy or GraphPolicy()
    _check_shape(n, degree, threshold)
    log2_all = _log2(math.comb(n - 1, degree))

    def safe(c: int) -> bool:
        exposed = _tail_numerators(n - 1, c, degree)[threshold - 1]
        return not exposed or _log2(n - c) + _log2(exposed) - log2_all <= policy.log2_target

    low, high = 0, n - 1  # safe(0) holds (threshold - 1 >= 1 colluders are needed)
    while low < high:
        middle = (low + high + 1) // 2
        if safe(middle):
            low = middle
        else:
            high = middle - 1
    return low


def check_graph(
    n: int, degree: int, threshold: int, policy: GraphPolicy | None = None
) -> str | None:
    """Why a round's graph does not meet `policy` (one line), or None when it does."""
    policy = policy or GraphPolicy()
    try:
        risk = graph_risk(n, degree, threshold, policy)
    except InvalidArgument as exc:
        return str(exc)
    target = policy.log2_target
    if risk.log2_exposure > target:
        return (
            f"graph degree {degree}, threshold {threshold} for n = {n}: {risk.colluders} "
            f"colluding institutions (fraction {policy.collusion_fraction:.3g}) could learn an "
            f"honest update with probability up to 2^{risk.log2_exposure:.1f}, the policy "
            f"allows 2^{target:g}"
        )
    if risk.log2_dropout_failure > target:
        return (
            f"graph degree {degree}, threshold {threshold} for n = {n}: {risk.dropouts} "
            f"dropouts (fraction {policy.dropout_fraction:.3g}) could fail the round with "
            f"probability up to 2^{risk.log2_dropout_failure:.1f}, the policy allows "
            f"2^{target:g}"
        )
    return None


def check_round_graph(config: RoundConfig, policy: GraphPolicy | None = None) -> str | None:
    """What an agent checks before it sends anything: why this round's neighbour graph does
    not meet the institution's `policy` (one line), or None (also: no graph, i.e. the
    complete graph, whose rule t > n/2 and 2t > n + c is the round threshold's)."""
    if config.graph is None:
        return None
    return check_graph(config.n, config.graph.degree, config.graph.threshold, policy)


__all__ = [
    "DEFAULT_COLLUSION_FRACTION",
    "DEFAULT_DROPOUT_FRACTION",
    "DEFAULT_LOG2_TARGET",
    "GraphPolicy",
    "GraphRisk",
    "check_graph",
    "check_round_graph",
    "graph_risk",
    "max_colluders",
    "recommended_graph",
    "smallest_threshold",
]
