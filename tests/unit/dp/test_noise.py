"""DP noise from AES-256-CTR and Box-Muller: Gaussian, independent, keyed, reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from privacy.dp import InvalidPrivacyParameter
from privacy.dp.noise import GaussianNoise


def test_deviates_are_standard_normal() -> None:
    z = GaussianNoise.from_seed(1).standard_normal(200_001).double().numpy()
    assert z.shape == (200_001,)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 0.01
    assert z.std() == pytest.approx(1.0, abs=0.01)
    # Tails: as many beyond 3 sigma as a normal has (2 * 0.00135 * n, about 540).
    assert 400 < int((np.abs(z) > 3).sum()) < 700
    assert np.isfinite(z).all()
    assert np.abs(z).max() < 6.0  # 24-bit uniforms: the largest deviate is sqrt(50 ln 2)


def test_the_two_halves_of_each_pair_and_neighbours_are_uncorrelated() -> None:
    n = 100_000
    z = GaussianNoise.from_seed(2).standard_normal(n).double().numpy()
    pairs = n // 2
    assert abs(np.corrcoef(z[:pairs], z[pairs:])[0, 1]) < 0.02  # cos and sin of one pair
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.02
    assert abs(np.corrcoef(z[:pairs] ** 2, z[pairs:] ** 2)[0, 1]) < 0.02  # shared radius


def test_fill_scales_by_std_and_every_draw_is_fresh() -> None:
    noise = GaussianNoise.from_seed(3)
    out = torch.empty(3, 50_001)
    first = noise.fill_(out, 2.5).clone()
    assert first.std().item() == pytest.approx(2.5, rel=0.02)
    second = noise.fill_(out, 2.5)
    assert not torch.isclose(first, second).any()  # the keystream never repeats


def test_a_seed_reproduces_the_noise_and_os_keys_do_not() -> None:
    a, b = GaussianNoise.from_seed(7), GaussianNoise.from_seed(7)
    assert torch.equal(a.standard_normal(1001), b.standard_normal(1001))
    assert not torch.equal(
        GaussianNoise.from_seed(7).standard_normal(64),
        GaussianNoise.from_seed(8).standard_normal(64),
    )
    assert not torch.equal(
        GaussianNoise.from_os().standard_normal(64), GaussianNoise.from_os().standard_normal(64)
    )


def test_a_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(InvalidPrivacyParameter, match="32 bytes, got 16"):
        GaussianNoise(bytes(16))
