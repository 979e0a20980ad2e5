"""The keystream: ChaCha20 in PyTorch (the GPU path) is OpenSSL's ChaCha20, word for word."""

from __future__ import annotations

import os

import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privacy.dp import InvalidPrivacyParameter
from privacy.dp.keystream import Keystream, chacha20_words


def openssl_chacha20(key: bytes, stream: int, count: int) -> torch.Tensor:
    nonce = bytes(4) + stream.to_bytes(12, "little")  # block counter 0, then the nonce
    data = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(bytes(8 * count))
    return torch.frombuffer(bytearray(data), dtype=torch.int64)


def test_torch_chacha20_matches_rfc8439_test_vector() -> None:
    """RFC 8439 Sec. 2.3.2: key 00..1f, nonce 00:00:00:09:00:00:00:4a:00:00:00:00, block 1."""
    key = bytes(range(32))
    stream = int.from_bytes(bytes.fromhex("000000090000004a00000000"), "little")
    block_1 = chacha20_words(key, stream, 16, "cpu")[8:].numpy().tobytes()
    assert block_1.hex() == (
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
    )


@pytest.mark.parametrize("count", [1, 7, 8, 9, 1000, 4099])
def test_torch_chacha20_equals_openssl(count: int) -> None:
    key = os.urandom(32)
    stream = int.from_bytes(os.urandom(8), "little")
    assert torch.equal(
        chacha20_words(key, stream, count, "cpu"), openssl_chacha20(key, stream, count)
    )


def test_the_torch_cipher_path_of_a_keystream_is_chacha20() -> None:
    key = os.urandom(32)
    assert torch.equal(
        Keystream(key, torch_cipher=True).words(100, 5), openssl_chacha20(key, 5, 100)
    )


def test_cpu_keystream_is_aes256_ctr_one_stream_per_counter_block_range() -> None:
    key = os.urandom(32)
    keystream = Keystream(key)
    for stream in (0, 1, 2**63 + 5):
        counter = stream.to_bytes(8, "big") + bytes(8)
        expected = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor().update(bytes(80))
        assert keystream.words(10, stream).numpy().tobytes() == expected


def test_streams_differ_and_a_stream_is_the_same_each_time() -> None:
    keystream = Keystream(os.urandom(32))
    first = keystream.words(64, 0).clone()
    assert torch.equal(keystream.words(64, 0), first)
    assert not torch.equal(keystream.words(64, 1), first)


def test_bad_keys_and_streams_are_refused() -> None:
    with pytest.raises(InvalidPrivacyParameter, match="32 bytes, got 16"):
        Keystream(bytes(16))
    with pytest.raises(InvalidPrivacyParameter, match="stream"):
        Keystream(bytes(32)).words(1, 2**64)
    with pytest.raises(InvalidPrivacyParameter, match="at most"):
        chacha20_words(bytes(32), 0, 8 * 2**32 + 1, "cpu")
