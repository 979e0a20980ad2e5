"""What every encoder kind shares: the spec base class and the activations.

An encoder kind is one file in this package: a frozen pydantic model with a literal `kind`
(the discriminator of `federation.encoders.EncoderSpec`), that says from the spec alone how
many parameters it has (`parameter_count`, so the layout needs no torch model) and how wide
its output is (`output_dim`, the heads' input), and builds its `torch.nn.Module` (`build`).
`federation.model` creates every module under one seeded generator, so the initial weights
of any kind are deterministic from `model.init_seed`.
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict
from torch import nn


class Activation(enum.StrEnum):
    RELU = "relu"
    GELU = "gelu"
    TANH = "tanh"


ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    Activation.RELU: nn.ReLU,
    Activation.GELU: nn.GELU,
    Activation.TANH: nn.Tanh,
}


class EncoderBase(BaseModel):
    """The contract of an encoder kind (frozen; unknown fields are errors)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Every kind also declares `kind: Literal[...]` and `activation: Activation` (the heads'
    # hidden layers use it) as its own fields: where a field sits in the class is where it
    # sits in the spec's canonical JSON, and so in its fingerprint.

    @property
    def output_dim(self) -> int:
        """Width of the representation the task heads read."""
        raise NotImplementedError

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample the encoder reads (without the batch dimension)."""
        raise NotImplementedError

    def parameter_count(self) -> int:
        """Parameters of the module `build()` makes, computed from the spec alone."""
        raise NotImplementedError

    def build(self) -> nn.Module:
        """A fresh module (weights from torch's current global generator)."""
        raise NotImplementedError


__all__ = ["ACTIVATIONS", "Activation", "EncoderBase"]
