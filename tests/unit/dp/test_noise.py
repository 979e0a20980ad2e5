"""DP noise: float64 Box-Muller from 115-bit uniforms, snapped to a lattice, accounted."""

from __future__ import annotations

import math
import os
import random

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from privacy.dp import InvalidPrivacyParameter
from privacy.dp.keystream import chacha20_words
from privacy.dp.noise import (
    SAMPLER_PAIR_ETA,
    GaussianNoise,
    NoiseDraws,
    deviates_from_words,
    lattice,
    sampler_slack,
)
from privacy.dp.randomness import DPRandomness, PoissonSampling


def test_deviates_are_standard_normal() -> None:
    z = GaussianNoise.predictable_from_seed(1).standard_normal(400_001).numpy()
    assert z.dtype == np.float64
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 0.01
    assert z.std() == pytest.approx(1.0, abs=0.01)
    # Tails: as many beyond 3 and 4 sigma as a normal has (0.0027 n and 6.3e-5 n).
    assert 950 < int((np.abs(z) > 3).sum()) < 1210
    assert 10 < int((np.abs(z) > 4).sum()) < 50
    assert np.isfinite(z).all()


def test_the_tail_reaches_past_twelve_sigma_not_six() -> None:
    """The previous sampler's 24-bit uniforms cut every deviate at 5.9 sigma; the radius
    uniform now has 115 bits, so the smallest one gives sqrt(232 ln 2) = 12.68 sigma."""
    words = torch.zeros(3, dtype=torch.int64)  # A = B = 0, angle 0: the largest radius
    z = deviates_from_words(words, 1.0)
    assert z.abs().max().item() == pytest.approx(math.sqrt(232 * math.log(2)), rel=1e-12)
    # The next-smallest radius uniforms (A = 0, B = 1, 2, ...) give distinct radii.
    words = torch.tensor([0, 0, 0, 0, 1, 2, 0, 0, 0], dtype=torch.int64)
    radii = deviates_from_words(words, 1.0).view(2, 3).norm(dim=0)
    assert radii[0] > radii[1] > radii[2] > 12.5


def test_deviates_near_zero_are_not_on_a_coarse_lattice() -> None:
    """Near 0, 24-bit angles put the old deviates on a grid of pitch ~3.7e-7 r; the 64-bit
    angle leaves no such grid: among deviates below 1e-4, almost all differ at 1e-9."""
    z = GaussianNoise.predictable_from_seed(4).standard_normal(2_000_000).numpy()
    small = z[np.abs(z) < 1e-4]
    assert len(small) > 100
    assert len(np.unique(np.round(small, 9))) > 0.95 * len(small)


def test_pairs_are_uncorrelated_and_draws_never_repeat() -> None:
    noise = GaussianNoise.predictable_from_seed(2)
    z = noise.standard_normal(100_000).numpy()
    sines, cosines = z[:50_000], z[50_000:]
    assert abs(np.corrcoef(sines, cosines)[0, 1]) < 0.02
    assert abs(np.corrcoef(sines**2, cosines**2)[0, 1]) < 0.02  # shared radius
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.02
    again = noise.standard_normal(100_000).numpy()  # the next stream of the keystream
    assert not np.isin(again, z).any()


def test_a_seed_reproduces_the_noise_and_os_keys_do_not() -> None:
    a, b = GaussianNoise.predictable_from_seed(7), GaussianNoise.predictable_from_seed(7)
    assert torch.equal(a.standard_normal(1001), b.standard_normal(1001))
    assert not torch.equal(
        GaussianNoise.predictable_from_seed(8).standard_normal(64),
        GaussianNoise.predictable_from_seed(7).standard_normal(64),
    )
    assert not torch.equal(
        GaussianNoise.from_os().standard_normal(64), GaussianNoise.from_os().standard_normal(64)
    )


def test_the_device_path_draws_the_same_way_from_chacha20() -> None:
    """On a GPU the keystream is ChaCha20 computed there (`torch_cipher`): here that very
    code runs on the CPU, and its noise is the transform of OpenSSL's ChaCha20 words."""
    key = os.urandom(32)
    noise = GaussianNoise(key, torch_cipher=True)
    z = noise.standard_normal(20_000)
    expected = deviates_from_words(chacha20_words(key, 0, 30_000, "cpu"), 1.0)
    assert torch.equal(z, expected)
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3


@pytest.mark.parametrize("std", [0.3, 1.0, 2.95, 100.0])
def test_noisy_sums_are_snapped_to_the_lattice(std: float) -> None:
    lam = lattice(std)
    assert std / 32 < lam <= std / 16
    assert math.log2(lam).is_integer()
    g = torch.randn(3, 1001) * 5
    y = g.clone()
    GaussianNoise.predictable_from_seed(3).add_to_([y], std)
    assert torch.equal((y.double() / lam).round(), y.double() / lam)
    assert (y - g).std().item() == pytest.approx(std, rel=0.03)


