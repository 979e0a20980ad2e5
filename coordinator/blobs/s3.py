"""The blob store on an S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph RGW ...).

For deployments whose API pods and workers share no volume (`FMTL_BLOB_URL=s3://bucket/prefix`).
The same contract as the local folder (coordinator/blobs/store.py):

- **write once**: a write is spooled (in memory up to `SPOOL_MEMORY_BYTES`, then a private
  temporary file) while it is counted against its limits and hashed, and only a complete,
  in-limit stream is sent, as one `PutObject` with `If-None-Match: *`, so an object appears
  whole or not at all and is never replaced. Its SHA-256 travels as object metadata
  (`x-amz-meta-sha256`); a second write of the same content returns the same reference, of
  other content `BlobConflict`;
- **ranged reads**: `GetObject` with a `Range` header, for the unmasking workers' slices, and
  streamed in chunks for downloads.

Client: boto3, the AWS SDK (the most used S3 client, kept by AWS, speaking every
S3-compatible store). Its newer default of sending CRC checksums on every request is set to
"when required", which every S3-compatible server understands.
"""

from __future__ import annotations

import hashlib
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Final
from urllib.parse import urlsplit

from anyio import to_thread
from botocore.exceptions import ClientError

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
from coordinator.errors import ConfigurationError

#: A write is kept in memory up to this size, then spooled to a private temporary file.
SPOOL_MEMORY_BYTES: Final = 8 << 20
#: One PutObject carries at most 5 GiB (S3's limit); blobs here are far smaller.
MAX_OBJECT_BYTES: Final = 5 << 30
#: Object metadata key holding the blob's SHA-256 (hex), sent as `x-amz-meta-sha256`.
SHA256_METADATA: Final = "sha256"
#: Connections per store: one per concurrent reader or writer thread of a process.
MAX_POOL_CONNECTIONS: Final = 32
_NOT_FOUND: Final = frozenset({"404", "NoSuchKey", "NotFound"})
_PRECONDITION: Final = frozenset({"412", "PreconditionFailed", "ConditionalRequestConflict"})


@dataclass(frozen=True)
class S3Location:
    """Where the blobs live: `s3://bucket[/prefix]` and how to reach the store."""

    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    @classmethod
    def parse(cls, url: str, **access: str | None) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigurationError(f"a blob URL must look like s3://bucket/prefix, got {url!r}")
        prefix = parts.path.strip("/")
        if prefix:
            check_key(prefix)
        return cls(parts.netloc, prefix, **access)

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key


class _Spool:
    """A write in progress: counted, hashed and limited chunk by chunk, then sent whole."""

    def __init__(self, key: str, max_size: int, expected: int | None) -> None:
        limit = min(max_size, MAX_OBJECT_BYTES)
        if expected is not None and expected > limit:
            raise BlobTooLarge(f"blob {key!r} would be {expected} bytes; the limit is {limit}")
        self.key = key
        self.max_size = limit
        self.expected = expected
        self.size = 0
        self.hasher = hashlib.sha256()
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115

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
        self.file.write(chunk)

    def finish(self) -> BlobRef:
        if self.expected is not None and self.size != self.expected:
            raise BlobSizeMismatch(
                f"blob {self.key!r} ended after {self.size} of the announced {self.expected} bytes"
            )
        self.file.seek(0)
        return BlobRef(key=self.key, size=self.size, sha256=self.hasher.hexdigest())

    def close(self) -> None:
        self.file.close()


