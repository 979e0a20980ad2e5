"""The CSPRNG behind every random choice of DP-SGD: a stream cipher under a 256-bit key.

DP-SGD's guarantee assumes its noise and its Poisson sampling are unpredictable to whoever
sees the released model; they come from a stream cipher keyed from the operating system's
CSPRNG, never from a seeded statistical generator:

- on the CPU, AES-256 in counter mode from `cryptography` (OpenSSL, AES-NI: several GB/s);
- on any other device (CUDA), ChaCha20 (RFC 8439), computed on the device by
  `chacha20_words`: the block function of RFC 8439 Sec. 2.3 in PyTorch integer operations
  on 32-bit values held in int64 lanes (every sum reduced mod 2^32 before it could
  overflow, so the arithmetic is exact on every device), all blocks in parallel, so no
  keystream crosses the bus. ChaCha20 needs no hardware AES, which a GPU lacks. It is
  checked on the CPU against OpenSSL's ChaCha20 and RFC 8439's test vector
  (tests/unit/dp/test_keystream.py), and `Keystream(torch_cipher=True)` runs that very
  path on the CPU; it was not run on a GPU in this repository's tests (none there).

One key gives many independent streams; each use (one step's noise, one step's sampling)
takes a fresh one, so no keystream is ever used twice: stream i is AES-CTR from counter
block i · 2^64 (so a stream holds up to 2^64 blocks), or ChaCha20 with nonce i and block
counter from 0 (RFC 8439: up to 2^32 blocks, 256 GiB, per stream).

Words are 64-bit: the little-endian reading of each 8 bytes of keystream, as int64.
"""

from __future__ import annotations

from typing import Final

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privacy.dp.errors import InvalidPrivacyParameter

KEY_BYTES: Final = 32
#: RFC 8439: 32-bit block counter (the tighter of the two ciphers' limits per stream).
MAX_BLOCKS: Final = 1 << 32
#: AES-CTR: the stream is the high 64 bits of the counter block.
MAX_STREAM: Final = 1 << 64
_BLOCK_BYTES: Final = 64
_WORDS_PER_BLOCK: Final = _BLOCK_BYTES // 8
#: "expand 32-byte k", the ChaCha20 constants (RFC 8439 Sec. 2.3).
_CONSTANTS: Final = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
_MASK32: Final = 0xFFFFFFFF


def _check(key: bytes, stream: int, count: int) -> None:
    if len(key) != KEY_BYTES:
        raise InvalidPrivacyParameter(f"a keystream key is {KEY_BYTES} bytes, got {len(key)}")
    if not 0 <= stream < MAX_STREAM:
        raise InvalidPrivacyParameter(f"stream must be in [0, 2^64), got {stream}")
    if count < 0 or -(-count // _WORDS_PER_BLOCK) > MAX_BLOCKS:
        raise InvalidPrivacyParameter(f"one stream holds at most 2^35 words, asked for {count}")


class Keystream:
    """Keystream words under one key; CPU buffers are kept between calls.

    `torch_cipher=True` computes ChaCha20 with PyTorch on the CPU too (what other devices
    run; slow on a CPU): for tests of the device path.
    """

    def __init__(self, key: bytes, *, torch_cipher: bool = False) -> None:
        _check(key, 0, 0)
        self._key = bytes(key)
        self._torch_cipher = torch_cipher
        self._zeros = bytearray()
        self._out = bytearray()

    def words(self, count: int, stream: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """`count` int64 words of stream `stream`, on `device`.

        On the CPU the tensor shares a buffer that the next call overwrites (copy it to keep
        it); on other devices it is a new tensor.
        """
        _check(self._key, stream, count)
        if self._torch_cipher or torch.device(device).type != "cpu":
            return chacha20_words(self._key, stream, count, device)
        if count == 0:
            return torch.empty(0, dtype=torch.int64)
        nbytes = 8 * count
        if len(self._zeros) < nbytes:
            self._zeros = bytearray(nbytes)
            self._out = bytearray(nbytes)
        counter = stream.to_bytes(8, "big") + bytes(8)
        encryptor = Cipher(algorithms.AES(self._key), modes.CTR(counter)).encryptor()
        written = encryptor.update_into(memoryview(self._zeros)[:nbytes], self._out)
        return torch.frombuffer(self._out, dtype=torch.int64, count=written // 8)


def _rotl(x: torch.Tensor, n: int) -> torch.Tensor:
    """Rotate 32-bit values (held in int64, in [0, 2^32)) left by n."""
    return ((x << n) | (x >> (32 - n))) & _MASK32


def _quarter_rounds(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> None:
    """Four ChaCha quarter rounds at once (rows of a, b, c, d; RFC 8439 Sec. 2.1), in place."""
    a.add_(b).bitwise_and_(_MASK32)
    d.copy_(_rotl(d ^ a, 16))
    c.add_(d).bitwise_and_(_MASK32)
    b.copy_(_rotl(b ^ c, 12))
    a.add_(b).bitwise_and_(_MASK32)
    d.copy_(_rotl(d ^ a, 8))
    c.add_(d).bitwise_and_(_MASK32)
    b.copy_(_rotl(b ^ c, 7))


def chacha20_words(key: bytes, stream: int, count: int, device: torch.device | str) -> torch.Tensor:
    """The first `count` 64-bit words of ChaCha20(key, nonce = stream as 96 little-endian
    bits, counter from 0), computed on `device` with PyTorch integer operations (RFC 8439
    Sec. 2.3, all blocks in parallel)."""
    _check(key, stream, count)
    blocks = -(-count // _WORDS_PER_BLOCK)
    if blocks == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    key_words = [int.from_bytes(key[4 * i : 4 * i + 4], "little") for i in range(8)]
    nonce_words = [(stream >> (32 * i)) & _MASK32 for i in range(3)]
    initial = torch.empty((16, blocks), dtype=torch.int64, device=device)
    for row, value in enumerate((*_CONSTANTS, *key_words)):
        initial[row].fill_(value)
    initial[12] = torch.arange(blocks, dtype=torch.int64, device=device)  # block counter
    for i, value in enumerate(nonce_words):
        initial[13 + i].fill_(value)
    state = initial.clone()
    for _ in range(10):  # 20 rounds: column round, then diagonal round
        _quarter_rounds(state[0:4], state[4:8], state[8:12], state[12:16])
        diagonal = [
            state[0:4],
            state[4:8].roll(-1, 0),
            state[8:12].roll(-2, 0),
            state[12:16].roll(-3, 0),
        ]
        _quarter_rounds(*diagonal)
        state[4:8] = diagonal[1].roll(1, 0)
        state[8:12] = diagonal[2].roll(2, 0)
        state[12:16] = diagonal[3].roll(3, 0)
    state.add_(initial).bitwise_and_(_MASK32)
    # Serialise as RFC 8439 does (16 little-endian 32-bit words per block), read back as
    # little-endian 64-bit words: word j of a block = state[2j] + 2^32 state[2j + 1].
    low, high = state[0::2].T, state[1::2].T  # (blocks, 8) each
    high = torch.where(high >= (1 << 31), high - (1 << 32), high)  # signed high half
    return (high * (1 << 32) + low).reshape(-1)[:count]


__all__ = ["KEY_BYTES", "Keystream", "chacha20_words"]
