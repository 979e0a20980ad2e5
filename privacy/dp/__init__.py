"""Differentially private local training and its budget (Opacus underneath).

- `engine.PrivateTraining`: per-sample clipping and Gaussian noise (DP-SGD) on
  Poisson-sampled batches, with Opacus' grad-sample modes (hooks, functorch, ew, ghost);
- `accountant.Accountant` / `epsilon_for`: RDP or PRV accounting over a persisted history;
- `budget`: the noise that fits a budget, the projected cost of a round, and the
  `BudgetExceeded` refusal before any step would overspend.
"""

from privacy.dp.accountant import (
    Accountant,
    AccountantKind,
    HistoryEntry,
    epsilon_for,
    published_sample_rate,
)
from privacy.dp.budget import RoundPlan, check_round, noise_for_budget
from privacy.dp.engine import GRAD_SAMPLE_MODES, GradSampleMode, PrivateTraining
from privacy.dp.errors import (
    BudgetExceeded,
    DPError,
    InvalidBudget,
    InvalidPrivacyParameter,
    UnsupportedMode,
)

__all__ = [
    "GRAD_SAMPLE_MODES",
    "Accountant",
    "AccountantKind",
    "BudgetExceeded",
    "DPError",
    "GradSampleMode",
    "HistoryEntry",
    "InvalidBudget",
    "InvalidPrivacyParameter",
    "PrivateTraining",
    "RoundPlan",
    "UnsupportedMode",
    "check_round",
    "epsilon_for",
    "noise_for_budget",
    "published_sample_rate",
]
