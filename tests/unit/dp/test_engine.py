"""DP-SGD wiring: per-sample clipping bound, noise scale, empty Poisson batches."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from privacy.dp import GRAD_SAMPLE_MODES, PrivateTraining, UnsupportedMode
from privacy.dp.noise import GaussianNoise

C = 0.5


def model() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(12, 5, generator=gen) * 20, torch.randn(12, 3, generator=gen)


def loss(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((outputs - y) ** 2).sum(dim=1)


def flat(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def private(m: nn.Module, mode: str, sigma: float, seed: int = 0) -> PrivateTraining:
    return PrivateTraining(
        m,
        torch.optim.SGD(m.parameters(), lr=1.0),
        noise_multiplier=sigma,
        max_grad_norm=C,
        expected_batch_size=1.0,
        mode=mode,
        noise=GaussianNoise.predictable_from_seed(seed),
    )


def clipped_sum_by_hand(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of per-sample gradients clipped to C, and each sample's gradient norm."""
    m = model()
    total = torch.zeros_like(flat(m))
    norms = []
    for i in range(len(x)):
        m.zero_grad()
        loss(m(x[i : i + 1]), y[i : i + 1]).sum().backward()
        g = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
        norms.append(g.norm())
        total += g * min(1.0, C / (g.norm().item() + 1e-6))
    return total, torch.stack(norms)


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_each_sample_is_clipped_to_the_bound(mode: str) -> None:
    x, y = data()
    expected, norms = clipped_sum_by_hand(x, y)
    assert (norms > 2 * C).all()  # every sample's raw gradient is over the bound
    m = model()
    before = flat(m)
    engine = private(m, mode, sigma=0.0)
    engine.step(x, lambda out: loss(out, y))
    update = before - flat(m)  # lr 1, expected batch 1: the clipped sum itself
    assert torch.allclose(update, expected, atol=1e-5)
    # One sample alone moves the model by at most C (the sensitivity DP-SGD relies on).
    for i in range(len(x)):
        single = model()
        start = flat(single)
        private(single, mode, sigma=0.0).step(
            x[i : i + 1], lambda out, i=i: loss(out, y[i : i + 1])
        )
        assert (start - flat(single)).norm() <= C * (1 + 1e-4)


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_noise_is_present_and_scales_with_the_multiplier(mode: str) -> None:
    x, y = data()
    spreads = {}
    for sigma in (1.0, 3.0):
        m = model()
        before = flat(m)
        # An empty Poisson batch: the update is the noise alone, std sigma * C.
        private(m, mode, sigma=sigma, seed=7).step(x[:0], lambda out: loss(out, y[:0]))
        noise = before - flat(m)
        assert (noise != 0).float().mean() > 0.9  # a few round to 0 on the lattice
        spreads[sigma] = noise.std().item()
    assert spreads[1.0] == pytest.approx(1.0 * C, rel=0.25)
    # The same draws at three times the scale, each rounded to its lattice (pitch s/16).
    assert spreads[3.0] / spreads[1.0] == pytest.approx(3.0, rel=0.02)
    # With data, the noisy update differs from the clipped sum by that noise.
    m, reference = model(), model()
    private(m, mode, sigma=1.0, seed=3).step(x, lambda out: loss(out, y))
    private(reference, mode, sigma=0.0).step(x, lambda out: loss(out, y))
    assert not torch.allclose(flat(m), flat(reference))


def test_frozen_parameters_are_neither_trained_nor_noised() -> None:
    x, y = data()
    m = model()
    m[2].requires_grad_(False)
    frozen = copy.deepcopy(m[2].state_dict())
    engine = PrivateTraining(
        m,
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=C,
        expected_batch_size=4.0,
        noise=GaussianNoise.predictable_from_seed(0),
    )
    engine.step(x, lambda out: loss(out, y))
    engine.close()
    assert all(torch.equal(v, m[2].state_dict()[k]) for k, v in frozen.items())


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(UnsupportedMode, match="grad_sample_mode 'fast'"):
        private(model(), "fast", sigma=1.0)


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_the_released_noisy_sum_lies_on_the_lattice(mode: str) -> None:
    """The noisy sum leaves the noise step as Λ round((g + s z)/Λ): every coordinate a
    multiple of Λ = 2^(floor(log2 s) - 4), never a float that could carry g's low bits."""
    x, y = data()
    m = model()
    before = flat(m).double()
    sigma = 1.3
    PrivateTraining(
        m,
        torch.optim.SGD(m.parameters(), lr=1.0),
        noise_multiplier=sigma,
        max_grad_norm=C,
        expected_batch_size=1.0,
        mode=mode,
    ).step(x, lambda out: loss(out, y))
    released = (before - flat(m).double()) / 2.0 ** (math.floor(math.log2(sigma * C)) - 4)
    # The update (lr 1, batch 1) is the released sum, up to float32 rounding of the model.
    assert torch.allclose(released, released.round(), atol=1e-3)
    assert released.abs().max() > 10  # noise, in units of the lattice
