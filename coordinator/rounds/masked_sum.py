"""Summing the survivors' masked uploads over one coordinate range, each read once.

A slice task (coordinator/rounds/aggregation.py) needs Σ y_u over coordinates [start, stop)
of the survivors' stored uploads. `sum_masked_range` reads that byte range of each upload
into one of a few reusable buffers and adds it into the accumulator in place, in Z_2^k
(numpy unsigned adds wrap): no array is allocated per upload, and the only per-round work
that grows with n x d is reading each upload once and adding it. Up to `READ_AHEAD` reads
are in flight on a small thread pool while the previous upload is added (blob reads and
numpy adds both release the GIL), so the latency of an object store (one ranged GET per
upload) overlaps the summing instead of adding up.

Uploads and slices are stored little-endian (`privacy.secagg.MaskedInput`); on a
big-endian host the buffers are byte-swapped in place after each read.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

import numpy as np

from coordinator.blobs.store import BlobStore
from privacy.secagg import add_masked
from privacy.secagg.ring import RingVector

#: Uploads read ahead of the one being added (per slice task): enough to hide an object
#: store's request latency behind the adds, few enough that the buffers (READ_AHEAD slices
#: of one upload) stay small.
READ_AHEAD: Final = 4

_SWAP: Final = sys.byteorder != "little"


def sum_masked_range(
    blobs: BlobStore, keys: Sequence[str], first_byte: int, accumulator: RingVector
) -> None:
    """accumulator += Σ over `keys` of bytes [first_byte, first_byte + accumulator.nbytes)
    of each blob, read as little-endian elements of the accumulator's ring, in place."""
    if not keys:
        return
    depth = min(READ_AHEAD, len(keys))
    buffers = [np.empty_like(accumulator) for _ in range(depth)]
    views = [buffer.data.cast("B") for buffer in buffers]
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="fmtl-slice-read") as pool:

        def read(index: int) -> Future[None]:
            slot = index % depth
            return pool.submit(blobs.read_range_into, keys[index], first_byte, views[slot])

        pending = deque(read(index) for index in range(depth))
        for index in range(len(keys)):
            pending.popleft().result()
            buffer = buffers[index % depth]
            if _SWAP:
                buffer.byteswap(inplace=True)
            add_masked(accumulator, buffer)
            if index + depth < len(keys):
                # The slot just added is free again: read the upload `depth` places on into it.
                pending.append(read(index + depth))


def read_ring_slices(
    blobs: BlobStore, slices: Sequence[tuple[str, int, int]], out: RingVector
) -> None:
    """Fill `out` (the whole vector) from stored slices (key, start, stop) of the sum, each
    read straight into its place."""
    itemsize = out.dtype.itemsize
    view = out.data.cast("B")
    for key, start, stop in slices:
        blobs.read_range_into(key, 0, view[start * itemsize : stop * itemsize])
    if _SWAP:
        out.byteswap(inplace=True)


def ring_bytes(vector: RingVector) -> bytes:
    """The little-endian bytes of a ring vector, as slices are stored."""
    return vector.astype(vector.dtype.newbyteorder("<"), copy=False).tobytes()
