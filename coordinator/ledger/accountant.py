"""The coordinator's own privacy accountant, independent of the agents' code.

It deliberately does not import `privacy.dp` (the agents' accountant): an auditor must be
able to check what institutions report with code they did not write. It replays an
institution's whole reported history through Opacus' accountants (RDP: Mironov 2017 with
the Poisson-subsampled Gaussian of Mironov, Talwar & Zhang 2019; PRV: Gopi, Lee & Wutschitz
2021), matching the accountant the federation's DP spec names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from coordinator.errors import InvalidInput
from federation.spec import Accountant

#: A report is flagged when reported and recomputed ε differ by more than 1% (relative)
#: and 1e-3 (absolute): far above floating-point and PRV discretisation noise (PRV's
#: default eps_error is 0.01 absolute, so PRV uses that as its absolute tolerance).
MISMATCH_RELATIVE_TOLERANCE: Final = 0.01
MISMATCH_ABSOLUTE_TOLERANCE: Final = {Accountant.RDP: 1e-3, Accountant.PRV: 2e-2}
#: PRV's own approximation error bound on ε.
PRV_EPS_ERROR: Final = 0.01
#: RDP orders of the replay: integers only, as the agents' ledger (privacy/dp/accountant.py,
#: kept in step by a test, not imported): at integer orders the subsampled Gaussian's RDP is
#: a finite sum (Mironov, Talwar & Zhang 2019, Sec. 3.3); fractional orders rest on a series
#: whose stopping rule implementations disagree on (docs/multitask.md, "Accountant").
RDP_ORDERS: Final[tuple[int, ...]] = (*range(2, 129), 160, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class MechanismStep:
    """One reported round of DP-SGD: `steps` steps of the subsampled Gaussian mechanism."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise InvalidInput("noise_multiplier must be a positive finite number")
        if not (math.isfinite(self.sample_rate) and 0 < self.sample_rate <= 1):
            raise InvalidInput("sample_rate must be in (0, 1]")
        if self.steps < 0:
            raise InvalidInput("steps must not be negative")


def recompute_epsilon(kind: Accountant, history: Sequence[MechanismStep], delta: float) -> float:
    """ε after the whole `history`, at `delta`, by the named accountant."""
    if not 0 < delta < 1:
        raise InvalidInput("delta must be in (0, 1)")
    entries = [
        (step.noise_multiplier, step.sample_rate, step.steps) for step in history if step.steps
    ]
    if not entries:
        return 0.0
    # Imported here: it pulls in torch, which only the ledger needs (keeps start-up fast).
    from opacus.accountants import PRVAccountant, RDPAccountant

    if kind is Accountant.RDP:
        rdp = RDPAccountant()
        rdp.history = _merge_repeated(entries)
        return float(rdp.get_epsilon(delta=delta, alphas=[float(a) for a in RDP_ORDERS]))
    prv = PRVAccountant()
    prv.history = entries
    return float(prv.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))


def _merge_repeated(entries: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """One entry per (σ, q) with the steps summed: exact for RDP, whose per-step cost is
    the same for equal (σ, q) and composes additively (Mironov 2017, Prop. 1), and it
    keeps the replay's cost from growing with the number of rounds."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, q, n in entries:
        steps[(sigma, q)] = steps.get((sigma, q), 0) + n
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def is_mismatch(kind: Accountant, reported: float, recomputed: float) -> bool:
    return not math.isclose(
        reported,
        recomputed,
        rel_tol=MISMATCH_RELATIVE_TOLERANCE,
        abs_tol=MISMATCH_ABSOLUTE_TOLERANCE[kind],
    )
