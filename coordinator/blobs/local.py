"""The blob store on a local (or shared, mounted) folder.

A write goes to a private temporary file (mode 0600, O_EXCL) under `<root>/.incoming/`,
hashed and counted as it arrives, fsync'd, then hard-linked to its final name: linking
never replaces an existing file, so a key is committed atomically and at most once. The
SHA-256 of each committed blob is then kept beside it (`<name>.sha256`), so `stat` need
not re-read a large file (if that file is missing, after a crash, `stat` recomputes it).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

from anyio import to_thread

from coordinator.blobs.store import (
    READ_CHUNK_BYTES,
    BlobConflict,
    BlobNotFound,
    BlobRef,
    BlobSizeMismatch,
    BlobStore,
    BlobTooLarge,
    InvalidInput,
    check_key,
    check_range,
)

INCOMING_DIR: Final = ".incoming"
DIGEST_SUFFIX: Final = ".sha256"
FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700


class _PendingBlob:
    """A blob being written: counts, hashes and enforces the size limit chunk by chunk."""

    def __init__(self, store: LocalBlobStore, key: str, max_size: int, expected: int | None):
        if expected is not None and expected > max_size:
            raise BlobTooLarge(f"blob {key!r} would be {expected} bytes; the limit is {max_size}")
        self.store = store
        self.key = key
        self.max_size = max_size
        self.expected = expected
        self.size = 0
        self.hasher = hashlib.sha256()
        store.incoming.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self.path = store.incoming / secrets.token_hex(16)
        self.descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_size:
            raise BlobTooLarge(
                f"blob {self.key!r} is larger than the limit of {self.max_size} bytes"
            )
        if self.expected is not None and self.size > self.expected:
            raise BlobSizeMismatch(
                f"blob {self.key!r} is longer than the announced {self.expected} bytes"
            )
        self.hasher.update(chunk)
        view = memoryview(chunk)
        while view:
            written = os.write(self.descriptor, view)
            view = view[written:]

    def commit(self) -> BlobRef:
        if self.expected is not None and self.size != self.expected:
            raise BlobSizeMismatch(
                f"blob {self.key!r} ended after {self.size} of the announced {self.expected} bytes"
            )
        os.fsync(self.descriptor)
        os.close(self.descriptor)
        self.descriptor = -1
        ref = BlobRef(key=self.key, size=self.size, sha256=self.hasher.hexdigest())
        return self.store._publish(self.path, ref)

    def discard(self) -> None:
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1
        self.path.unlink(missing_ok=True)


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / INCOMING_DIR

    def _path(self, key: str) -> Path:
        if check_key(key).endswith(DIGEST_SUFFIX):
            raise InvalidInput(f"invalid blob key {key!r}: the suffix {DIGEST_SUFFIX} is reserved")
        return self.root / key

    async def write_stream(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_size: int,
        expected_size: int | None = None,
    ) -> BlobRef:
        self._path(key)
        pending = await to_thread.run_sync(_PendingBlob, self, key, max_size, expected_size)
        try:
            async for chunk in chunks:
                if chunk:
                    await to_thread.run_sync(pending.add, chunk)
            return await to_thread.run_sync(pending.commit)
        finally:
            await to_thread.run_sync(pending.discard)

    def write(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        max_size: int,
        expected_size: int | None = None,
    ) -> BlobRef:
        self._path(key)
        pending = _PendingBlob(self, key, max_size, expected_size)
        try:
            for chunk in chunks:
                if chunk:
                    pending.add(chunk)
            return pending.commit()
        finally:
            pending.discard()

    def _publish(self, draft: Path, ref: BlobRef) -> BlobRef:
        final = self._path(ref.key)
        final.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        try:
            os.link(draft, final)  # atomic and never replaces: the first writer wins
        except FileExistsError:
            existing = self.stat(ref.key)
            if existing != ref:
                raise BlobConflict(
                    f"blob {ref.key!r} already exists with different content"
                ) from None
            return existing
        _write_private(_digest_path(final), ref.sha256.encode("ascii"))
        return ref

    def stat(self, key: str) -> BlobRef:
        path = self._path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key!r}") from None
        try:
            digest = _digest_path(path).read_text("ascii").strip()
        except FileNotFoundError:
            digest = _file_digest(path)
            _write_private(_digest_path(path), digest.encode("ascii"))
        return BlobRef(key=key, size=size, sha256=digest)

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                check_range(size, start, stop, key)
                handle.seek(start)
                return handle.read(stop - start)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key!r}") from None

    def read_range_into(self, key: str, start: int, out: memoryview) -> None:
        path = self._path(key)
        try:
            with path.open("rb", buffering=0) as handle:
                size = os.fstat(handle.fileno()).st_size
                check_range(size, start, start + out.nbytes, key)
                handle.seek(start)
                filled = 0
                while filled < out.nbytes:
                    got = handle.readinto(out[filled:])
                    if not got:
                        raise BlobSizeMismatch(f"blob {key!r} ended while being read")
                    filled += got
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key!r}") from None

    def iter_chunks(self, key: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key!r}") from None
        size = os.fstat(handle.fileno()).st_size
        end = size if stop is None else stop
        try:
            check_range(size, start, end, key)
        except Exception:
            handle.close()
            raise
        return _chunks(handle, start, end)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        _digest_path(path).unlink(missing_ok=True)

    def check(self) -> None:
        self.incoming.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        probe = self.incoming / f"probe-{secrets.token_hex(8)}"
        _write_private(probe, b"")
        probe.unlink()


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def _chunks(handle: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = handle.read(min(READ_CHUNK_BYTES, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def _write_private(path: Path, content: bytes) -> None:
    draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(draft, path)
