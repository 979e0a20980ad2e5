"""Seekable mask expansion: AES-256-CTR keystreams from 32-byte seeds (Bonawitz Fig. 4, round 2).

A mask is PRG(seed) read as a vector of Z_2^k. The PRG is AES-256 in counter mode, keyed by
HKDF-SHA256(seed, info = label | federation | round | purpose), with the counter block
starting at 0 for coordinate 0. Coordinate i occupies keystream bytes [i*w, (i+1)*w) for
w = k/8, so the masks of coordinates [a, b) start at counter block a*w // 16: they are
produced without producing [0, a), which is what lets several workers unmask slices of one
sum in parallel, and what makes a slice's masks identical to the same coordinates of the
whole vector's masks.

Performance: the floor of any implementation is generating the keystream. We generate it
into one preallocated buffer with `update_into`, chunk by chunk, and add each chunk into the
target while both are still in cache, looping over seeds inside the chunk loop.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from privacy.secagg import domains
from privacy.secagg.errors import InvalidArgument
from privacy.secagg.ring import RingVector, ring_dtype

AES_BLOCK: Final = 16
MASK_KEY_SIZE: Final = 32  # AES-256
# Bytes of keystream generated per step: large enough that per-call overhead is noise,
# small enough that the keystream buffer and the target chunk stay in L2 cache.
CHUNK_BYTES: Final = 256 * 1024
_ZEROS: Final = bytes(CHUNK_BYTES)


class MaskPurpose(enum.IntEnum):
    """Which kind of mask a seed expands to; part of the key derivation."""

    SELF = 1  # PRG(b_u): the self mask
    PAIRWISE = 2  # PRG(s_uv): the pairwise mask between u and v


def mask_key(seed: bytes, federation: str, round_number: int, purpose: MaskPurpose) -> bytes:
    """AES-256 key of the keystream of `seed` for one federation, round and purpose."""
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise InvalidArgument("a mask seed must be 32 bytes")
    fed = federation.encode("utf-8")
    info = (
        domains.MASK_KEY
        + len(fed).to_bytes(2, "big")
        + fed
        + round_number.to_bytes(8, "big")
        + bytes([purpose])
    )
    hkdf = HKDF(algorithm=hashes.SHA256(), length=MASK_KEY_SIZE, salt=None, info=info)
    return hkdf.derive(seed)


def pairwise_sign(me: int, peer: int) -> int:
    """Δ in p_uv = Δ·PRG(s_uv) (Bonawitz §4): +1 for the lower id, -1 for the higher, so the
    pair's masks cancel in the sum."""
    return 1 if me < peer else -1


@dataclass(frozen=True)
class MaskStream:
    """One keystream to add to a vector: sign +1 adds PRG(key), -1 subtracts it."""

    key: bytes = field(repr=False)
    sign: int

    def __post_init__(self) -> None:
        if len(self.key) != MASK_KEY_SIZE:
            raise InvalidArgument(f"a mask key must be {MASK_KEY_SIZE} bytes")
        if self.sign not in (1, -1):
            raise InvalidArgument(f"a mask sign must be +1 or -1, got {self.sign!r}")


def _encryptor(key: bytes, byte_start: int) -> CipherContext:
    """AES-CTR positioned at keystream byte `byte_start` (seek, Bonawitz PRG made seekable)."""
    block, skip = divmod(byte_start, AES_BLOCK)
    counter = block.to_bytes(AES_BLOCK, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    if skip:
        encryptor.update(bytes(skip))
    return encryptor


def apply_masks(
    target: RingVector,
    start: int,
    streams: Sequence[MaskStream],
    *,
    source: RingVector | None = None,
) -> None:
    """Add Σ sign·PRG(key)[start : start + len(target)] to `target`, in place, mod 2^k.

    `target` holds coordinates [start, start + len(target)) of a vector of Z_2^k (uint32 or
    uint64, 1-D, contiguous, writeable); callers validate it with `check_ring_vector`.
    With `source` (same dtype and length), `target` is first overwritten with it, chunk by
    chunk, which saves a separate pass over memory when masking a copy.
    """
    if start < 0:
        raise InvalidArgument(f"the first coordinate must be >= 0, got {start}")
    itemsize = target.dtype.itemsize
    dtype = ring_dtype(itemsize * 8)
    encryptors = [_encryptor(stream.key, start * itemsize) for stream in streams]
    # update_into may need up to one block of slack beyond the data it writes.
    buffer = np.empty(CHUNK_BYTES + AES_BLOCK, dtype=np.uint8)
    keystream = buffer[:CHUNK_BYTES].view(dtype)
    output = buffer.data
    zeros = memoryview(_ZEROS)
    per_chunk = CHUNK_BYTES // itemsize
    length = target.shape[0]
    for offset in range(0, length, per_chunk):
        count = min(per_chunk, length - offset)
        part = target[offset : offset + count]
        if source is not None:
            np.copyto(part, source[offset : offset + count])
        data = zeros[: count * itemsize]
        piece = keystream[:count]
        for encryptor, stream in zip(encryptors, streams, strict=True):
            encryptor.update_into(data, output)
            if stream.sign > 0:
                np.add(part, piece, out=part)
            else:
                np.subtract(part, piece, out=part)


def keystream_vector(key: bytes, start: int, stop: int, bits: int) -> RingVector:
    """The mask PRG(key)[start:stop] itself (for tests and audits; masking uses apply_masks)."""
    if not 0 <= start <= stop:
        raise InvalidArgument(f"invalid coordinate range [{start}, {stop})")
    out = np.zeros(stop - start, dtype=ring_dtype(bits))
    apply_masks(out, start, [MaskStream(key, 1)])
    return out
