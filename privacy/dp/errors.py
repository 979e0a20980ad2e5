"""Errors of differentially private training and budget accounting.

`InvalidBudget` and `InvalidPrivacyParameter` are bad input (a setting to fix);
`BudgetExceeded` is the refusal of a round that would overspend the budget, raised before
any training step runs. Messages carry privacy parameters only, never data or gradients.
"""

from __future__ import annotations


class DPError(Exception):
    """Base of every error raised by `privacy.dp`."""


class InvalidPrivacyParameter(DPError, ValueError):
    """A noise multiplier, sampling rate, step count, delta or accountant kind is invalid."""


class InvalidBudget(InvalidPrivacyParameter):
    """A privacy budget that cannot be spent at all (epsilon <= 0, delta outside (0, 1))."""


class BudgetExceeded(DPError):
    """The planned training would spend more than the budget; nothing was trained.

    `spent` is epsilon spent so far, `projected` epsilon after the planned round, `budget`
    the limit (all at the same delta).
    """

    def __init__(self, message: str, *, spent: float, projected: float, budget: float) -> None:
        super().__init__(message)
        self.spent = spent
        self.projected = projected
        self.budget = budget


class UnsupportedMode(DPError, ValueError):
    """A grad-sample mode Opacus does not support for this model."""


__all__ = [
    "BudgetExceeded",
    "DPError",
    "InvalidBudget",
    "InvalidPrivacyParameter",
    "UnsupportedMode",
]
