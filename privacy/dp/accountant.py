"""The privacy accountant: Opacus' RDP or PRV accountant over a persisted history.

An institution's spend is the composition of every DP-SGD step it ever took; a step is a
Poisson-subsampled Gaussian mechanism described by (noise multiplier sigma, sampling rate
q). The history is kept as `(sigma, q, steps)` entries, one per round, so that it can be
stored, restored after a restart, signed and sent to the coordinator, and recomputed by
anyone with `epsilon_for` — the coordinator's recomputation uses the very same function.

The arithmetic is Opacus': `RDPAccountant` (Mironov 2017; Mironov, Talwar, Zhang 2019,
"Rényi Differential Privacy of the Sampled Gaussian Mechanism") or `PRVAccountant`
(Gopi, Lee, Wutschitz 2021, "Numerical Composition of Differential Privacy"). We never
re-derive a bound; we only feed them the history.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

import numpy as np
from numpy.typing import NDArray
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from privacy.dp.errors import InvalidBudget, InvalidPrivacyParameter

#: Version of `Accountant.state_dict()`'s format.
STATE_VERSION: Final = 1


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


@functools.lru_cache(maxsize=4096)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> NDArray[np.float64]:
    """Opacus' RDP of one step at its default orders (cached: the slow part of accounting).

    `compute_rdp(steps=n)` is `compute_rdp(steps=1) * n` in Opacus, so scaling the cached
    vector gives exactly what `RDPAccountant` computes.
    """
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=RDPAccountant.DEFAULT_ALPHAS,
    )
    out = np.asarray(rdp, dtype=np.float64)
    out.flags.writeable = False
    return out


def _rdp_epsilon(merged: list[tuple[float, float, int]], delta: float) -> float:
    """`RDPAccountant.get_epsilon` over a merged history, from cached per-step RDP."""
    rdp = sum(_rdp_per_step(q, sigma) * steps for sigma, q, steps in merged)
    eps, _ = rdp_analysis.get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
    )
    return float(eps)


def epsilon_for(
    history: Iterable[HistoryEntry | tuple[float, float, int]],
    delta: float,
    kind: AccountantKind | str = AccountantKind.RDP,
) -> float:
    """Epsilon spent by a history at `delta`, with Opacus' accountant of that kind.

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
    "Accountant",
    "AccountantKind",
    "HistoryEntry",
    "check_delta",
    "check_entry",
    "epsilon_for",
]
