"""The Gaussian noise of DP-SGD, and exactly what is claimed about it.

The accountant assumes that each step releases g + N(0, s² I), with g the sum of clipped
per-sample gradients and s = σ C. A floating-point sampler cannot draw N(0, s²) exactly,
and the way its output is added to g matters: Mironov (CCS 2012) read the data through
the gaps a textbook sampler leaves in the floating-point output of the Laplace mechanism,
and Jin et al. (IEEE S&P 2022, "Are We There Yet?") did the same for the Gaussian
mechanism and DP-SGD. `GaussianNoise.add_to_` releases instead

    y = Λ · round( (g + s z̃) / Λ ),      Λ = 2^(⌊log2 s⌋ - 4),  so s/32 < Λ ≤ s/16,

with z̃ a float64 standard normal pair from the Box-Muller transform (Box and Muller 1958)
of a 115-bit radius uniform and a 64-bit angle word of the keystream
(`privacy.dp.keystream`: AES-256-CTR on the CPU, ChaCha20 on a GPU), and every operation
in float64: g/Λ and the scaling are exact
(Λ is a power of two), the sum is rounded once (IEEE 754), then to the lattice ΛZ. So y
is a deterministic function of the real number g + s z̃ alone ("snapping", Mironov 2012,
Sec. 5.2, for the Gaussian): the floating-point representation of the output carries
nothing about g beyond g + s z̃, and the rounding adds variance Λ²/12 ≤ s²/3072 (0.03%).
Everything after y (dividing by the batch size, the optimizer) is post-processing.

What remains is how far z̃'s distribution is from N(0, 1) at the resolution Λ/s. Claimed,
per pair of coordinates (y_i, y_i+1) and every lattice cell c of the pair (premises: the
keystream is indistinguishable from uniform; float64 log and sin/cos within 2 ulp, sqrt
and arithmetic correctly rounded — true of the SLEEF routines PyTorch uses on CPUs and of
CUDA's double-precision library, and tested here on the CPU against mpmath):

1. tail: radii above r_T = 9.75 s (where the 115-bit radius uniform is too coarse for 2.)
   have probability at most `SAMPLER_PAIR_TAIL` = 3e-21 under both the sampler and
   N(0, I₂); nothing else is claimed about them;
2. elsewhere, P̂(c) is within a factor 1 ± `SAMPLER_PAIR_ETA` (1e-11) of the probability
   N(g, s² I₂) gives c: every computed pair lies within 2^-44/r + 2^-49.5 r (units of s)
   of the exact image of its uniforms, cells are at least s/32 wide, and the grid of the
   uniforms is 2^-115 fine in the radius (2^-44 relative or better for r ≤ r_T).

From these: let B be the event that some pair's radius uniform falls in the tail (it
depends on the uniforms alone, so it has the same probability p ≤ N τ under neighbouring
datasets). Conditioned on not-B, the sampler is within (1 ± η)^N of the ideal noise
truncated at r_T, cell by cell; the truncated ideal has the Gaussian's privacy loss
wherever both neighbours' outputs can fall (its normaliser does not depend on the data),
and a neighbour's output falls outside the other's truncation with probability at most
δ_edge = Σ_steps e^(-(r_T - 1/σ)²/2) + N τ (one record shifts the noisy sum by at most
C = s/σ). So an algorithm that is (ε, δ)-DP with ideal Gaussians is, after N noise pairs
over T steps at noise multipliers ≥ σ,

    (ε + N ln((1+η)/(1-η)),   (1+η)^N (δ/(1-p) + δ_edge) + p)-DP.

`sampler_slack` computes both terms and the agent reserves them in its budget (it takes
ε at the δ the sampler leaves, and adds the sampler's ε). For the heart-disease demo
(1,400 noised parameters, 120 steps, σ ≥ 2.9) that is ε + 1.7e-6 and δ (1 + 8e-7) + 5e-16;
for a 1M-parameter model after 1,000 steps at σ ≥ 0.8, ε + 0.01 and δ · 1.005 + 3e-12.

Not claimed: that g itself is computed exactly (clipping and summing in float32 are
treated as exact, as by every DP-SGD implementation); timing (the noise is drawn whether
or not any data is seen, with no rejection loop, so its duration depends on neither).

Opacus' `secure_mode` (Holohan and Braghin 2021) instead sums four float normals to close
the gaps of the output; snapping closes them by construction at a quarter of the cost.
An exact discrete Gaussian (Canonne, Kamath, Steinke 2020) would need no slack at all, but
its rejection sampling costs about ten times the rest of a 1M-parameter step on a CPU.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import torch

from privacy.dp.errors import InvalidPrivacyParameter
from privacy.dp.keystream import KEY_BYTES, Keystream

#: The lattice pitch is 2^-SNAP_BITS of the largest power of two not above s.
SNAP_BITS: Final = 4
#: Radius (in units of s) up to which the claim below holds, and the probability bound of
#: the tail beyond it, per pair: exp(-9.75²/2) = 2.3e-21.
SAMPLER_RADIUS: Final = 9.75
SAMPLER_PAIR_TAIL: Final = 3e-21
#: Per pair: relative error bound of every lattice cell's probability (module docstring).
SAMPLER_PAIR_ETA: Final = 1e-11
#: Keystream words per pair of deviates: 63 + 52 bits of radius uniform, 64 bits of angle.
WORDS_PER_PAIR: Final = 3
#: Domain separation of seed-derived keys (tests and benchmarks only).
SEED_LABEL: Final = b"fmtl/dp-noise/v2"
_MASK63: Final = (1 << 63) - 1
_MASK52: Final = (1 << 52) - 1


def lattice(std: float) -> float:
    """The pitch Λ of the output lattice for noise of standard deviation `std` (> 0)."""
    if not (math.isfinite(std) and std > 0.0):
        raise InvalidPrivacyParameter(f"noise standard deviation must be > 0, got {std}")
    return math.ldexp(1.0, math.floor(math.log2(std)) - SNAP_BITS)


@dataclass(frozen=True)
class NoiseDraws:
    """What a history (or plan) drew from this sampler: noise pairs, steps, and the
    smallest noise multiplier of those steps."""

    pairs: int = 0
    steps: int = 0
    min_noise_multiplier: float = math.inf

    def __add__(self, other: NoiseDraws) -> NoiseDraws:
        return NoiseDraws(
            self.pairs + other.pairs,
            self.steps + other.steps,
            min(self.min_noise_multiplier, other.min_noise_multiplier),
        )


@dataclass(frozen=True)
class SamplerSlack:
    """What the sampler adds to an ideal (ε, δ) guarantee (module docstring)."""

    epsilon: float
    #: (1 + η)^N, the tail probability p and δ_edge.
    growth: float
    tail: float
    edge: float

    def delta(self, delta: float) -> float:
        """δ of the implementation when the ideal mechanism has δ."""
        return self.growth * (delta / (1.0 - self.tail) + self.edge) + self.tail

    def ideal_delta(self, delta: float) -> float:
        """The ideal δ that leaves the implementation at `delta` (≤ 0: none does)."""
        return (1.0 - self.tail) * ((delta - self.tail) / self.growth - self.edge)


def sampler_slack(draws: NoiseDraws) -> SamplerSlack:
    """The slack of the draws (module docstring); an empty history has none."""
    if draws.pairs < 0 or draws.steps < 0:
        raise InvalidPrivacyParameter("noise draws must be >= 0")
    if draws.pairs == 0:
        return SamplerSlack(0.0, 1.0, 0.0, 0.0)
    eta = SAMPLER_PAIR_ETA
    tail = draws.pairs * SAMPLER_PAIR_TAIL
    sigma = draws.min_noise_multiplier
    reach = SAMPLER_RADIUS - 1.0 / sigma if sigma > 0.0 else -math.inf
    shifted = math.exp(-0.5 * reach * reach) if reach > 0 else math.inf
    return SamplerSlack(
        epsilon=draws.pairs * (math.log1p(eta) - math.log1p(-eta)),
        growth=math.exp(draws.pairs * math.log1p(eta)),
        tail=tail,
        edge=draws.steps * shifted + tail,
    )


def deviates_from_words(
    words: torch.Tensor, scale: float, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """Box-Muller: 3·pairs keystream words (int64, consumed in place) to 2·pairs float64
    N(0, scale²) deviates, sines first, then cosines (a view of `scratch`, 3·pairs long).

    Radius: u = (A 2^52 + B + 1/2) 2^-115 in (0, 1], A and B the low 63 and 52 bits of
    two words (B + 1/2 exact; the sum rounded once to float64, then scaled exactly), and
    r = scale · sqrt(-2 ln u), at most scale · 12.7. Angle: the third word, signed,
    times π 2^-63.
    """
    pairs = words.numel() // WORDS_PER_PAIR
    if scratch is None:
        scratch = torch.empty(3 * pairs, dtype=torch.float64, device=words.device)
    radius_hi, radius_lo, angle = words[: WORDS_PER_PAIR * pairs].view(WORDS_PER_PAIR, pairs)
    first, second, spare = scratch[:pairs], scratch[pairs : 2 * pairs], scratch[2 * pairs :]
    first.copy_(radius_hi.bitwise_and_(_MASK63))
    second.copy_(radius_lo.bitwise_and_(_MASK52)).add_(0.5).add_(first, alpha=2.0**52)
    radius = second.mul_(2.0**-115).log_().mul_(-2.0 * scale * scale).sqrt_()
    theta = first.copy_(angle).mul_(math.pi * 2.0**-63)  # in [-π, π]
    torch.cos(theta, out=spare)
    theta.sin_().mul_(radius)  # r sin θ in the first half
    radius.mul_(spare)  # r cos θ in the second half
    return scratch[: 2 * pairs]


class GaussianNoise:
    """N(0, s²) noise added to gradient sums as described above; not thread-safe.

    Each call draws from a fresh stream of the keystream (its nonce), so no noise is ever
    drawn twice; scratch buffers are kept per device between calls.
    """

    def __init__(self, key: bytes, *, torch_cipher: bool = False) -> None:
        if len(key) != KEY_BYTES:
            raise InvalidPrivacyParameter(f"a noise key is {KEY_BYTES} bytes, got {len(key)}")
        self._keystream = Keystream(key, torch_cipher=torch_cipher)
        self._stream = 0
        self._scratch: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def from_os(cls) -> GaussianNoise:
        """A fresh key from the operating system's CSPRNG: what production uses."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def predictable_from_seed(cls, seed: int) -> GaussianNoise:
        """Noise anyone who knows `seed` can predict: tests and benchmarks only, never DP."""
        return cls(hashlib.sha256(SEED_LABEL + str(int(seed)).encode()).digest())

    def _next_stream(self) -> int:
        stream = self._stream
        self._stream += 1
        return stream

    def _buffer(self, size: int, device: torch.device) -> torch.Tensor:
        buffer = self._scratch.get(device)
        if buffer is None or buffer.numel() < size:
            buffer = self._scratch[device] = torch.empty(size, dtype=torch.float64, device=device)
        return buffer[:size]

    def _pairs(self, pairs: int, device: torch.device, scale: float) -> torch.Tensor:
        """2·pairs float64 deviates of N(0, scale²) from a fresh stream."""
        words = self._keystream.words(WORDS_PER_PAIR * pairs, self._next_stream(), device)
        return deviates_from_words(words, scale, self._buffer(3 * pairs, device))

    def standard_normal(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """`n` float64 N(0, 1) deviates (a new tensor), as the sampler draws them."""
        return self._pairs(-(-n // 2), torch.device(device), 1.0)[:n].clone()

    def add_to_(self, tensors: Sequence[torch.Tensor], std: float) -> None:
        """Replace each tensor (all on one device) by its noisy sum snapped to the lattice:
        t ← Λ round((t + std z̃)/Λ), with fresh noise for every coordinate."""
        if not tensors:
            return
        lam = lattice(std)
        device = tensors[0].device
        total = sum(t.numel() for t in tensors)
        noise = self._pairs(-(-total // 2), device, std / lam)  # in units of Λ
        offset = 0
        for t in tensors:
            if t.device != device:
                raise InvalidPrivacyParameter("add_to_: tensors on more than one device")
            n = t.numel()
            cell = noise[offset : offset + n].view(t.shape)
            cell.add_(t, alpha=1.0 / lam).round_()  # round(RN(z̃ + t/Λ)): exact scaling
            t.copy_(cell).mul_(lam)
            offset += n


__all__ = [
    "SAMPLER_PAIR_ETA",
    "SAMPLER_PAIR_TAIL",
    "SAMPLER_RADIUS",
    "SNAP_BITS",
    "GaussianNoise",
    "NoiseDraws",
    "SamplerSlack",
    "deviates_from_words",
    "lattice",
    "sampler_slack",
]
