"""What every party of one round agrees on before it starts: `RoundConfig`.

The coordinator builds it when it opens a round (context, participants with their enrolled
identity keys, threshold, vector length, bits, optional neighbour graph) and hands the same
bytes to every agent. Its SHA-256 digest is the round's id: every signature, every AEAD
associated data and every message carries it, so nothing from one round (or from a round
configured differently) is accepted in another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Final

from privacy.secagg import domains, graph
from privacy.secagg.errors import (
    InvalidArgument,
    MalformedMessage,
    ProtocolViolation,
    ThresholdNotMet,
)
from privacy.secagg.keys import PUBLIC_KEY_SIZE, IdentityPublicKey
from privacy.secagg.ring import SUPPORTED_BITS
from privacy.secagg.wire import Reader, Writer

if TYPE_CHECKING:
    from privacy.secagg.messages import KeyBroadcast

MAX_PARTICIPANTS: Final = 100_000
MAX_PARTICIPANT_ID: Final = 2**32 - 1  # ids travel as u32; they are Shamir x-coordinates
MAX_NAME_CHARS: Final = 256
MAX_VECTOR_LENGTH: Final = 2**31 - 1
MAX_ROUND: Final = 2**63 - 1

_TAG: Final = b"SACF"
# Graph flag in the config bytes: 0 none, 2 a graph whose seed is derived from the key adverts.
# 1 was a graph with a seed chosen by the coordinator, which is refused now (docs/secagg.md).
_NO_GRAPH: Final = 0
_LEGACY_CHOSEN_SEED: Final = 1
_DERIVED_SEED: Final = 2


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_CHARS:
        raise InvalidArgument(f"{what} must be a string of 1 to {MAX_NAME_CHARS} characters")


@dataclass(frozen=True)
class RoundContext:
    """The round a value belongs to: federation id (or fingerprint) and round number."""

    federation: str
    round: int

    def __post_init__(self) -> None:
        _check_name(self.federation, "the federation id")
        if not _is_int(self.round) or not 0 <= self.round <= MAX_ROUND:
            raise InvalidArgument(
                f"the round number must be an int in [0, 2^63), got {self.round!r}"
            )


@dataclass(frozen=True)
class RoundMember:
    """One participant of a round: id (1..2^32-1, its Shamir x-coordinate), name, identity key."""

    id: int
    name: str
    identity: IdentityPublicKey

    def __post_init__(self) -> None:
        if not _is_int(self.id) or not 1 <= self.id <= MAX_PARTICIPANT_ID:
            raise InvalidArgument(f"participant ids must be ints in [1, 2^32), got {self.id!r}")
        _check_name(self.name, f"participant {self.id}'s name")
        if not isinstance(self.identity, IdentityPublicKey):
            raise InvalidArgument(f"participant {self.id}'s identity must be an IdentityPublicKey")


@dataclass(frozen=True)
class NeighbourGraph:
    """SecAgg+ option (Bell et al. 2020): pair with `degree` neighbours, not everyone.

    Each participant's secrets are shared among itself and its neighbours (degree + 1
    holders), any `threshold` of which reconstruct them; threshold > (degree + 1) / 2.

    The graph's `seed` is not the coordinator's to choose: it is a hash over every
    participant's signed key advert of the round (`graph.derive_seed`), so it is known only
    after round 0 and every party computes it itself. A config carries degree and threshold
    (that is what its bytes and digest cover); `RoundConfig.bind_graph(broadcast)` fills in the
    seed, and only a bound config knows who neighbours whom.
    """

    degree: int
    threshold: int
    seed: bytes | None = field(default=None, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if self.seed is not None and (
            not isinstance(self.seed, bytes) or len(self.seed) != graph.GRAPH_SEED_SIZE
        ):
            raise InvalidArgument(f"the graph seed must be {graph.GRAPH_SEED_SIZE} bytes")
        if not _is_int(self.degree) or not _is_int(self.threshold):
            raise InvalidArgument("the graph degree and threshold must be ints")
        holders = self.degree + 1
        if not holders < 2 * self.threshold <= 2 * holders:
            raise InvalidArgument(
                f"the neighbourhood threshold {self.threshold} must be > (degree + 1) / 2 "
                f"= {holders / 2} and <= degree + 1 = {holders}"
            )


@dataclass(frozen=True)
class RoundConfig:
    """Round context, participants, threshold t, vector length d, bits k, neighbour graph.

    Validation: at least 2 participants with distinct ids, n/2 < t <= n (Bonawitz et al.
    2017 §4: with t > n/2 two disjoint groups can never both reach t), 1 <= d < 2^31,
    k in {32, 64}; the graph's degree is even and below n-1. Participants are kept sorted
    by id, so equal configurations have equal bytes and digests.
    """

    context: RoundContext
    participants: tuple[RoundMember, ...]
    threshold: int
    vector_length: int
    bits: int = 32
    graph: NeighbourGraph | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.context, RoundContext):
            raise InvalidArgument("the round context must be a RoundContext")
        members = tuple(sorted(self.participants, key=lambda p: p.id))
        object.__setattr__(self, "participants", members)
        n = len(members)
        if not 2 <= n <= MAX_PARTICIPANTS:
            raise InvalidArgument(f"a round needs 2 to {MAX_PARTICIPANTS} participants, got {n}")
        if len({p.id for p in members}) != n:
            raise InvalidArgument("participant ids must be distinct")
        if not _is_int(self.threshold) or not n < 2 * self.threshold <= 2 * n:
            raise InvalidArgument(
                f"the threshold must satisfy n/2 < t <= n = {n}, got {self.threshold!r}"
            )
        if not _is_int(self.vector_length) or not 1 <= self.vector_length <= MAX_VECTOR_LENGTH:
            raise InvalidArgument(
                f"the vector length must be in [1, 2^31), got {self.vector_length!r}"
            )
        if self.bits not in SUPPORTED_BITS:
            raise InvalidArgument(f"bits must be one of {SUPPORTED_BITS}, got {self.bits!r}")
        if self.graph is not None:
            graph.check_degree(self.graph.degree, n)

    @property
    def n(self) -> int:
        return len(self.participants)

    @cached_property
    def ids(self) -> tuple[int, ...]:
        return tuple(p.id for p in self.participants)

    @cached_property
    def _by_id(self) -> dict[int, RoundMember]:
        return {p.id: p for p in self.participants}

    def participant(self, pid: int) -> RoundMember:
        """The participant with this id; an unknown id is a protocol violation."""
        if not _is_int(pid):
            raise InvalidArgument(f"a participant id must be an int, got {type(pid).__name__}")
        found = self._by_id.get(pid)
        if found is None:
            raise ProtocolViolation(f"participant {pid} is not in this round", participant=pid)
        return found

    @cached_property
    def everyone(self) -> frozenset[int]:
        return frozenset(self.ids)

    def bind_graph(self, broadcast: KeyBroadcast) -> RoundConfig:
        """This config with its graph seed derived from the round's key broadcast.

        The seed hashes the signed part of every participant's advert, so the broadcast
        must carry an advert of *every* participant of the config: with a subset the
        coordinator could try subsets until the graph suits it (ThresholdNotMet: a graph
        round needs every advert). The adverts' signatures are the caller's to check (the
        client and `close_advertise` do). A config bound to another seed is a
        ProtocolViolation. Without a graph, the config itself.
        """
        if self.graph is None:
            return self
        if broadcast.round_id != self.digest:
            raise ProtocolViolation("the key broadcast belongs to another round")
        senders = broadcast.senders
        if senders != self.ids:
            missing = sorted(set(self.ids) - set(senders))
            raise ThresholdNotMet(
                f"a neighbour-graph round needs the key advert of every participant (the graph "
                f"seed is a hash over all of them); {len(missing)} missing, first {missing[0]}"
                if missing
                else "the key broadcast names participants outside the round",
                participant=missing[0] if missing else None,
            )
        seed = graph.derive_seed(self.digest, [a.signed_payload() for a in broadcast.adverts])
        if self.graph.seed is not None:
            if self.graph.seed != seed:
                raise ProtocolViolation(
                    "the graph seed does not match the hash of the participants' key adverts"
                )
            return self
        return replace(self, graph=replace(self.graph, seed=seed))

    @cached_property
    def adjacency(self) -> dict[int, frozenset[int]]:
        """The neighbour graph: each participant's neighbours (empty without a graph,
        where everyone pairs with everyone; use `neighbours`, which covers both)."""
        if self.graph is None:
            return {}
        if self.graph.seed is None:
            raise ProtocolViolation(
                "the neighbour graph is fixed by the key adverts: bind the config to the "
                "round's key broadcast first (RoundConfig.bind_graph)"
            )
        return graph.neighbours(self.ids, self.graph.seed, self.graph.degree)

    def neighbours(self, pid: int) -> frozenset[int]:
        """Who `pid` pairs with: everyone else, or its neighbours in the graph."""
        self.participant(pid)
        if self.graph is None:
            return self.everyone - {pid}
        return self.adjacency[pid]

    def holders(self, pid: int) -> frozenset[int]:
        """Who holds shares of `pid`'s secrets: itself and its neighbours."""
        self.participant(pid)
        if self.graph is None:
            return self.everyone
        return self.adjacency[pid] | {pid}

    def is_holder(self, holder: int, owner: int) -> bool:
        """Whether `holder` holds shares of `owner`'s secrets (O(1), for inner loops)."""
        self.participant(owner)
        if self.graph is None:
            return holder in self.everyone
        return holder == owner or holder in self.adjacency[owner]

    @property
    def share_threshold(self) -> int:
        """How many holders reconstruct a secret: t, or the graph's neighbourhood threshold."""
        return self.threshold if self.graph is None else self.graph.threshold

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the canonical bytes: the round id bound into every signature and AD."""
        return hashlib.sha256(domains.CONFIG_DIGEST + self.to_bytes()).digest()

    def to_bytes(self) -> bytes:
        writer = Writer(_TAG).text(self.context.federation).u64(self.context.round)
        writer.u32(self.threshold).u64(self.vector_length).u8(self.bits)
        writer.u32(len(self.participants))
        for p in self.participants:
            writer.u32(p.id).text(p.name).fixed(p.identity.to_bytes())
        if self.graph is None:
            writer.u8(_NO_GRAPH)
        else:  # the seed is not part of the config: it is derived from the key adverts
            writer.u8(_DERIVED_SEED).u32(self.graph.degree).u32(self.graph.threshold)
        return writer.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundConfig:
        """Parse and validate: MalformedMessage for malformed bytes, InvalidArgument for values."""
        reader = Reader(data, _TAG, "round config")
        context = RoundContext(reader.text("federation"), reader.u64("round"))
        threshold = reader.u32("threshold")
        vector_length = reader.u64("vector_length")
        bits = reader.u8("bits")
        participants = []
        for _ in range(reader.count("participants", MAX_PARTICIPANTS)):
            pid = reader.u32("participant id")
            name = reader.text("participant name")
            identity = IdentityPublicKey(reader.fixed(PUBLIC_KEY_SIZE, "identity key"))
            participants.append(RoundMember(pid, name, identity))
        has_graph = reader.u8("graph flag")
        neighbour_graph = None
        if has_graph == _DERIVED_SEED:
            neighbour_graph = NeighbourGraph(
                reader.u32("graph degree"), reader.u32("graph threshold")
            )
        elif has_graph == _LEGACY_CHOSEN_SEED:
            raise MalformedMessage(
                "round config: a neighbour graph whose seed the coordinator chose is refused "
                "(the seed must be derived from the participants' key adverts)"
            )
        elif has_graph != _NO_GRAPH:
            raise MalformedMessage("round config: the graph flag must be 0 or 2")
        reader.done()
        config = cls(context, tuple(participants), threshold, vector_length, bits, neighbour_graph)
        if tuple(participants) != config.participants:
            raise MalformedMessage(
                "round config: participants are not sorted by id (not canonical)"
            )
        return config
