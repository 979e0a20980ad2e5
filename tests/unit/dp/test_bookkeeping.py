"""Book-keeping clipping (`bk`): the same clipped sums as Opacus, from one backward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agent.loss import per_sample_loss
from federation.model import build_model
from federation.spec import FederationSpec
from privacy.dp import PrivateTraining, UnsupportedMode
from privacy.dp.bookkeeping import BookKeepingClipper, _conv_patches, gram_is_cheaper
from privacy.dp.noise import GaussianNoise
from tests.unit.agent_training.conftest import small_spec
from tests.unit.dp.conv_support import conv_batch, conv_spec

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
        noise=GaussianNoise.predictable_from_seed(0),
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
        (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), "groups = 2"),
        (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect")), "reflect"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), "buffers"),
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
    conv = nn.Conv2d(1, 2, 3)
    with (
        pytest.raises(UnsupportedMode, match="height, width"),
        BookKeepingClipper(conv, C).recording(),
    ):
        conv(torch.randn(1, 5, 5))
    clipper.close()
    twice(twice(torch.randn(2, 4)))  # hooks removed: the module is as it was given


# -- convolutional encoders: Conv2d and GroupNorm -------------------------------------------


def conv_update(spec: FederationSpec, mode: str, freeze_encoder_stem: bool = False) -> torch.Tensor:
    """As `clipped_update`, for a conv encoder with a projection and a hidden head layer."""
    x, labels, masks = conv_batch(spec)
    model = build_model(spec)
    if freeze_encoder_stem:
        model.encoder.body[0].requires_grad_(False)  # the stem's conv
        model.encoder.body[1].weight.requires_grad_(False)  # the stem's GN scale (not shift)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    engine = PrivateTraining(
        model,
        torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=C,
        expected_batch_size=1.0,
        mode=mode,
        noise=GaussianNoise.predictable_from_seed(0),
    )
    normalisers = {"digit": 2.0, "odd": 1.5}
    engine.step(x, lambda out: per_sample_loss(spec, out, labels, masks, normalisers))
    engine.close()
    return before - torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def conv_branches(spec: FederationSpec) -> set[bool]:
    """Which norm branch each conv layer of the spec's encoder takes (True: Gram)."""
    model = build_model(spec)
    x, _, _ = conv_batch(spec, n=1)
    taken: set[bool] = set()

    def record(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        assert isinstance(layer, nn.Conv2d)
        depth = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
        positions = output.shape[2] * output.shape[3]
        taken.add(gram_is_cheaper(positions, depth, layer.out_channels))

    for layer in model.encoder.modules():
        if isinstance(layer, nn.Conv2d):
            layer.register_forward_hook(record)
    model(x)
    return taken


SHAPES = {
    (2, 9, 7): {False},  # many positions, few channels: per-sample gradients everywhere
    (4, 2, 2): {True},  # few positions: Gram matrices everywhere
    (1, 6, 6): {False, True},  # the stem per sample, the stride-2 stage by Gram matrices
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("freeze", [False, True])
def test_conv_groupnorm_clipped_sum_equals_opacus_per_sample_gradients(
    shape: tuple[int, int, int], freeze: bool
) -> None:
    spec = conv_spec(shape)
    assert conv_branches(spec) == SHAPES[shape]
    expected = conv_update(spec, "hooks", freeze)
    got = conv_update(spec, "bk", freeze)
    assert expected.abs().max() > 0
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)


def test_conv_norms_are_the_per_sample_gradient_norms() -> None:
    spec = conv_spec((2, 9, 7))
    x, labels, masks = conv_batch(spec, n=5)
    normalisers = {"digit": 1.0, "odd": 1.0}
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
    assert torch.allclose(norms, torch.stack(expected), rtol=1e-4)
    clipper.close()


def test_conv_bias_is_clipped_with_the_weight() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(12, 1))
    x = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    sums = {}
    for mode in ("hooks", "bk"):
        torch.manual_seed(0)
        copy = nn.Sequential(
            nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(12, 1)
        )
        copy.load_state_dict(model.state_dict())
        engine = PrivateTraining(
            copy,
            torch.optim.SGD(copy.parameters(), lr=1.0),
            noise_multiplier=0.0,
            max_grad_norm=C,
            expected_batch_size=1.0,
            mode=mode,
            noise=GaussianNoise.predictable_from_seed(0),
        )
        engine.step(x, lambda out: (out[:, 0] - 1.0) ** 2)
        engine.close()
        sums[mode] = torch.cat([p.detach().reshape(-1) for p in copy.parameters()])
    assert torch.allclose(sums["bk"], sums["hooks"], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [(3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 2, 1), (3, 1, 0, 2), ((3, 2), (2, 1), (1, 0), (1, 2))],
)
def test_conv_patches_are_unfold(
    kernel: object, stride: object, padding: object, dilation: object
) -> None:
    conv = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation)  # type: ignore[arg-type]
    x = torch.randn(2, 3, 9, 7)
    expected = torch.nn.functional.unfold(
        x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride
    )
    assert torch.equal(_conv_patches(conv, x), expected)
