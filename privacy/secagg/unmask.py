"""Round 4 on the server: reconstruct seeds once, then remove masks slice by slice.

Bonawitz et al. 2017, Fig. 4, round 4 (Unmasking), split in two so that it scales:

1. `plan_unmask` (small, once): from the survivors' unmask responses, reconstruct b_u for
   every survivor u (checked against u's commitment) and s_w^SK for every participant w
   that shared keys but dropped before uploading (checked against w's advertised s_w^PK),
   then derive the pairwise seeds s_wv of w with each surviving neighbour v. The result,
   an `UnmaskPlan`, is serialisable: store it, hand it to workers.
2. `unmask_slice` (pure, parallel): for coordinates [start, stop) of the masked sum
   Σ_{u∈U3} y_u, subtract Σ_u PRG(b_u) and cancel the dropped participants' pairwise masks.
   What remains is Σ_{u∈U3} x_u mod 2^k and nothing else. AES-CTR is seekable, so any
   slice is independent of the others.

The plan holds secrets (seeds) that, combined with one stored upload, would unmask more than
the sum's masks: keep it with the same care as the uploads, and delete both after the round.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final

import numpy as np

from privacy.secagg.config import MAX_PARTICIPANTS, MAX_VECTOR_LENGTH, RoundConfig
from privacy.secagg.consistency import ConsistencyProof, UnmaskResponse
from privacy.secagg.errors import (
    InvalidArgument,
    InvalidShare,
    MalformedMessage,
    ProtocolViolation,
    expect,
)
from privacy.secagg.keys import (
    DIGEST_SIZE,
    SEED_SIZE,
    AgreementKey,
    constant_time_equal,
    pairwise_seed,
    self_seed_commitment,
)
from privacy.secagg.messages import KeyBroadcast, ShareKeysMessage, check_size
from privacy.secagg.prg import MaskPurpose, MaskStream, apply_masks, mask_key, pairwise_sign
from privacy.secagg.ring import SUPPORTED_BITS, RingVector, check_ring_vector
from privacy.secagg.shamir import reconstruct_secret
from privacy.secagg.thresholds import require_subset, require_threshold
from privacy.secagg.wire import Reader, Writer

# A plan holds at most one self mask per survivor plus one pairwise seed per edge.
MAX_PLAN_ENTRIES: Final = MAX_PARTICIPANTS * MAX_PARTICIPANTS


@dataclass(frozen=True)
class PlanEntry:
    """One mask to remove: add `sign`·PRG(seed) (purpose SELF or PAIRWISE) to the sum."""

    purpose: MaskPurpose
    sign: int
    seed: bytes = field(repr=False)


@dataclass(frozen=True)
class UnmaskPlan:
    """Everything `unmask_slice` needs: the seeds to expand and the signs to apply."""

    _TAG = b"SAUP"
    round_id: bytes
    federation: str
    round: int
    bits: int
    vector_length: int
    survivors: tuple[int, ...]
    entries: tuple[PlanEntry, ...]

    def __post_init__(self) -> None:
        check_size(self.round_id, DIGEST_SIZE, "unmask plan round id")
        if self.bits not in SUPPORTED_BITS:
            raise MalformedMessage(f"unmask plan: bits must be 32 or 64, got {self.bits}")
        if not 1 <= self.vector_length <= MAX_VECTOR_LENGTH:
            raise MalformedMessage("unmask plan: vector length out of range")
        for entry in self.entries:
            check_size(entry.seed, SEED_SIZE, "unmask plan seed")
            if entry.sign not in (1, -1) or not isinstance(entry.purpose, MaskPurpose):
                raise MalformedMessage("unmask plan: an entry has a bad sign or purpose")

    @classmethod
    def plain(cls, config: RoundConfig, survivors: tuple[int, ...]) -> UnmaskPlan:
        """The plan of a round aggregated without masks (benchmarks and tests): nothing to
        remove, only the survivors whose uploads are summed."""
        context = config.context
        return cls(
            config.digest,
            context.federation,
            context.round,
            config.bits,
            config.vector_length,
            tuple(survivors),
            (),
        )

    @cached_property
    def streams(self) -> tuple[MaskStream, ...]:
        """The AES keys of the entries (derived once per plan object, not serialised)."""
        return tuple(
            MaskStream(mask_key(e.seed, self.federation, self.round, e.purpose), e.sign)
            for e in self.entries
        )

    def __repr__(self) -> str:
        return (
            f"UnmaskPlan(round={self.round}, bits={self.bits}, d={self.vector_length}, "
            f"survivors={len(self.survivors)}, entries={len(self.entries)})"
        )

    def to_bytes(self) -> bytes:
        writer = Writer(self._TAG).fixed(self.round_id).text(self.federation).u64(self.round)
        writer.u8(self.bits).u64(self.vector_length).u32(len(self.survivors))
        for pid in self.survivors:
            writer.u32(pid)
        writer.u64(len(self.entries))
        for entry in self.entries:
            writer.u8(entry.purpose).u8(0 if entry.sign > 0 else 1).fixed(entry.seed)
        return writer.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskPlan:
        reader = Reader(data, cls._TAG, "unmask plan")
        round_id = reader.fixed(DIGEST_SIZE, "round_id")
        federation, round_number = reader.text("federation"), reader.u64("round")
        bits, length = reader.u8("bits"), reader.u64("vector_length")
        survivors = tuple(
            reader.u32("survivor") for _ in range(reader.count("survivors", MAX_PARTICIPANTS))
        )
        count = reader.u64("entries")
        if count > MAX_PLAN_ENTRIES:
            raise MalformedMessage("unmask plan: too many entries")
        entries = []
        for _ in range(count):
            purpose, sign = reader.u8("purpose"), reader.u8("sign")
            if purpose not in (MaskPurpose.SELF, MaskPurpose.PAIRWISE) or sign > 1:
                raise MalformedMessage("unmask plan: an entry has a bad sign or purpose")
            entries.append(
                PlanEntry(MaskPurpose(purpose), -1 if sign else 1, reader.fixed(SEED_SIZE, "seed"))
            )
        reader.done()
        return cls(round_id, federation, round_number, bits, length, survivors, tuple(entries))


def check_unmask_response(
    config: RoundConfig,
    share_senders: Collection[int],
    proof: ConsistencyProof,
    response: UnmaskResponse,
) -> None:
    """From a signer of the survivor set (U4), with exactly the shares the protocol asks:
    b_w for every survivor w it holds shares of, s_w^SK for every dropped w in U2."""
    expect(config, RoundConfig, "the round config")
    expect(proof, ConsistencyProof, "the consistency proof")
    expect(response, UnmaskResponse, "the unmask response")
    if response.round_id != config.digest:
        raise ProtocolViolation(
            f"the unmask response of participant {response.sender} belongs to another round",
            participant=response.sender,
        )
    require_subset([response.sender], proof.signers, "unmask response")
    alive = set(proof.survivors)
    held = [w for w in share_senders if config.is_holder(response.sender, w)]
    want_seeds = sorted(w for w in held if w in alive)
    want_keys = sorted(w for w in held if w not in alive)
    got_seeds = [s.owner for s in response.self_seed_shares]
    got_keys = [s.owner for s in response.mask_key_shares]
    if got_seeds != want_seeds or got_keys != want_keys:
        raise ProtocolViolation(
            f"participant {response.sender} revealed other shares than the protocol asks",
            participant=response.sender,
        )


def plan_unmask(
    config: RoundConfig,
    broadcast: KeyBroadcast,
    share_messages: Sequence[ShareKeysMessage],
    proof: ConsistencyProof,
    responses: Iterable[UnmaskResponse],
) -> UnmaskPlan:
    """Reconstruct the seeds to remove (Bonawitz Fig. 4, round 4, server side).

    `share_messages` are the round-1 messages accepted (their senders are U2; they carry
    the self-seed commitments); `proof` is the closed consistency check (U3, U4);
    `responses` the unmask responses received (U5). Raises ThresholdNotMet when fewer than
    t responded or a secret has too few shares, InvalidShare when a reconstructed secret
    does not match its commitment or public key, ProtocolViolation for a response that
    does not follow the protocol.
    """
    expect(config, RoundConfig, "the round config")
    expect(broadcast, KeyBroadcast, "the key broadcast")
    expect(proof, ConsistencyProof, "the consistency proof")
    for message in share_messages:
        expect(message, ShareKeysMessage, "a share keys message")
    if proof.round_id != config.digest or broadcast.round_id != config.digest:
        raise InvalidArgument("the key broadcast or consistency proof belongs to another round")
    config = config.bind_graph(broadcast)
    commitments = {m.sender: m.self_seed_commitment for m in share_messages}
    share_senders = frozenset(commitments)
    require_subset(share_senders, broadcast.senders, "share keys senders")
    require_subset(proof.survivors, share_senders, "survivor set")
    seed_shares: dict[int, dict[int, int]] = defaultdict(dict)
    key_shares: dict[int, dict[int, int]] = defaultdict(dict)
    responders: set[int] = set()
    for response in responses:
        if response.sender in responders:
            raise ProtocolViolation(
                f"participant {response.sender} sent two unmask responses",
                participant=response.sender,
            )
        check_unmask_response(config, share_senders, proof, response)
        responders.add(response.sender)
        for share in response.self_seed_shares:
            seed_shares[share.owner][response.sender] = share.value
        for share in response.mask_key_shares:
            key_shares[share.owner][response.sender] = share.value
    require_threshold(config, responders, "sent unmask shares")
    threshold = config.share_threshold
    entries = []
    for owner in proof.survivors:
        seed = reconstruct_secret(seed_shares[owner], threshold, owner=owner)
        expected = self_seed_commitment(config.digest, owner, seed)
        if not constant_time_equal(expected, commitments[owner]):
            raise InvalidShare(
                f"the shares of participant {owner}'s self-mask seed do not match its commitment",
                participant=owner,
            )
        entries.append(PlanEntry(MaskPurpose.SELF, -1, seed))
    alive = frozenset(proof.survivors)
    for dropped in sorted(share_senders - alive):
        partners = sorted(config.neighbours(dropped) & alive)
        if not partners:
            continue
        secret = reconstruct_secret(key_shares[dropped], threshold, owner=dropped)
        key = AgreementKey.from_private_bytes(secret)
        advert = broadcast.advert(dropped)
        assert advert is not None
        if not constant_time_equal(key.public_bytes, advert.s_public):
            raise InvalidShare(
                f"the shares of participant {dropped}'s mask key do not match its public key",
                participant=dropped,
            )
        for partner in partners:
            partner_advert = broadcast.advert(partner)
            assert partner_advert is not None
            shared = key.agree(partner_advert.s_public, peer=partner)
            seed = pairwise_seed(shared, config.digest, dropped, partner)
            # The partner added Δ·PRG(s) with Δ = pairwise_sign(partner, dropped); undo it.
            entries.append(PlanEntry(MaskPurpose.PAIRWISE, -pairwise_sign(partner, dropped), seed))
    context = config.context
    return UnmaskPlan(
        config.digest,
        context.federation,
        context.round,
        config.bits,
        config.vector_length,
        proof.survivors,
        tuple(entries),
    )


def unmask_slice(
    plan: UnmaskPlan, masked_sum_slice: RingVector, start: int, stop: int, *, in_place: bool = False
) -> RingVector:
    """Coordinates [start, stop) of Σ_{u∈U3} x_u, from the same slice of Σ_{u∈U3} y_u.

    `masked_sum_slice` is a uint32/uint64 array (per the plan's bits) of length stop-start.
    Returns a new array unless `in_place`, in which case the slice itself is unmasked.
    """
    expect(plan, UnmaskPlan, "the unmask plan")
    try:
        start, stop = operator.index(start), operator.index(stop)
    except TypeError as exc:
        raise InvalidArgument("start and stop must be integers") from exc
    if not 0 <= start < stop <= plan.vector_length:
        raise InvalidArgument(f"slice [{start}, {stop}) is not within [0, {plan.vector_length})")
    check_ring_vector(
        masked_sum_slice, plan.bits, stop - start, "the masked sum slice", writeable=in_place
    )
    target = masked_sum_slice if in_place else np.array(masked_sum_slice, copy=True)
    apply_masks(target, start, plan.streams)
    return target
