"""Book-keeping clipping (`bk`): the same clipped sums as Opacus, from one backward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agent.loss import per_sample_loss
from federation.model import build_model
from federation.spec import FederationSpec
from privacy.dp import PrivateTraining, UnsupportedMode
from privacy.dp.bookkeeping import BookKeepingClipper
from tests.unit.agent_training.conftest import small_spec

C = 0.3


def multitask_batch(
    spec: FederationSpec, n: int = 16
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(n, spec.model.encoder.input_dim, generator=gen) * 3
    labels = {
        "flag": torch.randint(0, 2, (n,), generator=gen).float(),
        "grade": torch.randint(0, 3, (n,), generator=gen),
        "level": torch.randn(n, generator=gen),
    }
    # Some samples unlabelled for each task; "grade" labelled for two samples only.
    masks = {
        "flag": torch.rand(n, generator=gen) < 0.7,
        "grade": torch.arange(n) < 2,
        "level": torch.rand(n, generator=gen) < 0.5,
    }
    return x, labels, masks


def clipped_update(spec: FederationSpec, mode: str, freeze: str | None = None) -> torch.Tensor:
    """One step at lr 1, expected batch 1, no noise: minus the clipped per-sample sum."""
    x, labels, masks = multitask_batch(spec)
    model = build_model(spec)
    if freeze is not None:
        model.heads[freeze].requires_grad_(False)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    engine = PrivateTraining(
        model,
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=C,
        expected_batch_size=1.0,
        mode=mode,
        noise_seed=0,
    )
    normalisers = dict.fromkeys(labels, 2.0)
    engine.step(x, lambda out: per_sample_loss(spec, out, labels, masks, normalisers))
    engine.close()
    return before - torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("freeze", [None, "grade"])
def test_multitask_clipped_sum_equals_opacus_per_sample_gradients(freeze: str | None) -> None:
    spec = small_spec(input_features=3)
    expected = clipped_update(spec, "hooks", freeze)
    got = clipped_update(spec, "bk", freeze)
    assert expected.abs().max() > 0
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)


def test_norms_are_the_per_sample_gradient_norms() -> None:
    spec = small_spec(input_features=3)
    x, labels, masks = multitask_batch(spec, n=6)
    normalisers = dict.fromkeys(labels, 1.0)
    model = build_model(spec)
    expected = []
    for i in range(len(x)):
        model.zero_grad()
        one = {t: y[i : i + 1] for t, y in labels.items()}
        one_mask = {t: m[i : i + 1] for t, m in masks.items()}
        per_sample_loss(spec, model(x[i : i + 1]), one, one_mask, normalisers).sum().backward()
        expected.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm())
    clipper = BookKeepingClipper(model, max_grad_norm=C)
    with clipper.recording():
        outputs = model(x)
    norms = clipper.backward(per_sample_loss(spec, outputs, labels, masks, normalisers))
    assert torch.allclose(norms, torch.stack(expected), rtol=1e-5)
    # Evaluation outside a step records nothing and leaves gradients alone.
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model(x)
    assert all(p.grad is None for p in model.parameters())


def test_a_layer_the_loss_does_not_reach_gets_a_zero_sum() -> None:
    model = nn.ModuleDict({"used": nn.Linear(3, 1), "idle": nn.Linear(3, 1)})
    clipper = BookKeepingClipper(model, max_grad_norm=C)
    x = torch.randn(4, 3)
    with clipper.recording():
        out = model["used"](x)
    clipper.backward(out[:, 0] ** 2)
    assert model["used"].weight.grad is not None
    assert model["used"].weight.grad.abs().sum() > 0
    assert model["idle"].weight.grad is not None
    assert torch.equal(model["idle"].weight.grad, torch.zeros_like(model["idle"].weight))


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "1 is LayerNorm"),
        (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False)), "buffers"),
        (nn.Sequential(nn.Conv1d(1, 2, 3)), "0 is Conv1d"),
    ],
)
def test_layers_outside_the_closed_form_are_refused_by_name(module: nn.Module, names: str) -> None:
    with pytest.raises(UnsupportedMode, match=names):
        PrivateTraining(
            module,
            torch.optim.SGD(module.parameters(), lr=0.1),
            noise_multiplier=1.0,
            max_grad_norm=C,
            expected_batch_size=4.0,
            mode="bk",
        )


def test_shared_parameters_and_sequence_inputs_are_refused() -> None:
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    with pytest.raises(UnsupportedMode, match="shared parameters"):
        BookKeepingClipper(tied, C)
    twice = nn.Linear(4, 4)
    clipper = BookKeepingClipper(twice, C)
    with pytest.raises(UnsupportedMode, match="ran twice"), clipper.recording():
        twice(twice(torch.randn(2, 4)))
    with pytest.raises(UnsupportedMode, match=r"\(batch, features\)"), clipper.recording():
        twice(torch.randn(2, 5, 4))
    clipper.close()
    twice(twice(torch.randn(2, 4)))  # hooks removed: the module is as it was given
