"""The multi-task model built from a spec: one shared encoder, one head per task.

`build_model(spec)` gives the same initial weights on every machine for the same
`model.init_seed` (a private CPU generator, whatever the global RNG state or device).
`model_vector` / `load_model_vector` move the parameters to and from the flat
**model layout** of `federation.layout`, refusing a vector of any other layout.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from federation.encoders import linear_stack
from federation.errors import LayoutMismatch
from federation.layout import ENCODER, HEAD_PREFIX, ParameterLayout
from federation.spec import FederationSpec


class MultiTaskModel(nn.Module):
    """`forward(x)` returns every task's raw output (logits, or the regression value)."""

    def __init__(self, spec: FederationSpec) -> None:
        super().__init__()
        enc = spec.model.encoder
        self.task_names: tuple[str, ...] = spec.task_names
        self.encoder = enc.build()
        self.heads = nn.ModuleDict(
            {
                task.name: linear_stack(
                    (enc.output_dim, *spec.model.head.hidden, task.output_dim),
                    enc.activation,
                    0.0,
                    False,
                )
                for task in spec.tasks
            }
        )
        if spec.model.head.zero_init:
            for head in self.heads.values():
                assert isinstance(head, nn.Sequential)
                output = head[-1]
                assert isinstance(output, nn.Linear)
                nn.init.zeros_(output.weight)
                nn.init.zeros_(output.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        return {name: self.heads[name](z) for name in self.task_names}

    def part(self, name: str) -> nn.Module:
        """The module behind a model-layout segment: `encoder` or `head.<task>`."""
        if name == ENCODER:
            return self.encoder
        if name.startswith(HEAD_PREFIX) and name[len(HEAD_PREFIX) :] in self.heads:
            return self.heads[name[len(HEAD_PREFIX) :]]
        raise KeyError(f"the model has no part '{name}'")


def build_model(spec: FederationSpec) -> MultiTaskModel:
    """The model with deterministic initial weights from `spec.model.init_seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.model.init_seed)
        model = MultiTaskModel(spec)
    layout = ParameterLayout.model(spec)
    for segment in layout.segments:
        size = sum(p.numel() for p in model.part(segment.name).parameters())
        if size != segment.length:  # a layout/model disagreement is our bug, say so loudly
            raise LayoutMismatch(
                f"part '{segment.name}' has {size} parameters, layout {segment.length}"
            )
    return model


def _parts(
    model: MultiTaskModel, layout: ParameterLayout
) -> Iterator[tuple[int, int, list[nn.Parameter]]]:
    for segment in layout.segments:
        yield segment.offset, segment.end, list(model.part(segment.name).parameters())


def model_vector(model: MultiTaskModel, layout: ParameterLayout) -> NDArray[np.float64]:
    """The model's parameters as one float64 vector of the model layout."""
    out = np.empty(layout.length, dtype=np.float64)
    with torch.no_grad():
        for start, end, params in _parts(model, layout):
            flat = torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in params])
            if flat.numel() != end - start:
                raise LayoutMismatch("model does not fit the layout")
            out[start:end] = flat.numpy()
    return out


def load_model_vector(
    model: MultiTaskModel,
    layout: ParameterLayout,
    vector: NDArray[np.generic],
    *,
    fingerprint: str | None = None,
) -> None:
    """Overwrite the model's parameters from a model-layout vector (checked first)."""
    if layout.kind != "model":
        raise LayoutMismatch(f"a model loads a model-layout vector, not a {layout.kind} one")
    layout.check(vector, fingerprint=fingerprint)
    with torch.no_grad():
        for start, end, params in _parts(model, layout):
            offset = start
            for p in params:
                n = p.numel()
                chunk = torch.from_numpy(np.asarray(vector[offset : offset + n], dtype=np.float64))
                p.copy_(chunk.reshape(p.shape).to(p.dtype))
                offset += n
            if offset != end:
                raise LayoutMismatch("model does not fit the layout")
