"""Wire messages of rounds 3 and 4: the survivor set, its signatures, the unmask shares.

Round 3 (ConsistencyCheck, Bonawitz et al. 2017 Fig. 4) protects against a server that
tells different participants different survivor sets: every survivor signs the set U3 it
was told, and goes on to round 4 only after seeing at least t valid signatures on that same
set. Round 4 (Unmasking): each survivor reveals, for every participant whose shares it
holds, the share of b_w if w survived and the share of s_w^SK if w dropped; never both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from privacy.secagg import domains
from privacy.secagg.config import MAX_PARTICIPANTS
from privacy.secagg.errors import MalformedMessage
from privacy.secagg.keys import DIGEST_SIZE, SIGNATURE_SIZE
from privacy.secagg.messages import check_size, check_sorted_ids
from privacy.secagg.shamir import SHARE_SIZE, share_from_bytes, share_to_bytes
from privacy.secagg.wire import Reader, Writer


def survivors_payload(round_id: bytes, survivors: tuple[int, ...]) -> bytes:
    """What a survivor signs in round 3: the round and the exact survivor set U3."""
    ids = b"".join(pid.to_bytes(4, "big") for pid in survivors)
    return domains.SURVIVOR_SIGNATURE + round_id + len(survivors).to_bytes(4, "big") + ids


def _write_ids(writer: Writer, ids: tuple[int, ...]) -> None:
    writer.u32(len(ids))
    for pid in ids:
        writer.u32(pid)


def _read_ids(reader: Reader, what: str) -> tuple[int, ...]:
    return tuple(reader.u32(what) for _ in range(reader.count(what, MAX_PARTICIPANTS)))


@dataclass(frozen=True)
class SurvivorSet:
    """End of round 2: U3, the participants whose masked input the server received."""

    _TAG = b"SASS"
    round_id: bytes
    survivors: tuple[int, ...]

    def __post_init__(self) -> None:
        check_size(self.round_id, DIGEST_SIZE, "survivor set round id")
        check_sorted_ids(self.survivors, "survivor set")

    def signed_payload(self) -> bytes:
        return survivors_payload(self.round_id, self.survivors)

    def to_bytes(self) -> bytes:
        writer = Writer(self._TAG).fixed(self.round_id)
        _write_ids(writer, self.survivors)
        return writer.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> SurvivorSet:
        reader = Reader(data, cls._TAG, "survivor set")
        result = cls(reader.fixed(DIGEST_SIZE, "round_id"), _read_ids(reader, "survivors"))
        reader.done()
        return result


@dataclass(frozen=True)
class ConsistencySignature:
    """Round 3: survivor `sender`'s identity-key signature of the survivor set."""

    _TAG = b"SACS"
    round_id: bytes
    sender: int
    signature: bytes

    def __post_init__(self) -> None:
        check_size(self.round_id, DIGEST_SIZE, "consistency signature round id")
        check_sorted_ids((self.sender,), "consistency signature sender")
        check_size(self.signature, SIGNATURE_SIZE, "consistency signature")

    def to_bytes(self) -> bytes:
        writer = Writer(self._TAG).fixed(self.round_id).u32(self.sender)
        return writer.fixed(self.signature).finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsistencySignature:
        reader = Reader(data, cls._TAG, "consistency signature")
        result = cls(
            reader.fixed(DIGEST_SIZE, "round_id"),
            reader.u32("sender"),
            reader.fixed(SIGNATURE_SIZE, "signature"),
        )
        reader.done()
        return result


@dataclass(frozen=True)
class ConsistencyProof:
    """End of round 3: the survivor set and the signatures on it (U4 = the signers)."""

    _TAG = b"SACP"
    round_id: bytes
    survivors: tuple[int, ...]
    signatures: tuple[ConsistencySignature, ...]

    def __post_init__(self) -> None:
        check_size(self.round_id, DIGEST_SIZE, "consistency proof round id")
        check_sorted_ids(self.survivors, "consistency proof survivors")
        check_sorted_ids(tuple(s.sender for s in self.signatures), "consistency proof signers")
        if any(s.round_id != self.round_id for s in self.signatures):
            raise MalformedMessage("consistency proof: a signature belongs to another round")

    @property
    def signers(self) -> tuple[int, ...]:
        return tuple(s.sender for s in self.signatures)

    def survivor_set(self) -> SurvivorSet:
        return SurvivorSet(self.round_id, self.survivors)

    def to_bytes(self) -> bytes:
        writer = Writer(self._TAG).fixed(self.round_id)
        _write_ids(writer, self.survivors)
        writer.u32(len(self.signatures))
        for signature in self.signatures:
            writer.u32(signature.sender).fixed(signature.signature)
        return writer.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsistencyProof:
        reader = Reader(data, cls._TAG, "consistency proof")
        round_id = reader.fixed(DIGEST_SIZE, "round_id")
        survivors = _read_ids(reader, "survivors")
        signatures = tuple(
            ConsistencySignature(
                round_id, reader.u32("signer"), reader.fixed(SIGNATURE_SIZE, "signature")
            )
            for _ in range(reader.count("signatures", MAX_PARTICIPANTS))
        )
        reader.done()
        return cls(round_id, survivors, signatures)


@dataclass(frozen=True)
class RevealedShare:
    """One share a survivor reveals in round 4: its share of `owner`'s b or s^SK."""

    owner: int
    value: int = field(repr=False)


def _write_shares(writer: Writer, shares: tuple[RevealedShare, ...]) -> None:
    writer.u32(len(shares))
    for share in shares:
        writer.u32(share.owner).fixed(share_to_bytes(share.value))


def _read_shares(reader: Reader, what: str, sender: int) -> tuple[RevealedShare, ...]:
    return tuple(
        RevealedShare(
            reader.u32("owner"), share_from_bytes(reader.fixed(SHARE_SIZE, what), sender=sender)
        )
        for _ in range(reader.count(what, MAX_PARTICIPANTS))
    )


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 4 (Unmasking): shares of b_w for surviving w, of s_w^SK for dropped w.

    Both lists are sorted by owner; no owner appears in both (a client refuses to reveal
    both kinds for one participant, Bonawitz §4).
    """

    _TAG = b"SAUR"
    round_id: bytes
    sender: int
    self_seed_shares: tuple[RevealedShare, ...]
    mask_key_shares: tuple[RevealedShare, ...]

    def __post_init__(self) -> None:
        check_size(self.round_id, DIGEST_SIZE, "unmask response round id")
        check_sorted_ids((self.sender,), "unmask response sender")
        seeds = tuple(s.owner for s in self.self_seed_shares)
        keys = tuple(s.owner for s in self.mask_key_shares)
        check_sorted_ids(seeds, "unmask response self-seed shares")
        check_sorted_ids(keys, "unmask response mask-key shares")
        if set(seeds) & set(keys):
            raise MalformedMessage("unmask response: both kinds of share for one participant")

    def to_bytes(self) -> bytes:
        writer = Writer(self._TAG).fixed(self.round_id).u32(self.sender)
        _write_shares(writer, self.self_seed_shares)
        _write_shares(writer, self.mask_key_shares)
        return writer.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskResponse:
        reader = Reader(data, cls._TAG, "unmask response")
        round_id = reader.fixed(DIGEST_SIZE, "round_id")
        sender = reader.u32("sender")
        seeds = _read_shares(reader, "self-seed shares", sender)
        keys = _read_shares(reader, "mask-key shares", sender)
        reader.done()
        return cls(round_id, sender, seeds, keys)
