"""The blob-store contract, on both backends: the local folder and a real S3-compatible store
(SeaweedFS). Write-once, streamed with limits, hashed, ranged reads, nothing visible of a
refused write. Backend-specific details (file modes, digest files) are in
tests/unit/coordinator/test_blob_store.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest

from coordinator.blobs.local import LocalBlobStore
from coordinator.blobs.s3 import SPOOL_MEMORY_BYTES, S3BlobStore, S3Location
from coordinator.blobs.store import (
    BlobConflict,
    BlobNotFound,
    BlobRef,
    BlobSizeMismatch,
    BlobStore,
    BlobTooLarge,
    InvalidInput,
)
from coordinator.runtime import blob_store
from coordinator.settings import Settings
from tests.seaweedfs import SeaweedS3

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
        return
    server: SeaweedS3 = request.getfixturevalue("s3_server")
    settings = Settings(
        blob_url=f"s3://{server.bucket}/{namespace}",
        s3_endpoint_url=server.endpoint_url,
        s3_access_key_id=server.access_key_id,
        s3_secret_access_key=server.secret_access_key,
    )
    made = blob_store(settings)
    assert isinstance(made, S3BlobStore)
    yield made


async def _stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _write_stream(store: BlobStore, key: str, chunks: list[bytes], **limits: int) -> BlobRef:
    return asyncio.run(store.write_stream(key, _stream(chunks), **limits))


def test_streamed_write_stores_exact_bytes_with_their_digest(store: BlobStore) -> None:
    chunks = [bytes([i]) * 70_000 for i in range(5)]
    ref = _write_stream(store, "masked/r1/p1.bin", chunks, max_size=1 << 20)
    content = b"".join(chunks)
    assert ref.size == len(content)
    assert ref.sha256 == hashlib.sha256(content).hexdigest()
    assert store.stat("masked/r1/p1.bin") == ref
    assert b"".join(store.iter_chunks(ref.key)) == content


def test_a_large_streamed_write_spills_and_reads_back_in_ranges(store: BlobStore) -> None:
    content = os.urandom(SPOOL_MEMORY_BYTES + 3 * (1 << 20) + 17)
    chunks = [content[i : i + (1 << 20)] for i in range(0, len(content), 1 << 20)]
    ref = _write_stream(store, "big.bin", chunks, max_size=len(content), expected_size=len(content))
    assert ref == BlobRef("big.bin", len(content), hashlib.sha256(content).hexdigest())
    start, stop = 5_000_001, 9_999_999
    assert store.read_range("big.bin", start, stop) == content[start:stop]
    assert b"".join(store.iter_chunks("big.bin", start, stop)) == content[start:stop]
    assert b"".join(store.iter_chunks("big.bin")) == content


def test_a_stream_over_the_limit_is_refused_and_leaves_nothing(store: BlobStore) -> None:
    with pytest.raises(BlobTooLarge, match="limit of 100 bytes"):
        _write_stream(store, "big.bin", [b"x" * 60, b"x" * 60], max_size=100)
    with pytest.raises(BlobNotFound):
        store.stat("big.bin")


def test_announced_size_must_match(store: BlobStore) -> None:
    with pytest.raises(BlobSizeMismatch, match="ended after 10 of the announced 12"):
        store.write("short.bin", [b"0123456789"], max_size=100, expected_size=12)
    with pytest.raises(BlobSizeMismatch, match="longer than"):
        store.write("long.bin", [b"0123456789"], max_size=100, expected_size=8)
    with pytest.raises(BlobTooLarge):
        store.write("huge.bin", [b""], max_size=100, expected_size=101)
    for key in ("short.bin", "long.bin", "huge.bin"):
        with pytest.raises(BlobNotFound):
            store.stat(key)


def test_rewriting_identical_content_is_idempotent_but_different_content_is_refused(
    store: BlobStore,
) -> None:
    first = store.write("models/v1.bin", [b"weights"], max_size=100)
    assert store.write("models/v1.bin", [b"weights"], max_size=100) == first
    with pytest.raises(BlobConflict):
        store.write("models/v1.bin", [b"other!!"], max_size=100)
    assert b"".join(store.iter_chunks("models/v1.bin")) == b"weights"


def test_ranged_reads_return_exactly_the_slice(store: BlobStore) -> None:
    content = bytes(range(256)) * 40
    store.write("vector.bin", [content], max_size=1 << 20)
    assert store.read_range("vector.bin", 1000, 1016) == content[1000:1016]
    assert store.read_range("vector.bin", 0, 0) == b""
    assert store.read_range("vector.bin", 10_230, 10_240) == content[10_230:]
    assert b"".join(store.iter_chunks("vector.bin", 5000, 6000)) == content[5000:6000]
    with pytest.raises(InvalidInput, match="outside blob"):
        store.read_range("vector.bin", 10_000, 10_241)
    with pytest.raises(InvalidInput, match="outside blob"):
        store.read_range("vector.bin", 10_240, 10_300)
    with pytest.raises(InvalidInput):
        store.read_range("vector.bin", 20, 10)
    with pytest.raises(BlobNotFound):
        store.read_range("missing.bin", 0, 10)


def test_ranged_reads_into_a_buffer_fill_exactly_that_buffer(store: BlobStore) -> None:
    content = bytes(range(256)) * 40
    store.write("vector.bin", [content], max_size=1 << 20)
    buffer = bytearray(b"\xff" * 32)
    view = memoryview(buffer)
    store.read_range_into("vector.bin", 1000, view[8:24])
    assert bytes(buffer) == b"\xff" * 8 + content[1000:1016] + b"\xff" * 8
    store.read_range_into("vector.bin", 10_208, view)
    assert bytes(buffer) == content[10_208:]
    with pytest.raises(InvalidInput, match="outside blob"):
        store.read_range_into("vector.bin", 10_220, view)
    with pytest.raises(BlobNotFound):
        store.read_range_into("missing.bin", 0, view)


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a//b", ".hidden", "UPPER", ""])
def test_keys_that_could_escape_or_collide_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidInput):
        store.write(key, [b"x"], max_size=10)


def test_delete_and_readiness_check(store: BlobStore) -> None:
    store.write("a.bin", [b"abc"], max_size=10)
    store.delete("a.bin")
    store.delete("a.bin")  # no error when it is already gone
    with pytest.raises(BlobNotFound):
        store.read_range("a.bin", 0, 1)
    store.check()


def test_an_s3_store_keeps_its_blobs_under_its_prefix(s3_server: SeaweedS3, namespace: str) -> None:
    location = S3Location(
        s3_server.bucket,
        f"{namespace}/deep",
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key=s3_server.secret_access_key,
    )
    S3BlobStore(location).write("models/x/v000001.bin", [b"abc"], max_size=10)
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=s3_server.bucket, Prefix=namespace)  # type: ignore[attr-defined]
    keys = [item["Key"] for item in listed["Contents"]]
    assert keys == [f"{namespace}/deep/models/x/v000001.bin"]


def test_a_wrong_secret_key_is_refused_by_the_store(s3_server: SeaweedS3, namespace: str) -> None:
    location = S3Location(
        s3_server.bucket,
        namespace,
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key="not-the-secret",
    )
    with pytest.raises(Exception, match=r"SignatureDoesNotMatch|AccessDenied|403"):
        S3BlobStore(location).check()
