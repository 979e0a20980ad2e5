"""Wire messages of rounds 0 to 2: advertise keys, share keys, masked input (Bonawitz Fig. 4).

Every message is a frozen dataclass with a canonical, versioned byte form (`to_bytes` /
`from_bytes`, see `wire.py`) and carries `round_id`, the digest of the round's
configuration. Construction and parsing run the same checks, so a message object that
exists is well-formed: ids sorted and distinct, fields of the right size. Whether it is
*allowed* (right round, known sender, signature valid) is checked by the client and server
state machines, which know the round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar, Final

import numpy as np

from privacy.secagg import domains
from privacy.secagg.config import MAX_PARTICIPANTS
from privacy.secagg.errors import InvalidArgument, MalformedMessage
from privacy.secagg.keys import DIGEST_SIZE, NONCE_SIZE, PUBLIC_KEY_SIZE, SIGNATURE_SIZE, TAG_SIZE
from privacy.secagg.ring import RingVector, ring_dtype
from privacy.secagg.shamir import SHARE_SIZE, share_from_bytes, share_to_bytes
from privacy.secagg.wire import Reader, Writer

# Plaintext of one encrypted share: tag | version | sender u32 | receiver u32 | share of b_u |
# share of s_u^SK (Bonawitz Fig. 4, round 1: e_uv = Enc(c_uv, u || v || b_uv || s^SK_uv)).
SHARE_PLAINTEXT_SIZE: Final = 4 + 1 + 4 + 4 + 2 * SHARE_SIZE
SHARE_CIPHERTEXT_SIZE: Final = SHARE_PLAINTEXT_SIZE + TAG_SIZE


def check_sorted_ids(ids: tuple[int, ...], what: str) -> None:
    """Ids in a message are strictly increasing (distinct and canonical) u32 values."""
    if len(ids) > MAX_PARTICIPANTS:
        raise MalformedMessage(f"{what}: more than {MAX_PARTICIPANTS} entries")
    previous = 0
    for pid in ids:
        if not isinstance(pid, int) or isinstance(pid, bool) or not previous < pid < 2**32:
            raise MalformedMessage(f"{what}: ids must be distinct, increasing and in [1, 2^32)")
        previous = pid


def check_size(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise MalformedMessage(f"{what} must be {size} bytes")


def advert_payload(round_id: bytes, sender: int, c_public: bytes, s_public: bytes) -> bytes:
    """What a participant signs in round 0: its two X25519 public keys, bound to the round."""
    return domains.ADVERT_SIGNATURE + round_id + sender.to_bytes(4, "big") + c_public + s_public


@dataclass(frozen=True)
class KeyAdvert:
    """Round 0 (AdvertiseKeys): c_u^PK, s_u^PK and their signature by u's identity key."""

    _TAG = b"SAKA"
    round_id: bytes
    sender: int
    c_public: bytes
    s_public: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_size(self.round_id, DIGEST_SIZE, "key advert round id")
        check_sorted_ids((self.sender,), "key advert sender")
        check_size(self.c_public, PUBLIC_KEY_SIZE, "key advert c public key")
        check_size(self.s_public, PUBLIC_KEY_SIZE, "key advert s public key")
        check_size(self.signature, SIGNATURE_SIZE, "key advert signature")

    def signed_payload(self) -> bytes:
        return advert_payload(self.round_id, self.sender, self.c_public, self.s_public)

    def write(self, writer: Writer) -> Writer:
        writer.fixed(self.round_id).u32(self.sender).fixed(self.c_public).fixed(self.s_public)
        return writer.fixed(self.signature)

    @classmethod
    def read(cls, reader: Reader) -> KeyAdvert:
        return cls(
            reader.fixed(DIGEST_SIZE, "round_id"),
            reader.u32("sender"),
            reader.fixed(PUBLIC_KEY_SIZE, "c_public"),
            reader.fixed(PUBLIC_KEY_SIZE, "s_public"),
            reader.fixed(SIGNATURE_SIZE, "signature"),
        )

    def to_bytes(self) -> bytes:
        return self.write(Writer(self._TAG)).finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyAdvert:
        reader = Reader(data, cls._TAG, "key advert")
        advert = cls.read(reader)
        reader.done()
        return advert


