"""Mask expansion: seekable, equal to plain AES-256-CTR, domain-separated; ring helpers."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import InvalidArgument, add_masked, ring_dtype
from privacy.secagg.prg import (
    CHUNK_BYTES,
    MaskPurpose,
    MaskStream,
    apply_masks,
    keystream_vector,
    mask_key,
)

KEY = bytes(range(32))


def _reference(key: bytes, length: int, bits: int) -> np.ndarray:
    """The keystream straight from AES-CTR with the counter block starting at zero."""
    width = bits // 8
    raw = (
        Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(length * width))
    )
    return np.frombuffer(raw, dtype=f"<u{width}").astype(ring_dtype(bits))


@pytest.mark.parametrize("bits", [32, 64])
def test_masks_are_the_aes_ctr_keystream_across_chunks(bits: int) -> None:
    length = 2 * CHUNK_BYTES // (bits // 8) + 7  # three chunks, the last one partial
    np.testing.assert_array_equal(
        keystream_vector(KEY, 0, length, bits), _reference(KEY, length, bits)
    )


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([32, 64]), bounds=st.lists(st.integers(0, 3000), min_size=2, max_size=2)
)
def test_any_slice_of_the_masks_is_produced_on_its_own(bits, bounds) -> None:
    start, stop = sorted(bounds)
    whole = _reference(KEY, 3000, bits)
    np.testing.assert_array_equal(keystream_vector(KEY, start, stop, bits), whole[start:stop])


def test_a_slice_starting_deep_into_the_vector_matches() -> None:
    start = 5 * CHUNK_BYTES // 4 + 3  # not a multiple of the AES block, past several chunks
    whole = _reference(KEY, start + 100, 32)
    np.testing.assert_array_equal(keystream_vector(KEY, start, start + 100, 32), whole[start:])


def test_positive_and_negative_masks_cancel_mod_2k() -> None:
    target = np.arange(1000, dtype=np.uint32)
    other = bytes(reversed(KEY))
    apply_masks(target, 10, [MaskStream(KEY, 1), MaskStream(other, 1), MaskStream(KEY, -1)])
    apply_masks(target, 10, [MaskStream(other, -1)])
    np.testing.assert_array_equal(target, np.arange(1000, dtype=np.uint32))


def test_mask_keys_are_separated_by_federation_round_and_purpose() -> None:
    seed = os.urandom(32)
    keys = {
        mask_key(seed, "fed", 1, MaskPurpose.SELF),
        mask_key(seed, "fed", 1, MaskPurpose.PAIRWISE),
        mask_key(seed, "fed", 2, MaskPurpose.SELF),
        mask_key(seed, "fee", 1, MaskPurpose.SELF),
        mask_key(os.urandom(32), "fed", 1, MaskPurpose.SELF),
    }
    assert len(keys) == 5
    assert mask_key(seed, "fed", 1, MaskPurpose.SELF) == mask_key(seed, "fed", 1, MaskPurpose.SELF)


def test_bad_mask_parameters_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="32 bytes"):
        mask_key(b"short", "fed", 1, MaskPurpose.SELF)
    with pytest.raises(InvalidArgument, match="sign"):
        MaskStream(KEY, 0)
    with pytest.raises(InvalidArgument, match=">= 0"):
        apply_masks(np.zeros(4, dtype=np.uint32), -1, [])


def test_add_masked_wraps_and_checks_its_arguments() -> None:
    acc = np.array([2**32 - 1, 5], dtype=np.uint32)
    add_masked(acc, np.array([2, 1], dtype=np.uint32))
    np.testing.assert_array_equal(acc, [1, 6])
    with pytest.raises(InvalidArgument, match="dtype"):
        add_masked(acc, np.array([2, 1], dtype=np.uint64))
    with pytest.raises(InvalidArgument, match="shape"):
        add_masked(acc, np.array([2], dtype=np.uint32))
    with pytest.raises(InvalidArgument, match="uint32 or uint64"):
        add_masked(np.zeros(2), np.zeros(2))
    frozen = np.zeros(2, dtype=np.uint32)
    frozen.flags.writeable = False
    with pytest.raises(InvalidArgument, match="writeable"):
        add_masked(frozen, np.zeros(2, dtype=np.uint32))


def test_domain_labels_are_distinct_and_prefix_free() -> None:
    from privacy.secagg import domains

    labels = [v for k, v in vars(domains).items() if k.isupper() and isinstance(v, bytes)]
    assert len(labels) >= 9
    for a in labels:
        for b in labels:
            assert a == b or not b.startswith(a), (a, b)
