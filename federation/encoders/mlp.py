"""The `mlp` encoder: a multilayer perceptron over a fixed-width feature vector (tables)."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, field_validator
from torch import nn

from federation.encoders.base import ACTIVATIONS, Activation, EncoderBase


def linear_stack(
    widths: tuple[int, ...], activation: Activation, dropout: float, last_act: bool
) -> nn.Sequential:
    """Linear layers between consecutive widths, an activation (and dropout) between them
    and, with `last_act`, after the last one too."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or last_act:
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0.0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def linear_stack_size(widths: tuple[int, ...]) -> int:
    """Parameters of Linear layers between consecutive widths (weights and biases)."""
    return sum(a * b + b for a, b in itertools.pairwise(widths))


class MLPEncoderSpec(EncoderBase):
    """A multilayer perceptron over a fixed-width feature vector."""

    # Field order is part of the spec's canonical JSON (its fingerprint): keep it.
    kind: Literal["mlp"] = "mlp"
    input_dim: int = Field(ge=1, le=1_000_000)
    hidden: tuple[int, ...] = Field(default=(64, 32), min_length=1, max_length=16)
    activation: Activation = Activation.RELU
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, widths: tuple[int, ...]) -> tuple[int, ...]:
        if any(width < 1 or width > 65_536 for width in widths):
            raise ValueError("hidden layer widths must be between 1 and 65536")
        return widths

    @property
    def output_dim(self) -> int:
        return self.hidden[-1]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.input_dim,)

    def parameter_count(self) -> int:
        return linear_stack_size((self.input_dim, *self.hidden))

    def build(self) -> nn.Module:
        return linear_stack((self.input_dim, *self.hidden), self.activation, self.dropout, True)


__all__ = ["MLPEncoderSpec", "linear_stack", "linear_stack_size"]
