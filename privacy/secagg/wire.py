"""Canonical binary form shared by every message, configuration and state blob.

Each object starts with a 4-byte tag naming its kind and a 1-byte format version; fields
follow in a fixed order as big-endian integers and length-prefixed byte strings. The
encoding is canonical (one value, one byte string), which is what signatures and digests
need, and parsing is strict: a wrong tag or version, a truncated field, an out-of-range
length or trailing bytes all raise `MalformedMessage` naming the object and field.
"""

from __future__ import annotations

import struct
from typing import Final

from privacy.secagg.errors import MalformedMessage

FORMAT_VERSION: Final = 1
TAG_SIZE: Final = 4
# Upper bound of any length-prefixed byte string (a 2^31-coordinate uint64 vector).
MAX_BLOB_BYTES: Final = 1 << 34

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Writer:
    """Appends fields in canonical form; `finish()` returns the bytes."""

    def __init__(self, tag: bytes) -> None:
        if len(tag) != TAG_SIZE:
            raise ValueError(f"a tag has {TAG_SIZE} bytes")
        self._parts: list[bytes] = [tag, _U8.pack(FORMAT_VERSION)]

    def u8(self, value: int) -> Writer:
        self._parts.append(_U8.pack(value))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(_U16.pack(value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(_U32.pack(value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(_U64.pack(value))
        return self

    def fixed(self, value: bytes) -> Writer:
        """A field whose length both sides know (keys, digests, signatures)."""
        self._parts.append(bytes(value))
        return self

    def blob(self, value: bytes) -> Writer:
        """A byte string of any length, prefixed by its length (u64)."""
        self._parts.append(_U64.pack(len(value)))
        self._parts.append(bytes(value))
        return self

    def text(self, value: str) -> Writer:
        """A UTF-8 string of at most 65535 bytes, prefixed by its length (u16)."""
        raw = value.encode("utf-8")
        self._parts.append(_U16.pack(len(raw)))
        self._parts.append(raw)
        return self

    def finish(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads fields written by `Writer`, raising `MalformedMessage` on any deviation."""

    def __init__(self, data: bytes | bytearray | memoryview, tag: bytes, what: str) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise MalformedMessage(f"{what}: expected bytes, got {type(data).__name__}")
        self._data = memoryview(data).cast("B")
        self._pos = 0
        self._what = what
        found = bytes(self._take(TAG_SIZE, "tag"))
        if found != tag:
            raise MalformedMessage(f"{what}: not a {what} (tag {found!r}, expected {tag!r})")
        version = self.u8("version")
        if version != FORMAT_VERSION:
            raise MalformedMessage(
                f"{what}: format version {version} is not supported (expected {FORMAT_VERSION})"
            )

    @property
    def what(self) -> str:
        return self._what

    @property
    def position(self) -> int:
        return self._pos

    def _take(self, size: int, field: str) -> memoryview:
        end = self._pos + size
        if size < 0 or end > len(self._data):
            raise MalformedMessage(f"{self._what}: truncated at field '{field}'")
        view = self._data[self._pos : end]
        self._pos = end
        return view

    def u8(self, field: str) -> int:
        value: int = _U8.unpack(self._take(1, field))[0]
        return value

    def u16(self, field: str) -> int:
        value: int = _U16.unpack(self._take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = _U32.unpack(self._take(4, field))[0]
        return value

    def u64(self, field: str) -> int:
        value: int = _U64.unpack(self._take(8, field))[0]
        return value

    def fixed(self, size: int, field: str) -> bytes:
        return bytes(self._take(size, field))

    def blob(self, field: str, max_size: int = MAX_BLOB_BYTES) -> bytes:
        return bytes(self.blob_view(field, max_size))

    def blob_view(self, field: str, max_size: int = MAX_BLOB_BYTES) -> memoryview:
        """Like `blob`, without copying (for large vectors)."""
        size = self.u64(field)
        if size > max_size:
            raise MalformedMessage(f"{self._what}: field '{field}' is too long ({size} bytes)")
        return self._take(size, field)

    def text(self, field: str) -> str:
        size = self.u16(field)
        try:
            return bytes(self._take(size, field)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"{self._what}: field '{field}' is not UTF-8") from exc

    def count(self, field: str, limit: int) -> int:
        """A u32 element count, refused above `limit` before anything is allocated."""
        value = self.u32(field)
        if value > limit:
            raise MalformedMessage(f"{self._what}: {field} count {value} exceeds {limit}")
        return value

    def done(self) -> None:
        """Assert every byte was consumed: trailing bytes make a message non-canonical."""
        if self._pos != len(self._data):
            extra = len(self._data) - self._pos
            raise MalformedMessage(f"{self._what}: {extra} unexpected trailing bytes")
