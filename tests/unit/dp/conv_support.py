"""A small convolutional multi-task spec and batch, shared by the DP tests."""

from __future__ import annotations

import torch

from federation.spec import FederationSpec


def conv_spec(shape: tuple[int, int, int] = (2, 9, 7)) -> FederationSpec:
    """A two-stage conv encoder (residual blocks, GroupNorm, a projection), two tasks."""
    return FederationSpec.model_validate(
        {
            "name": "tiny_images",
            "tasks": [
                {"name": "digit", "kind": "multiclass", "n_classes": 10},
                {"name": "odd", "kind": "binary"},
            ],
            "model": {
                "encoder": {
                    "kind": "conv",
                    "input_shape": list(shape),
                    "channels": [8, 16],
                    "residual_blocks": 1,
                    "groups": 4,
                    "projection": 12,
                },
                "head": {"hidden": [5]},
            },
        }
    )


def conv_batch(
    spec: FederationSpec, n: int = 10
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, *spec.model.encoder.sample_shape, generator=gen)
    labels = {
        "digit": torch.randint(0, 10, (n,), generator=gen),
        "odd": torch.randint(0, 2, (n,), generator=gen).float(),
    }
    masks = {"digit": torch.rand(n, generator=gen) < 0.7, "odd": torch.rand(n, generator=gen) < 0.6}
    return x, labels, masks
