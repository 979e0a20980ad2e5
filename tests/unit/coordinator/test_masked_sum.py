"""Summing stored masked uploads over a coordinate range (coordinator/rounds/masked_sum.py):
the slice of the sum mod 2^k, each upload read once into reused buffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.blobs.local import LocalBlobStore
from coordinator.blobs.store import BlobNotFound
from coordinator.rounds.masked_sum import (
    READ_AHEAD,
    read_ring_slices,
    ring_bytes,
    sum_masked_range,
)
from privacy.secagg import MaskedInput


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("count", [1, READ_AHEAD, 3 * READ_AHEAD + 1])
def test_a_range_of_the_uploads_sums_to_that_range_of_their_sum_mod_2k(
    tmp_path: Path, bits: int, count: int
) -> None:
    store = LocalBlobStore(tmp_path)
    dtype = np.dtype(f"<u{bits // 8}")
    rng = np.random.default_rng(bits + count)
    length, start, stop = 1000, 137, 871
    vectors = [rng.integers(0, np.iinfo(dtype).max, length, dtype=dtype) for _ in range(count)]
    keys = []
    for i, vector in enumerate(vectors):
        # Stored as agents upload them: a header, then the little-endian vector.
        content = bytes(MaskedInput.HEADER_SIZE) + vector.tobytes()
        keys.append(store.write(f"up/{i}.bin", [content], max_size=len(content)).key)
    first, last = MaskedInput.byte_range(start, stop, bits)
    total = np.zeros(stop - start, dtype=dtype.newbyteorder("="))
    sum_masked_range(store, keys, first, total)
    expected = np.zeros(length, dtype=dtype)
    for vector in vectors:
        expected += vector  # wraps mod 2^k
    assert last - first == total.nbytes
    np.testing.assert_array_equal(total, expected[start:stop])


def test_a_missing_upload_fails_the_slice(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.write("up/0.bin", [bytes(400)], max_size=400)
    with pytest.raises(BlobNotFound):
        sum_masked_range(store, ["up/0.bin", "up/gone.bin"], 0, np.zeros(100, dtype=np.uint32))


def test_stored_slices_read_back_into_one_vector_in_place(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    whole = np.arange(10, dtype=np.uint32) * 1_000_000_007
    cuts = [(0, 4), (4, 9), (9, 10)]
    slices = []
    for index, (start, stop) in enumerate(cuts):
        content = ring_bytes(whole[start:stop])
        ref = store.write(f"sum/{index}.bin", [content], max_size=len(content))
        slices.append((ref.key, start, stop))
    out = np.full(10, 7, dtype=np.uint32)
    read_ring_slices(store, slices, out)
    np.testing.assert_array_equal(out, whole)
