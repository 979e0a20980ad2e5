"""The `conv` encoder: a small residual convolutional network over images.

    input (channels, height, width)
    stem:      conv 3x3 -> GroupNorm -> activation                       (channels[0])
    stage i:   [i > 0: conv 3x3 stride 2 -> GroupNorm -> activation]     (channels[i])
               residual_blocks x (conv 3x3 -> GN -> act -> conv 3x3 -> GN, + input, act)
    pool:      the mean over the remaining positions                     (channels[-1])
    [projection: linear -> activation]                                   (projection)

GroupNorm (Wu and He 2018) rather than BatchNorm: it normalises each sample on its own, so
a sample's output (and gradient) never depends on the other samples of its batch, which
DP-SGD's per-sample clipping needs (BatchNorm's batch statistics would mix them). The
convolutions have no bias: the GroupNorm after each one has its own. Residual blocks
(He et al. 2016) keep a deeper stack trainable.
"""

from __future__ import annotations

from typing import Final, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from federation.encoders.base import ACTIVATIONS, Activation, EncoderBase

KERNEL: Final = 3
#: The largest encoder a spec may ask for (parameters); a typo of a width is an error
#: rather than a model that fills the agents' memory.
MAX_PARAMETERS: Final = 100_000_000


def _conv_norm(c_in: int, c_out: int, groups: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, KERNEL, stride=stride, padding=KERNEL // 2, bias=False),
        nn.GroupNorm(groups, c_out),
    ]


class ResidualBlock(nn.Module):
    """conv -> GN -> act -> conv -> GN, plus the input, then act (widths unchanged)."""

    def __init__(self, width: int, groups: int, activation: Activation) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_norm(width, width, groups, 1),
            ACTIVATIONS[activation](),
            *_conv_norm(width, width, groups, 1),
        )
        self.out = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.body(x) + x)
        return out


class ConvEncoder(nn.Module):
    """The module of a `ConvEncoderSpec`; takes (batch, C, H, W) or flat (batch, C*H*W)."""

    def __init__(self, spec: ConvEncoderSpec) -> None:
        super().__init__()
        self.shape = spec.input_shape
        act = ACTIVATIONS[spec.activation]
        layers: list[nn.Module] = [
            *_conv_norm(spec.input_shape[0], spec.channels[0], spec.groups, 1),
            act(),
        ]
        previous = spec.channels[0]
        for i, width in enumerate(spec.channels):
            if i > 0:
                layers += [*_conv_norm(previous, width, spec.groups, 2), act()]
            layers += [
                ResidualBlock(width, spec.groups, spec.activation)
                for _ in range(spec.residual_blocks)
            ]
            previous = width
        self.body = nn.Sequential(*layers)
        self.projection: nn.Module = (
            nn.Sequential(nn.Linear(previous, spec.projection), act())
            if spec.projection is not None
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.reshape(x.shape[0], *self.shape)
        z = self.body(x).mean(dim=(2, 3))
        out: torch.Tensor = self.projection(z)
        return out


class ConvEncoderSpec(EncoderBase):
    """A residual convolutional network over images (see the module docstring)."""

    kind: Literal["conv"] = "conv"
    input_shape: tuple[int, int, int] = Field(
        description="(channels, height, width) of one image, after the agent's fixed resize."
    )
    channels: tuple[int, ...] = Field(
        default=(32, 64),
        min_length=1,
        max_length=8,
        description="Width of each stage; every stage after the first halves height and width.",
    )
    residual_blocks: int = Field(default=1, ge=0, le=16, description="Residual blocks per stage.")
    groups: int = Field(default=8, ge=1, le=1024, description="GroupNorm groups per layer.")
    projection: int | None = Field(
        default=None,
        ge=1,
        le=65_536,
        description="Width of a linear layer after pooling; unset: the heads read the pooled "
        "channels[-1] features.",
    )
    activation: Activation = Activation.RELU

    @field_validator("input_shape")
    @classmethod
    def _image_shape(cls, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        channels, height, width = shape
        if not 1 <= channels <= 64:
            raise ValueError(f"input_shape: {channels} channels; between 1 and 64 are supported")
        if not (1 <= height <= 4096 and 1 <= width <= 4096):
            raise ValueError(
                f"input_shape: an image of {height} x {width}; height and width must be "
                "between 1 and 4096"
            )
        return shape

    @field_validator("channels")
    @classmethod
    def _widths(cls, widths: tuple[int, ...]) -> tuple[int, ...]:
        if any(width < 1 or width > 4096 for width in widths):
            raise ValueError(f"channels {list(widths)}: each stage width must be 1..4096")
        return widths

    @model_validator(mode="after")
    def _groups_divide_widths(self) -> ConvEncoderSpec:
        odd = [width for width in self.channels if width % self.groups]
        if odd:
            raise ValueError(
                f"groups = {self.groups} must divide every stage width, and does not divide "
                f"{odd} (GroupNorm splits a layer's channels into equal groups)"
            )
        count = self.parameter_count()
        if count > MAX_PARAMETERS:
            raise ValueError(
                f"the encoder would have {count:,} parameters; at most {MAX_PARAMETERS:,}"
            )
        return self

    @property
    def output_dim(self) -> int:
        return self.projection if self.projection is not None else self.channels[-1]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.input_shape

    def parameter_count(self) -> int:
        k2 = KERNEL * KERNEL

        def conv_norm(c_in: int, c_out: int) -> int:
            return c_in * c_out * k2 + 2 * c_out  # conv weight (no bias), GN weight and bias

        total = conv_norm(self.input_shape[0], self.channels[0])
        previous = self.channels[0]
        for i, width in enumerate(self.channels):
            if i > 0:
                total += conv_norm(previous, width)
            total += self.residual_blocks * 2 * conv_norm(width, width)
            previous = width
        if self.projection is not None:
            total += previous * self.projection + self.projection
        return total

    def build(self) -> nn.Module:
        return ConvEncoder(self)


__all__ = ["ConvEncoder", "ConvEncoderSpec", "ResidualBlock"]