@dataclass(frozen=True)
class KeyBroadcast:
    """End of round 0: the adverts of every participant that made it (U1), sorted by id."""

    _TAG = b"SAKB"
    round_id: bytes
    adverts: tuple[KeyAdvert, ...]

    def __post_init__(self) -> None:
        check_size(self.round_id, DIGEST_SIZE, "key broadcast round id")
        check_sorted_ids(tuple(a.sender for a in self.adverts), "key broadcast")
        if any(a.round_id != self.round_id for a in self.adverts):
            raise MalformedMessage("key broadcast: an advert belongs to another round")

    @property
    def senders(self) -> tuple[int, ...]:
        """U1: who advertised keys."""
        return tuple(a.sender for a in self.adverts)

    @cached_property
    def _by_sender(self) -> dict[int, KeyAdvert]:
        return {a.sender: a for a in self.adverts}

    def advert(self, pid: int) -> KeyAdvert | None:
        """The advert of participant `pid`, or None if it did not advertise."""
        return self._by_sender.get(pid)

    def to_bytes(self) -> bytes:
        writer = Writer(self._TAG).fixed(self.round_id).u32(len(self.adverts))
        for advert in self.adverts:
            advert.write(writer)
        return writer.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyBroadcast:
        reader = Reader(data, cls._TAG, "key broadcast")
        round_id = reader.fixed(DIGEST_SIZE, "round_id")
        count = reader.count("adverts", MAX_PARTICIPANTS)
        adverts = tuple(KeyAdvert.read(reader) for _ in range(count))
        reader.done()
        return cls(round_id, adverts)


@dataclass(frozen=True)
class SharePlaintext:
    """What an encrypted share holds: the sender's shares of b_sender and s_sender^SK."""

    _TAG = b"SASP"
    sender: int
    receiver: int
    self_seed_share: int = field(repr=False)
    mask_key_share: int = field(repr=False)

    def to_bytes(self) -> bytes:
        writer = Writer(self._TAG).u32(self.sender).u32(self.receiver)
        writer.fixed(share_to_bytes(self.self_seed_share))
        return writer.fixed(share_to_bytes(self.mask_key_share)).finish()

    @classmethod
    def from_bytes(cls, data: bytes, *, sender: int) -> SharePlaintext:
        """Parse a decrypted share; `sender` (the authenticated sender) names errors."""
        reader = Reader(data, cls._TAG, "share plaintext")
        named_sender, receiver = reader.u32("sender"), reader.u32("receiver")
        seed = share_from_bytes(reader.fixed(SHARE_SIZE, "self-seed share"), sender=sender)
        key = share_from_bytes(reader.fixed(SHARE_SIZE, "mask-key share"), sender=sender)
        reader.done()
        return cls(named_sender, receiver, seed, key)


@dataclass(frozen=True)
class EncryptedShare:
    """e_uv: u's shares of b_u and s_u^SK for v, under AES-GCM with the channel key c_uv."""

    sender: int
    receiver: int
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_sorted_ids((self.sender,), "encrypted share sender")
        check_sorted_ids((self.receiver,), "encrypted share receiver")
        check_size(self.nonce, NONCE_SIZE, "encrypted share nonce")
        check_size(self.ciphertext, SHARE_CIPHERTEXT_SIZE, "encrypted share ciphertext")

    def write(self, writer: Writer) -> Writer:
        writer.u32(self.sender).u32(self.receiver)
        return writer.fixed(self.nonce).fixed(self.ciphertext)

    @classmethod
    def read(cls, reader: Reader) -> EncryptedShare:
        return cls(
            reader.u32("sender"),
            reader.u32("receiver"),
            reader.fixed(NONCE_SIZE, "nonce"),
            reader.fixed(SHARE_CIPHERTEXT_SIZE, "ciphertext"),
        )


