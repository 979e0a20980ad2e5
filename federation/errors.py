"""Typed errors of `federation/`: what coordinator and agents can disagree about."""

from __future__ import annotations


class FederationError(Exception):
    """Base of every error raised by `federation/`."""


class LayoutMismatch(FederationError, ValueError):
    """A vector or model does not fit the parameter layout it was offered to."""


class AggregationError(FederationError, ValueError):
    """Sums that cannot become a model (wrong segments, negative counters, non-finite)."""
