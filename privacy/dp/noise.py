"""The Gaussian noise of DP-SGD, drawn from a cryptographically secure generator.

DP-SGD's guarantee assumes the noise is unpredictable to whoever sees the released
update. PyTorch's CPU generator is a Mersenne Twister: fast to seed, but not a CSPRNG,
and (drawing one 32-bit word per float under a lock) it is also the slowest part of a
DP step at a million parameters. `GaussianNoise` instead expands a 256-bit key with
AES-256 in counter mode (pyca/cryptography; AES-NI on every current x86 and ARM server,
about 1 ms for the 4 MB a 1M-parameter step needs) and turns the keystream into normal
deviates with the Box-Muller transform (Box and Muller 1958), vectorised in PyTorch:

    u1, u2 uniform on (0, 1),   z1 = sqrt(-2 ln u1) cos(2 pi u2),   z2 = sqrt(-2 ln u1) sin(2 pi u2)

are two independent N(0, 1). Each uniform is (k + 1/2) / 2^24 for a 24-bit integer k of
the keystream: exactly representable in float32, never 0 or 1, so the logarithm is
finite (the largest deviate is about 5.9, as with PyTorch's own float32 sampler).

The key comes from `os.urandom`; a seed (tests, reproducible benchmarks) derives it with
SHA-256 under a domain-separation label. On a GPU the noise is drawn there by PyTorch's
Philox generator, seeded from this keystream, not copied over from the host.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Final

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privacy.dp.errors import InvalidPrivacyParameter

KEY_BYTES: Final = 32
#: Uniforms carry 24 bits: the float32 significand, so (k + 1/2) / 2^24 is exact.
UNIFORM_BITS: Final = 24
#: Domain separation of seed-derived keys from any other use of the same seed.
SEED_LABEL: Final = b"fmtl/dp-noise/v1"
_AES_BLOCK: Final = 16


class GaussianNoise:
    """N(0, std^2) deviates from an AES-256-CTR keystream; not thread-safe."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise InvalidPrivacyParameter(f"a noise key is {KEY_BYTES} bytes, got {len(key)}")
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(_AES_BLOCK))).encryptor()
        self._zeros = bytearray()
        self._stream = bytearray()
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self._scratch = torch.empty(0, dtype=torch.int32)

    @classmethod
    def from_os(cls) -> GaussianNoise:
        """A fresh key from the operating system's CSPRNG: what production uses."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_seed(cls, seed: int) -> GaussianNoise:
        """A key derived from `seed`: reproducible noise, for tests and benchmarks only."""
        return cls(hashlib.sha256(SEED_LABEL + str(int(seed)).encode()).digest())

    def keystream(self, nbytes: int) -> memoryview:
        """The next `nbytes` of the keystream (valid until the next call)."""
        if len(self._zeros) < nbytes:
            self._zeros = bytearray(nbytes)
            self._stream = bytearray(nbytes + _AES_BLOCK - 1)  # what update_into requires
        written = self._encryptor.update_into(memoryview(self._zeros)[:nbytes], self._stream)
        return memoryview(self._stream)[:written]

    def standard_normal(self, n: int) -> torch.Tensor:
        """`n` independent N(0, 1) float32 deviates on the CPU."""
        out = torch.empty(n)
        self._normal_into(out)
        return out

    def _normal_into(self, out: torch.Tensor) -> None:
        """Fill a contiguous 1-D float32 CPU tensor with N(0, 1) deviates, in place."""
        n = out.numel()
        pairs = n // 2
        if pairs:
            self._pairs_into(out[: 2 * pairs])
        if n % 2:
            tail = torch.empty(2)
            self._pairs_into(tail)
            out[-1] = tail[0]

    def _pairs_into(self, out: torch.Tensor) -> None:
        """Box-Muller into `out` (even length): cosines in the first half, sines in the
        second, from scratch buffers kept between calls (no allocation per step)."""
        pairs = out.numel() // 2
        if self._scratch.numel() < 2 * pairs:
            self._scratch = torch.empty(2 * pairs, dtype=torch.int32)
        words = torch.frombuffer(self.keystream(8 * pairs), dtype=torch.int32)
        # The top 24 bits of each 32-bit word, as a non-negative integer k < 2^24.
        k = torch.bitwise_right_shift(words, 32 - UNIFORM_BITS, out=self._scratch[: 2 * pairs])
        k.bitwise_and_(0xFFFFFF)
        u = out.copy_(k).add_(0.5).mul_(2.0**-UNIFORM_BITS)  # uniforms on (0, 1), in place
        # Radius in the first half, angle in the second; the cosine goes to the scratch
        # buffer (its int32 values are spent), reinterpreted as float32.
        radius = u[:pairs].log_().mul_(-2.0).sqrt_()
        angle = u[pairs:].mul_(2.0 * math.pi)
        cosine = torch.cos(angle, out=self._scratch[:pairs].view(torch.float32))
        angle.sin_().mul_(radius)
        radius.mul_(cosine)

    def fill_(self, out: torch.Tensor, std: float) -> torch.Tensor:
        """Overwrite `out` with N(0, std^2) deviates; returns `out`."""
        if out.device.type == "cpu":
            if out.dtype != torch.float32 or not out.is_contiguous():
                return out.copy_(self.standard_normal(out.numel()).view(out.shape)).mul_(std)
            self._normal_into(out.view(-1))
            return out.mul_(std)
        generator = self._device_generators.get(out.device)
        if generator is None:
            seed = int.from_bytes(self.keystream(8), "big") & (2**63 - 1)
            generator = torch.Generator(device=out.device)
            generator.manual_seed(seed)
            self._device_generators[out.device] = generator
        return out.normal_(0.0, std, generator=generator)


__all__ = ["KEY_BYTES", "SEED_LABEL", "UNIFORM_BITS", "GaussianNoise"]
