"""Typed errors of the agent: bad local input is told apart from our faults.

`DataError` and `ConfigError` are the institution's input (a mapping, a file, a budget
setting) and always name the column or setting at fault. Privacy refusals come from
`privacy.dp.errors` (`BudgetExceeded`) and are re-raised unchanged.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error raised by `agent/`."""


class ConfigError(AgentError, ValueError):
    """A setting of the agent's configuration is wrong (names the setting)."""


class DataError(AgentError, ValueError):
    """The local data or its mapping cannot be used (names the column or setting)."""


class TrainingError(AgentError):
    """Local training could not produce an update (e.g. the loss became non-finite)."""


__all__ = ["AgentError", "ConfigError", "DataError", "TrainingError"]
