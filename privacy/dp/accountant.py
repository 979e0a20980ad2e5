"""The privacy accountant: Opacus' RDP or PRV accountant over a persisted history.

An institution's spend is the composition of every DP-SGD step it ever took; a step is a
Poisson-subsampled Gaussian mechanism described by (noise multiplier sigma, sampling rate
q). The history is kept as `(sigma, q, steps)` entries, one per round, so that it can be
stored, restored after a restart, signed and sent to the coordinator, and recomputed by
anyone with `epsilon_for` — the coordinator's recomputation uses the very same function.

RDP (Mironov 2017; Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled
Gaussian Mechanism", hereafter MTZ) is evaluated at *integer* orders only. There the RDP
of one step is the finite sum of MTZ Sec. 3.3,

    (α - 1) ε(α) = log A_α,   A_α = Σ_{k=0..α} C(α, k) (1-q)^(α-k) q^k exp((k² - k) / (2σ²)),

exact up to floating point; Opacus' `_compute_log_a_for_int_alpha` and Google's
`dp-accounting` compute the same sum (tests/unit/dp/test_accounting_crosscheck.py).
Fractional orders need an infinite series whose evaluation is a matter of stopping rules:
Opacus' stops at the first term below e^-30, `dp-accounting` 0.6 adds the absolute values
of the alternating terms (an upper bound, up to 2.8x too large at α = 1.5 for q = 0.65)
and gives up on some (q, σ, α). Checked against 40-digit quadrature of A_α (and of the
other direction B_α, which stays below A_α), Opacus' fractional values are right to 1e-11
at the demo's parameters; but a ledger should not rest on a series' stopping rule. Integer
orders cost at most 0.1% of ε at the demo's parameters, and orders up to 1024 keep small
budgets tight. The (ε, δ) conversion is Opacus' `get_privacy_spent` (Balle et al. 2020,
"Hypothesis testing interpretations and Rényi differential privacy", Thm. 21). `PRV` is
Opacus' `PRVAccountant` (Gopi, Lee, Wutschitz 2021) and reports its upper bound.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

import numpy as np
from numpy.typing import NDArray
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from scipy import special

from privacy.dp.errors import InvalidBudget, InvalidPrivacyParameter

#: Version of `Accountant.state_dict()`'s format.
STATE_VERSION: Final = 1
#: RDP orders: every integer from 2 to 128 (the optimum of every budget from ε = 0.5 up
#: lies there), then a few larger ones for very small budgets.
RDP_ORDERS: Final[tuple[int, ...]] = (
    *range(2, 129),
    160,
    192,
    256,
    384,
    512,
    768,
    1024,
)


class AccountantKind(enum.StrEnum):
    RDP = "rdp"
    PRV = "prv"


class HistoryEntry(NamedTuple):
    """`steps` DP-SGD steps at noise multiplier sigma and Poisson sampling rate q."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def _kind(kind: AccountantKind | str) -> AccountantKind:
    try:
        return AccountantKind(kind)
    except ValueError:
        raise InvalidPrivacyParameter(
            f"accountant: unknown kind '{kind}' (use one of: rdp, prv)"
        ) from None