def test_the_release_depends_on_the_sum_and_noise_only_through_their_real_sum() -> None:
    """Shifting g by whole lattice steps shifts the release by exactly those steps (the
    same noise), so the output's floating-point form cannot carry g's low bits."""
    std = 1.0
    lam = lattice(std)
    g = torch.randn(5000, dtype=torch.float32)
    shifted = g + 37 * lam
    y, y_shifted = g.clone(), shifted.clone()
    GaussianNoise.predictable_from_seed(9).add_to_([y], std)
    GaussianNoise.predictable_from_seed(9).add_to_([y_shifted], std)
    assert torch.equal(y_shifted - y, torch.full_like(y, 37 * lam))


def test_noise_of_several_tensors_is_drawn_once_and_fresh() -> None:
    noise = GaussianNoise.predictable_from_seed(5)
    a, b = torch.zeros(4, 5), torch.zeros(7)
    noise.add_to_([a, b], 1.0)
    assert (a != 0).sum() > 15
    assert (b != 0).sum() > 5
    assert not np.isin(b.numpy(), a.numpy()).all()
    with pytest.raises(InvalidPrivacyParameter, match="> 0"):
        lattice(0.0)


def test_float64_log_sqrt_sin_cos_are_within_two_ulp_here() -> None:
    """The premise of the sampler's bound (privacy/dp/noise.py), on this machine's torch."""
    mpmath.mp.dps = 40
    rng = random.Random(11)
    # The radius uniforms lie in [2^-116, 1]; the angles in [-pi, pi].
    u = torch.tensor(
        [rng.random() * 2.0 ** -rng.randint(0, 115) for _ in range(2000)], dtype=torch.float64
    )
    theta = torch.tensor([rng.uniform(-math.pi, math.pi) for _ in range(2000)], dtype=torch.float64)
    checks = [
        (torch.log(u), [mpmath.log(mpmath.mpf(x)) for x in u.tolist()]),
        (torch.sqrt(u), [mpmath.sqrt(mpmath.mpf(x)) for x in u.tolist()]),
        (torch.sin(theta), [mpmath.sin(mpmath.mpf(x)) for x in theta.tolist()]),
        (torch.cos(theta), [mpmath.cos(mpmath.mpf(x)) for x in theta.tolist()]),
    ]
    for computed, exact in checks:
        for value, truth in zip(computed.tolist(), exact, strict=True):
            assert abs(mpmath.mpf(value) - truth) <= 2 * math.ulp(float(truth))


def test_sampler_slack_is_charged_per_pair_and_does_not_grow_with_epsilon() -> None:
    none = sampler_slack(NoiseDraws())
    assert none.epsilon == 0.0
    assert none.delta(1e-5) == 1e-5
    demo = sampler_slack(NoiseDraws(700 * 120, 120, 2.9))  # 1,400 parameters, 120 steps
    assert demo.epsilon == pytest.approx(2 * SAMPLER_PAIR_ETA * 84_000, rel=1e-6)
    assert demo.epsilon < 2e-6
    assert 1e-5 < demo.delta(1e-5) < 1e-5 * (1 + 1e-6)
    assert demo.ideal_delta(demo.delta(1e-5)) == pytest.approx(1e-5, rel=1e-12)
    large = sampler_slack(NoiseDraws(500_000 * 1000, 1000, 0.8))  # 1M parameters
    assert 0.009 < large.epsilon < 0.011
    assert large.delta(1e-5) < 1.006e-5
    # A small noise multiplier lets one record's shift reach the truncation: charged.
    assert sampler_slack(NoiseDraws(100, 1, 0.11)).delta(0.0) > 1e-3
    assert sampler_slack(NoiseDraws(100, 1, 0.0)).delta(0.0) == math.inf


def test_poisson_sampling_includes_each_sample_with_rate_q_at_most() -> None:
    sampling = PoissonSampling(os.urandom(32))
    for q in (0.01, 0.28125, 0.6875):
        chosen = torch.stack([sampling.mask(20_000, q) for _ in range(5)]).double()
        assert chosen.mean().item() == pytest.approx(q, abs=4 * math.sqrt(q / 100_000))
    assert sampling.mask(50, 1.0).all()
    with pytest.raises(InvalidPrivacyParameter, match="sample_rate"):
        sampling.mask(5, 0.0)


def test_randomness_from_the_os_is_secret_and_a_seed_is_marked_predictable() -> None:
    assert DPRandomness.from_os().secret
    seeded = DPRandomness.predictable_from_seed(1)
    assert not seeded.secret
    again = DPRandomness.predictable_from_seed(1)
    assert torch.equal(seeded.sampling.mask(100, 0.5), again.sampling.mask(100, 0.5))
    # Noise and sampling use keys of their own: their streams are unrelated.
    assert not torch.equal(
        seeded.noise.standard_normal(64),
        DPRandomness.predictable_from_seed(2).noise.standard_normal(64),
    )
