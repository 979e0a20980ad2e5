"""Where model versions and masked updates live: an interface any object store can implement.

Blobs are write-once: a key, once committed, always holds the same bytes (a repeated write
of identical content is accepted and returns the same reference, which makes uploads
idempotent; different content under the same key is refused). Writes are streamed with a
hard size limit and hashed on the way; reads can be ranged, because unmasking workers each
read one coordinate slice of every masked update.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from coordinator.errors import AlreadyExists, InvalidInput, NotFound, PayloadTooLarge

#: Keys are slash-separated segments of lowercase letters, digits, '.', '_' and '-', not
#: starting with '.', so a key can never climb out of the store or hide a file.
KEY_PATTERN: Final = re.compile(
    r"^[a-z0-9_-][a-z0-9._-]{0,127}(/[a-z0-9_-][a-z0-9._-]{0,127}){0,7}$"
)
#: Chunk size of streamed reads.
READ_CHUNK_BYTES: Final = 1 << 20


class BlobNotFound(NotFound):
    slug = "blob-not-found"


class BlobTooLarge(PayloadTooLarge):
    slug = "blob-too-large"


class BlobSizeMismatch(InvalidInput):
    """The stream ended before (or ran past) the size it announced."""

    slug = "blob-size-mismatch"


class BlobConflict(AlreadyExists):
    """The key already holds different content."""

    slug = "blob-conflict"


__all__ = [
    "BlobConflict",
    "BlobNotFound",
    "BlobRef",
    "BlobSizeMismatch",
    "BlobStore",
    "BlobTooLarge",
    "InvalidInput",
]


@dataclass(frozen=True)
class BlobRef:
    """A committed blob: its key, exact size and SHA-256 (hex)."""

    key: str
    size: int
    sha256: str


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise InvalidInput(f"invalid blob key {key!r}")
    return key


def check_range(ref_size: int, start: int, stop: int, key: str) -> None:
    if not 0 <= start <= stop <= ref_size:
        raise InvalidInput(
            f"byte range [{start}, {stop}) is outside blob {key!r} of {ref_size} bytes"
        )


class BlobStore(abc.ABC):
    """Write-once blobs with streamed writes and ranged reads."""

    @abc.abstractmethod
    async def write_stream(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_size: int,
        expected_size: int | None = None,
    ) -> BlobRef:
        """Store the stream under `key`; BlobTooLarge as soon as it passes `max_size`.

        With `expected_size`, a stream of any other length is refused (BlobSizeMismatch).
        Nothing is visible under `key` unless the whole stream was stored.
        """

    @abc.abstractmethod
    def write(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        max_size: int,
        expected_size: int | None = None,
    ) -> BlobRef:
        """The synchronous form of `write_stream`, for workers."""

    @abc.abstractmethod
    def stat(self, key: str) -> BlobRef:
        """The reference of a committed blob (BlobNotFound if there is none)."""

    @abc.abstractmethod
    def read_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of the blob."""

    def read_range_into(self, key: str, start: int, out: memoryview) -> None:
        """Bytes [start, start + len(out)) of the blob, written into `out` (a writable byte
        buffer the caller reuses): aggregation reads every upload's slice this way, without
        a new object per upload. Stores that can read straight into memory override this."""
        filled = 0
        for chunk in self.iter_chunks(key, start, start + out.nbytes):
            out[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        if filled != out.nbytes:
            raise BlobSizeMismatch(
                f"blob {key!r} ended after {filled} of {out.nbytes} bytes from {start}"
            )

    @abc.abstractmethod
    def iter_chunks(self, key: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The blob (or bytes [start, stop) of it) in chunks, for streamed downloads."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove a blob (no error if it does not exist)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise if the store cannot be written (readiness probe)."""