@dataclass(frozen=True)
class ShareKeysMessage:
    """Round 1 (ShareKeys): u's encrypted shares for each holder, sorted by receiver.

    `self_seed_commitment` is SHA-256(label | round | u | b_u). It is not in the paper: it
    lets the server check the b_u it reconstructs, so a wrong share is a typed error
    (`InvalidShare`) instead of a silently wrong sum. b_u is a uniform 256-bit seed, so the
    commitment reveals nothing about it.
    """

    _TAG = b"SASK"
    round_id: bytes
    sender: int
    self_seed_commitment: bytes
    shares: tuple[EncryptedShare, ...]

    def __post_init__(self) -> None:
        check_size(self.round_id, DIGEST_SIZE, "share keys round id")
        check_sorted_ids((self.sender,), "share keys sender")
        check_size(self.self_seed_commitment, DIGEST_SIZE, "share keys commitment")
        check_sorted_ids(tuple(s.receiver for s in self.shares), "share keys receivers")
        if any(s.sender != self.sender for s in self.shares):
            raise MalformedMessage("share keys: a share names another sender")

    def to_bytes(self) -> bytes:
        writer = Writer(self._TAG).fixed(self.round_id).u32(self.sender)
        writer.fixed(self.self_seed_commitment).u32(len(self.shares))
        for share in self.shares:
            share.write(writer)
        return writer.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareKeysMessage:
        reader = Reader(data, cls._TAG, "share keys message")
        round_id = reader.fixed(DIGEST_SIZE, "round_id")
        sender = reader.u32("sender")
        commitment = reader.fixed(DIGEST_SIZE, "self_seed_commitment")
        count = reader.count("shares", MAX_PARTICIPANTS)
        shares = tuple(EncryptedShare.read(reader) for _ in range(count))
        reader.done()
        return cls(round_id, sender, commitment, shares)


@dataclass(frozen=True)
class ShareBundle:
    """End of round 1, for one receiver: who shared keys (U2) and the shares addressed to it."""

    _TAG = b"SASB"
    round_id: bytes
    receiver: int
    share_senders: tuple[int, ...]
    shares: tuple[EncryptedShare, ...]

    def __post_init__(self) -> None:
        check_size(self.round_id, DIGEST_SIZE, "share bundle round id")
        check_sorted_ids((self.receiver,), "share bundle receiver")
        check_sorted_ids(self.share_senders, "share bundle U2")
        check_sorted_ids(tuple(s.sender for s in self.shares), "share bundle senders")
        if any(s.receiver != self.receiver for s in self.shares):
            raise MalformedMessage("share bundle: a share is addressed to someone else")

    def to_bytes(self) -> bytes:
        writer = Writer(self._TAG).fixed(self.round_id).u32(self.receiver)
        writer.u32(len(self.share_senders))
        for pid in self.share_senders:
            writer.u32(pid)
        writer.u32(len(self.shares))
        for share in self.shares:
            share.write(writer)
        return writer.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareBundle:
        reader = Reader(data, cls._TAG, "share bundle")
        round_id = reader.fixed(DIGEST_SIZE, "round_id")
        receiver = reader.u32("receiver")
        senders = tuple(reader.u32("U2 id") for _ in range(reader.count("U2", MAX_PARTICIPANTS)))
        count = reader.count("shares", MAX_PARTICIPANTS)
        shares = tuple(EncryptedShare.read(reader) for _ in range(count))
        reader.done()
        return cls(round_id, receiver, senders, shares)


@dataclass(frozen=True)
class MaskedInputHeader:
    """What precedes the vector of a serialised `MaskedInput`."""

    round_id: bytes
    sender: int
    bits: int
    vector_length: int


