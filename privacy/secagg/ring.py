"""Vectors in the ring Z_2^k (k = 32 or 64) as numpy unsigned arrays.

Masked inputs, masks and sums are uint32 (k = 32) or uint64 (k = 64) arrays whose
wrap-around arithmetic is exactly addition mod 2^k, so summing uploads and removing masks
are plain in-place numpy adds. Every public entry point checks dtype, shape and length here,
so a float array or a vector of the wrong length is refused, never silently cast.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from privacy.secagg.errors import InvalidArgument

SUPPORTED_BITS: Final = (32, 64)
_DTYPES: Final[dict[int, np.dtype[np.unsignedinteger]]] = {
    32: np.dtype(np.uint32),
    64: np.dtype(np.uint64),
}

RingVector = NDArray[np.unsignedinteger]


def ring_dtype(bits: int) -> np.dtype[np.unsignedinteger]:
    """The numpy dtype holding one element of Z_2^bits."""
    if bits not in _DTYPES:
        raise InvalidArgument(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    return _DTYPES[bits]


def check_ring_vector(
    vector: object, bits: int, length: int, what: str, *, writeable: bool = False
) -> RingVector:
    """Return `vector` unchanged if it is a 1-D C-contiguous array of Z_2^bits of `length`."""
    dtype = ring_dtype(bits)
    if not isinstance(vector, np.ndarray):
        raise InvalidArgument(f"{what} must be a numpy array, got {type(vector).__name__}")
    if vector.dtype != dtype:
        raise InvalidArgument(
            f"{what} must have dtype {dtype} for {bits}-bit aggregation, got {vector.dtype}"
        )
    if vector.ndim != 1 or vector.shape[0] != length:
        raise InvalidArgument(f"{what} must have shape ({length},), got {vector.shape}")
    if not vector.flags.c_contiguous:
        raise InvalidArgument(f"{what} must be C-contiguous")
    if writeable and not vector.flags.writeable:
        raise InvalidArgument(f"{what} must be writeable")
    return vector


def add_masked(accumulator: RingVector, vector: RingVector) -> None:
    """accumulator += vector (mod 2^k), in place: sums masked uploads slice by slice.

    Both must be 1-D arrays of the same unsigned dtype (uint32 or uint64) and length.
    """
    if not isinstance(accumulator, np.ndarray):
        raise InvalidArgument("the accumulator must be a numpy array")
    bits = accumulator.dtype.itemsize * 8
    if accumulator.dtype not in _DTYPES.values():
        raise InvalidArgument(f"the accumulator must be uint32 or uint64, got {accumulator.dtype}")
    length = accumulator.shape[0] if accumulator.ndim == 1 else -1
    check_ring_vector(accumulator, bits, length, "the accumulator", writeable=True)
    check_ring_vector(vector, bits, length, "the added vector")
    np.add(accumulator, vector, out=accumulator)
