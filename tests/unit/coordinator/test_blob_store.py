"""The local blob store: streamed, size-limited, hashed, atomic, private, ranged."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from coordinator.blobs.local import INCOMING_DIR, LocalBlobStore
from coordinator.blobs.store import (
    BlobConflict,
    BlobNotFound,
    BlobRef,
    BlobSizeMismatch,
    BlobTooLarge,
    InvalidInput,
)


async def _stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _write_stream(store: LocalBlobStore, key: str, chunks: list[bytes], **limits: int) -> BlobRef:
    return asyncio.run(store.write_stream(key, _stream(chunks), **limits))


def _visible_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and INCOMING_DIR not in path.parts]


def test_streamed_write_stores_exact_bytes_with_their_digest(blob_dir: Path) -> None:
    store = LocalBlobStore(blob_dir)
    chunks = [bytes([i]) * 70_000 for i in range(5)]
    ref = _write_stream(store, "masked/r1/p1.bin", chunks, max_size=1 << 20)
    content = b"".join(chunks)
    assert ref.size == len(content)
    assert ref.sha256 == hashlib.sha256(content).hexdigest()
    assert store.stat("masked/r1/p1.bin") == ref
    assert b"".join(store.iter_chunks(ref.key)) == content
    assert stat.S_IMODE((blob_dir / "masked/r1/p1.bin").stat().st_mode) == 0o600


def test_a_stream_over_the_limit_is_refused_and_leaves_nothing(blob_dir: Path) -> None:
    store = LocalBlobStore(blob_dir)
    with pytest.raises(BlobTooLarge, match="limit of 100 bytes"):
        _write_stream(store, "big.bin", [b"x" * 60, b"x" * 60], max_size=100)
    with pytest.raises(BlobNotFound):
        store.stat("big.bin")
    assert _visible_files(blob_dir) == []
    assert list((blob_dir / INCOMING_DIR).iterdir()) == []


def test_announced_size_must_match(blob_dir: Path) -> None:
    store = LocalBlobStore(blob_dir)
    with pytest.raises(BlobSizeMismatch, match="ended after 10 of the announced 12"):
        store.write("short.bin", [b"0123456789"], max_size=100, expected_size=12)
    with pytest.raises(BlobSizeMismatch, match="longer than"):
        store.write("long.bin", [b"0123456789"], max_size=100, expected_size=8)
    with pytest.raises(BlobTooLarge):
        store.write("huge.bin", [b""], max_size=100, expected_size=101)
    assert _visible_files(blob_dir) == []


def test_rewriting_identical_content_is_idempotent_but_different_content_is_refused(
    blob_dir: Path,
) -> None:
    store = LocalBlobStore(blob_dir)
    first = store.write("models/v1.bin", [b"weights"], max_size=100)
    assert store.write("models/v1.bin", [b"weights"], max_size=100) == first
    with pytest.raises(BlobConflict):
        store.write("models/v1.bin", [b"other!!"], max_size=100)
    assert b"".join(store.iter_chunks("models/v1.bin")) == b"weights"


def test_ranged_reads_return_exactly_the_slice(blob_dir: Path) -> None:
    store = LocalBlobStore(blob_dir)
    content = bytes(range(256)) * 40
    store.write("vector.bin", [content], max_size=1 << 20)
    assert store.read_range("vector.bin", 1000, 1016) == content[1000:1016]
    assert store.read_range("vector.bin", 0, 0) == b""
    assert b"".join(store.iter_chunks("vector.bin", 5000, 6000)) == content[5000:6000]
    with pytest.raises(InvalidInput, match="outside blob"):
        store.read_range("vector.bin", 10_000, 10_241)
    with pytest.raises(InvalidInput):
        store.read_range("vector.bin", 20, 10)


@pytest.mark.parametrize(
    "key", ["../escape", "/absolute", "a//b", ".hidden", "a/.incoming", "UPPER", "x.sha256", ""]
)
def test_keys_that_could_escape_or_collide_are_refused(blob_dir: Path, key: str) -> None:
    store = LocalBlobStore(blob_dir)
    with pytest.raises(InvalidInput):
        store.write(key, [b"x"], max_size=10)


def test_missing_digest_file_is_recomputed(blob_dir: Path) -> None:
    store = LocalBlobStore(blob_dir)
    ref = store.write("a.bin", [b"abc"], max_size=10)
    (blob_dir / "a.bin.sha256").unlink()
    assert store.stat("a.bin") == ref


def test_delete_and_readiness_check(blob_dir: Path) -> None:
    store = LocalBlobStore(blob_dir)
    store.write("a.bin", [b"abc"], max_size=10)
    store.delete("a.bin")
    with pytest.raises(BlobNotFound):
        store.read_range("a.bin", 0, 1)
    store.check()
