"""Every random choice DP-SGD's guarantee rests on, from one CSPRNG key: `DPRandomness`.

Two uses, each under its own key (HKDF-SHA256 of the master key, RFC 5869, one label per
use) and each draw on a fresh keystream stream (`privacy.dp.keystream`):

- `noise`: the Gaussian noise of every step (`privacy.dp.noise.GaussianNoise`);
- `sampling`: Poisson sampling, each sample joining a batch independently with probability
  q. A sample joins when the top 53 bits of its keystream word, read as an integer, are
  below ⌊q 2^53⌋: the inclusion probability is ⌊q 2^53⌋ / 2^53, at most q and within
  2^-53 of it, and the accountant, charged q, never under-counts (the subsampled
  Gaussian's ε grows with q).

In production the master key comes from `os.urandom` (`DPRandomness.from_os`), a new one
for every round. `DPRandomness.predictable_from_seed` exists for tests and benchmarks
that must replay a run: anyone who knows the seed knows the noise, so nothing trained
with it is differentially private, and the agent's daemon refuses it.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Final

import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privacy.dp.errors import InvalidPrivacyParameter
from privacy.dp.keystream import KEY_BYTES, Keystream
from privacy.dp.noise import GaussianNoise

NOISE_LABEL: Final = b"fmtl/dp/gaussian-noise/v1"
SAMPLING_LABEL: Final = b"fmtl/dp/poisson-sampling/v1"
SEED_LABEL: Final = b"fmtl/dp/predictable-seed/v1"
#: Bits of each sample's uniform in Poisson sampling.
SAMPLING_BITS: Final = 53


def _derive(master: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label).derive(master)


class PoissonSampling:
    """Poisson-sampled batches from the keystream; not thread-safe."""

    def __init__(self, key: bytes) -> None:
        self._keystream = Keystream(key)
        self._stream = 0

    def mask(self, n: int, sample_rate: float) -> torch.Tensor:
        """Which of `n` samples join the next batch (a bool tensor on the CPU)."""
        if not (math.isfinite(sample_rate) and 0.0 < sample_rate <= 1.0):
            raise InvalidPrivacyParameter(f"sample_rate must be in (0, 1], got {sample_rate}")
        if sample_rate == 1.0:
            return torch.ones(n, dtype=torch.bool)
        threshold = math.floor(math.ldexp(sample_rate, SAMPLING_BITS))  # exact
        words = self._keystream.words(n, self._stream)
        self._stream += 1
        top = torch.bitwise_right_shift(words, 64 - SAMPLING_BITS).bitwise_and_(
            (1 << SAMPLING_BITS) - 1
        )
        return top < threshold


class DPRandomness:
    """The noise and the sampling of one round of DP-SGD."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != KEY_BYTES:
            raise InvalidPrivacyParameter(
                f"a master key is {KEY_BYTES} bytes, got {len(master_key)}"
            )
        self.noise = GaussianNoise(_derive(master_key, NOISE_LABEL))
        self.sampling = PoissonSampling(_derive(master_key, SAMPLING_LABEL))
        #: False only for `predictable_from_seed`.
        self.secret = True

    @classmethod
    def from_os(cls) -> DPRandomness:
        """A fresh master key from the operating system's CSPRNG: what production uses."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def predictable_from_seed(cls, seed: int) -> DPRandomness:
        """Randomness anyone who knows `seed` can replay: tests and benchmarks only."""
        randomness = cls(hashlib.sha256(SEED_LABEL + str(int(seed)).encode()).digest())
        randomness.secret = False
        return randomness


__all__ = ["DPRandomness", "PoissonSampling"]