def check_entry(noise_multiplier: float, sample_rate: float, steps: int) -> HistoryEntry:
    """A validated history entry (sigma >= 0, 0 < q <= 1, steps >= 0)."""
    if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise InvalidPrivacyParameter(
            f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}"
        )
    if not math.isfinite(sample_rate) or not 0.0 < sample_rate <= 1.0:
        raise InvalidPrivacyParameter(f"sample_rate must be in (0, 1], got {sample_rate}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise InvalidPrivacyParameter(f"steps must be a whole number >= 0, got {steps}")
    return HistoryEntry(float(noise_multiplier), float(sample_rate), int(steps))


#: Significant binary digits of a published sampling rate (see `published_sample_rate`).
SAMPLE_RATE_GRID_BITS: Final = 4


def published_sample_rate(sample_rate: float) -> float:
    """q rounded *up* to the published grid: 4 significant binary digits, m · 2^e with
    m in {8, 9, ..., 16} / 16, so each grid point is at most 1.125 times the one below.

    q = B / N reveals an institution's training-set size N; only the rounded-up value
    ever leaves the agent, and the agent samples and is charged at that value. The RDP
    (and PLD) of the subsampled Gaussian grow with q (A_α is convex in q with zero slope
    at 0), so charging the rounded-up q never under-counts, and anyone recomputing ε from
    the published values gets exactly the agent's figure. Grid points are dyadic
    rationals, exact in binary floating point: `published_sample_rate(q) == q` tells
    whether q is on the grid.
    """
    if not math.isfinite(sample_rate) or not 0.0 < sample_rate <= 1.0:
        raise InvalidPrivacyParameter(f"sample_rate must be in (0, 1], got {sample_rate}")
    mantissa, exponent = math.frexp(sample_rate)  # q = mantissa * 2^exponent, mantissa in [.5, 1)
    scale = 2**SAMPLE_RATE_GRID_BITS
    return min(1.0, math.ldexp(math.ceil(mantissa * scale) / scale, exponent))


def check_delta(delta: float) -> float:
    if not math.isfinite(delta) or not 0.0 < delta < 1.0:
        raise InvalidBudget(f"delta must be in (0, 1), got {delta}")
    return float(delta)


def _merged(history: Iterable[HistoryEntry]) -> list[tuple[float, float, int]]:
    """Entries with equal (sigma, q) merged: composition is commutative, so epsilon is the
    same, and the PRV accountant's cost grows with the number of distinct mechanisms."""
    steps: dict[tuple[float, float], int] = {}
    for entry in history:
        if entry.steps > 0:
            key = (entry.noise_multiplier, entry.sample_rate)
            steps[key] = steps.get(key, 0) + entry.steps
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def _log_a_integer_orders(q: float, sigma: float) -> NDArray[np.float64]:
    """log A_α of one step at every order of `RDP_ORDERS` (MTZ Sec. 3.3, integer α).

    The sum over k is taken in log space (log-sum-exp), with the binomial coefficients
    from log-gamma: the same terms as Opacus' `_compute_log_a_for_int_alpha`, vectorised.
    """
    out = np.empty(len(RDP_ORDERS), dtype=np.float64)
    log_q, log_1mq = math.log(q), math.log1p(-q)
    for i, alpha in enumerate(RDP_ORDERS):
        k = np.arange(alpha + 1, dtype=np.float64)
        log_binom = (
            special.gammaln(alpha + 1) - special.gammaln(k + 1) - special.gammaln(alpha - k + 1)
        )
        terms = log_binom + k * log_q + (alpha - k) * log_1mq + (k * k - k) / (2 * sigma**2)
        out[i] = special.logsumexp(terms)
    return out


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> NDArray[np.float64]:
    """RDP ε(α) of one step at every order of `RDP_ORDERS` (cached: the slow part).

    q = 1 is the plain Gaussian mechanism, ε(α) = α / (2σ²) (Mironov 2017, Prop. 7).
    """
    orders = np.asarray(RDP_ORDERS, dtype=np.float64)
    if sample_rate >= 1.0:
        out = orders / (2 * noise_multiplier**2)
    else:
        out = _log_a_integer_orders(sample_rate, noise_multiplier) / (orders - 1)
    out = np.asarray(out, dtype=np.float64)
    out.flags.writeable = False
    return out


def _rdp_epsilon(merged: list[tuple[float, float, int]], delta: float) -> float:
    """ε at `delta` of a merged history: RDP summed over steps (composition, Mironov 2017
    Prop. 1), converted with Opacus' `get_privacy_spent`."""
    rdp = sum(_rdp_per_step(q, sigma) * steps for sigma, q, steps in merged)
    eps, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def epsilon_for(
    history: Iterable[HistoryEntry | tuple[float, float, int]],
    delta: float,
    kind: AccountantKind | str = AccountantKind.RDP,
) -> float:
    """Epsilon spent by a history at `delta`, by the accountant of that kind.

    Stateless: the agent's accountant and the coordinator's recomputation both call this.
    A step without noise (sigma = 0) has no finite epsilon: the result is `inf`.
    """
    entries = [check_entry(*entry) for entry in history]
    check_delta(delta)
    merged = _merged(entries)
    if not merged:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in merged):
        return math.inf
    if _kind(kind) is AccountantKind.RDP:
        return _rdp_epsilon(merged, delta)
    accountant = PRVAccountant()
    accountant.history = merged
    return float(accountant.get_epsilon(delta=delta))


class Accountant:
    """An institution's privacy accountant: its history, and epsilon from it.

    `record` adds a round after it trained; `projected_epsilon` says what a planned round
    would bring the total to. `state_dict()` is plain JSON (kind and history), and
    `load_state_dict` restores it, so a restarted agent continues the same budget.
    """

    def __init__(
        self,
        kind: AccountantKind | str = AccountantKind.RDP,
        history: Iterable[HistoryEntry | tuple[float, float, int]] = (),
    ) -> None:
        self.kind = _kind(kind)
        self._history: list[HistoryEntry] = [check_entry(*entry) for entry in history]

    @property
    def history(self) -> tuple[HistoryEntry, ...]:
        return tuple(self._history)

    @property
    def steps(self) -> int:
        return sum(entry.steps for entry in self._history)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Add the steps a round actually took."""
        self._history.append(check_entry(noise_multiplier, sample_rate, steps))

    def epsilon(self, delta: float) -> float:
        return epsilon_for(self._history, delta, self.kind)

    def projected_epsilon(
        self, noise_multiplier: float, sample_rate: float, steps: int, delta: float
    ) -> float:
        """Epsilon after the history plus `steps` more steps at (sigma, q)."""
        planned = check_entry(noise_multiplier, sample_rate, steps)
        return epsilon_for([*self._history, planned], delta, self.kind)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "kind": self.kind.value,
            "history": [list(entry) for entry in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()`; refuses another kind or a malformed history."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise InvalidPrivacyParameter(
                f"accountant state: expected version {STATE_VERSION}, got "
                f"{state.get('version') if isinstance(state, Mapping) else type(state).__name__}"
            )
        kind = _kind(str(state.get("kind")))
        if kind is not self.kind:
            raise InvalidPrivacyParameter(
                f"accountant state is of kind '{kind}', this accountant is '{self.kind}'"
            )
        raw = state.get("history")
        if not isinstance(raw, list) or not all(
            isinstance(e, list | tuple) and len(e) == 3 for e in raw
        ):
            raise InvalidPrivacyParameter("accountant state: history must be a list of triples")
        self._history = [check_entry(float(s), float(q), e) for s, q, e in raw]

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Accountant:
        accountant = cls(_kind(str(state.get("kind"))))
        accountant.load_state_dict(state)
        return accountant

    def __repr__(self) -> str:
        return f"Accountant(kind={self.kind.value!r}, rounds={len(self._history)})"


__all__ = [
    "RDP_ORDERS",
    "SAMPLE_RATE_GRID_BITS",
    "Accountant",
    "AccountantKind",
    "HistoryEntry",
    "check_delta",
    "check_entry",
    "epsilon_for",
    "published_sample_rate",
]