class S3BlobStore(BlobStore):
    """Write-once blobs in one bucket (under an optional key prefix)."""

    def __init__(self, location: S3Location, *, client: Any | None = None) -> None:
        self.location = location
        self._client = client if client is not None else _make_client(location)

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.location.bucket}/{self.location.prefix})"

    # -- writes --------------------------------------------------------------------------------

    async def write_stream(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_size: int,
        expected_size: int | None = None,
    ) -> BlobRef:
        check_key(key)
        spool = _Spool(key, max_size, expected_size)
        try:
            async for chunk in chunks:
                if chunk:
                    if spool.size + len(chunk) > SPOOL_MEMORY_BYTES:
                        await to_thread.run_sync(spool.add, chunk)  # may touch the disk
                    else:
                        spool.add(chunk)
            ref = spool.finish()
            return await to_thread.run_sync(self._put, spool, ref)
        finally:
            spool.close()

    def write(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        max_size: int,
        expected_size: int | None = None,
    ) -> BlobRef:
        check_key(key)
        spool = _Spool(key, max_size, expected_size)
        try:
            for chunk in chunks:
                if chunk:
                    spool.add(chunk)
            return self._put(spool, spool.finish())
        finally:
            spool.close()

    def _put(self, spool: _Spool, ref: BlobRef) -> BlobRef:
        try:
            existing: BlobRef | None = self.stat(ref.key)
        except BlobNotFound:
            existing = None
        if existing is None:
            try:
                self._client.put_object(
                    Bucket=self.location.bucket,
                    Key=self.location.object_key(ref.key),
                    Body=spool.file,
                    ContentLength=ref.size,
                    ContentType="application/octet-stream",
                    Metadata={SHA256_METADATA: ref.sha256},
                    IfNoneMatch="*",  # never replace: a concurrent first writer wins
                )
                return ref
            except ClientError as exc:
                if _code(exc) not in _PRECONDITION:
                    raise
            existing = self.stat(ref.key)
        if existing != ref:
            raise BlobConflict(f"blob {ref.key!r} already exists with different content")
        return existing

    # -- reads ---------------------------------------------------------------------------------

    def stat(self, key: str) -> BlobRef:
        check_key(key)
        try:
            head = self._client.head_object(
                Bucket=self.location.bucket, Key=self.location.object_key(key)
            )
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise BlobNotFound(f"no blob {key!r}") from None
            raise
        size = int(head["ContentLength"])
        digest = head.get("Metadata", {}).get(SHA256_METADATA)
        if digest is None:  # not written by us: hash it once
            hasher = hashlib.sha256()
            for chunk in self.iter_chunks(key):
                hasher.update(chunk)
            digest = hasher.hexdigest()
        return BlobRef(key=key, size=size, sha256=str(digest))

    def _get(self, key: str, start: int, stop: int) -> Any:
        """The streaming body of bytes [start, stop) (stop > start), range-checked."""
        try:
            answer = self._client.get_object(
                Bucket=self.location.bucket,
                Key=self.location.object_key(key),
                Range=f"bytes={start}-{stop - 1}",
            )
        except ClientError as exc:
            code = _code(exc)
            if code in _NOT_FOUND:
                raise BlobNotFound(f"no blob {key!r}") from None
            if code in ("416", "InvalidRange"):
                check_range(self.stat(key).size, start, stop, key)
            raise
        total = int(str(answer.get("ContentRange", "/-1")).rsplit("/", 1)[-1])
        if int(answer["ContentLength"]) != stop - start:
            answer["Body"].close()
            check_range(total, start, stop, key)
        return answer["Body"]

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        check_key(key)
        if not 0 <= start <= stop:
            raise InvalidInput(f"byte range [{start}, {stop}) of blob {key!r} is empty or reversed")
        if start == stop:
            check_range(self.stat(key).size, start, stop, key)
            return b""
        body = self._get(key, start, stop)
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return data

    def iter_chunks(self, key: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        check_key(key)
        if stop is None:
            stop = self.stat(key).size
        if not 0 <= start <= stop:
            raise InvalidInput(f"byte range [{start}, {stop}) of blob {key!r} is empty or reversed")
        if start == stop:
            check_range(self.stat(key).size, start, stop, key)
            return iter(())
        return _body_chunks(self._get(key, start, stop))

    # -- housekeeping --------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        check_key(key)
        self._client.delete_object(Bucket=self.location.bucket, Key=self.location.object_key(key))

    def check(self) -> None:
        probe = self.location.object_key(f"readiness/{secrets.token_hex(8)}")
        self._client.put_object(Bucket=self.location.bucket, Key=probe, Body=b"")
        self._client.delete_object(Bucket=self.location.bucket, Key=probe)


def _body_chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(READ_CHUNK_BYTES)
    finally:
        body.close()


def _code(exc: Exception) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code", ""))


def _make_client(location: S3Location) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        max_pool_connections=MAX_POOL_CONNECTIONS,
        retries={"max_attempts": 5, "mode": "standard"},
        # S3-compatible stores need path-style URLs (no bucket-name DNS) and may not know
        # the CRC checksums newer SDKs add to every request by default.
        s3={"addressing_style": "path" if location.endpoint_url else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session(
        aws_access_key_id=location.access_key_id,
        aws_secret_access_key=location.secret_access_key,
        region_name=location.region or "us-east-1",
    )
    return session.client("s3", endpoint_url=location.endpoint_url, config=config)