@dataclass(frozen=True)
class MaskedInput:
    """Round 2 (MaskedInputCollection): y_u = x_u + PRG(b_u) + Σ_v ±PRG(s_uv) mod 2^k.

    On the wire the vector follows a fixed-size header as little-endian integers, so a
    reader can take any slice of a stored upload without parsing the rest
    (`slice_from_bytes`).
    """

    _TAG = b"SAMI"
    round_id: bytes
    sender: int
    vector: RingVector = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        check_size(self.round_id, DIGEST_SIZE, "masked input round id")
        check_sorted_ids((self.sender,), "masked input sender")
        if not isinstance(self.vector, np.ndarray) or self.vector.ndim != 1:
            raise MalformedMessage("masked input: the vector must be a 1-D numpy array")
        if self.vector.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise MalformedMessage("masked input: the vector must be uint32 or uint64")

    @property
    def bits(self) -> int:
        return self.vector.dtype.itemsize * 8

    def to_bytes(self) -> bytes:
        little = self.vector.astype(self.vector.dtype.newbyteorder("<"), copy=False)
        writer = Writer(self._TAG).fixed(self.round_id).u32(self.sender).u8(self.bits)
        return writer.blob(little.tobytes()).finish()

    @classmethod
    def _header(
        cls, data: bytes | memoryview
    ) -> tuple[bytes, int, np.dtype[np.unsignedinteger], memoryview]:
        reader = Reader(data, cls._TAG, "masked input")
        round_id = reader.fixed(DIGEST_SIZE, "round_id")
        sender = reader.u32("sender")
        bits = reader.u8("bits")
        if bits not in (32, 64):
            raise MalformedMessage(f"masked input: bits must be 32 or 64, got {bits}")
        dtype = ring_dtype(bits)
        raw = reader.blob_view("vector")
        reader.done()
        if len(raw) % dtype.itemsize:
            raise MalformedMessage("masked input: the vector is not a whole number of elements")
        return round_id, sender, dtype, raw

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> MaskedInput:
        """Parse an upload; the vector is a read-only view of `data` (no copy)."""
        round_id, sender, dtype, raw = cls._header(data)
        vector = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        return cls(round_id, sender, vector)

    @classmethod
    def slice_from_bytes(cls, data: bytes | memoryview, start: int, stop: int) -> RingVector:
        """Coordinates [start, stop) of a stored upload's vector (a read-only view)."""
        _, _, dtype, raw = cls._header(data)
        length = len(raw) // dtype.itemsize
        if not 0 <= start < stop <= length:
            raise InvalidArgument(f"masked input: slice [{start}, {stop}) outside [0, {length})")
        view = raw[start * dtype.itemsize : stop * dtype.itemsize]
        return np.frombuffer(view, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)

    # -- the stored format, for readers that never hold a whole upload -------------------------

    #: Bytes before the vector: tag (4), format version (1), round id (32), sender (4),
    #: bits (1), vector length prefix (8).
    HEADER_SIZE: ClassVar[int] = 4 + 1 + DIGEST_SIZE + 4 + 1 + 8

    @classmethod
    def size(cls, vector_length: int, bits: int) -> int:
        """The exact size of a serialised masked input of `vector_length` coordinates."""
        return cls.HEADER_SIZE + vector_length * (ring_dtype(bits).itemsize)

    @classmethod
    def byte_range(cls, start: int, stop: int, bits: int) -> tuple[int, int]:
        """Where coordinates [start, stop) lie in a serialised masked input (for ranged
        reads of a stored upload: each unmasking slice reads only its own range)."""
        item = ring_dtype(bits).itemsize
        return cls.HEADER_SIZE + start * item, cls.HEADER_SIZE + stop * item

    @classmethod
    def parse_header(cls, header: bytes | memoryview) -> MaskedInputHeader:
        """The first `HEADER_SIZE` bytes of a masked input, checked (streamed uploads are
        checked against their round from this, before the vector arrives)."""
        if len(header) != cls.HEADER_SIZE:
            raise MalformedMessage(f"masked input: the header is {cls.HEADER_SIZE} bytes")
        reader = Reader(header, cls._TAG, "masked input")
        round_id = reader.fixed(DIGEST_SIZE, "round_id")
        sender = reader.u32("sender")
        bits = reader.u8("bits")
        vector_bytes = reader.u64("vector length")
        reader.done()
        if bits not in (32, 64):
            raise MalformedMessage(f"masked input: bits must be 32 or 64, got {bits}")
        if vector_bytes % (bits // 8):
            raise MalformedMessage("masked input: the vector is not a whole number of elements")
        return MaskedInputHeader(round_id, sender, bits, vector_bytes // (bits // 8))
