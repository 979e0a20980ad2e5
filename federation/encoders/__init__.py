"""The encoder kinds a federation spec can name: `EncoderSpec`, a discriminated union.

Each kind is one file of this package (`mlp.py`, `conv.py`) holding its spec (a subclass
of `EncoderBase`: parameter count and output width from the spec alone, and the module it
builds). Adding a kind, e.g. a small transformer over patch sequences, is that file plus
its class in the union below; no existing spec changes, so no fingerprint changes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from federation.encoders.base import ACTIVATIONS, Activation, EncoderBase
from federation.encoders.conv import ConvEncoderSpec
from federation.encoders.mlp import MLPEncoderSpec, linear_stack, linear_stack_size

EncoderSpec = Annotated[MLPEncoderSpec | ConvEncoderSpec, Field(discriminator="kind")]

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "ConvEncoderSpec",
    "EncoderBase",
    "EncoderSpec",
    "MLPEncoderSpec",
    "linear_stack",
    "linear_stack_size",
]
