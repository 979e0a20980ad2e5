"""Drive whole secure-aggregation rounds in memory, with dropouts, for the protocol tests.

Every message crosses a simulated wire (to_bytes, then from_bytes on the other side), the
server is only the pure functions of privacy.secagg, and everything the server receives is
recorded, so tests can check both the result and what the server saw. `expected_outcome`
states the protocol's threshold rules independently of the implementation, so a test can
predict whether a round must succeed (and with which survivors) or must fail.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from privacy.secagg import (
    ClientRound,
    ConsistencyProof,
    ConsistencySignature,
    IdentityKey,
    KeyBroadcast,
    MaskedInput,
    NeighbourGraph,
    RoundConfig,
    RoundContext,
    RoundMember,
    SecAggError,
    ShareBundle,
    ShareKeysMessage,
    SurvivorSet,
    ThresholdNotMet,
    UnmaskResponse,
    add_masked,
    close_advertise,
    close_consistency,
    close_masked_input,
    plan_unmask,
    ring_dtype,
    route_shares,
    unmask_slice,
)

STAGES = ("advertise", "share_keys", "masked_input", "consistency", "unmask")


@dataclass(frozen=True)
class Federation:
    config: RoundConfig
    identities: Mapping[int, IdentityKey]


def make_federation(
    n: int,
    threshold: int,
    vector_length: int,
    *,
    bits: int = 32,
    degree: int | None = None,
    graph_threshold: int | None = None,
    round_number: int = 7,
) -> Federation:
    """n participants with ids 1..n and fresh identity keys; a graph when `degree` is set."""
    identities = {pid: IdentityKey.generate() for pid in range(1, n + 1)}
    participants = tuple(
        RoundMember(pid, f"institution-{pid}", key.public_key()) for pid, key in identities.items()
    )
    graph = None
    if degree is not None:
        assert graph_threshold is not None
        graph = NeighbourGraph(degree, graph_threshold)
    config = RoundConfig(
        RoundContext("federation-under-test", round_number),
        participants,
        threshold,
        vector_length,
        bits,
        graph,
    )
    return Federation(config, identities)


def random_inputs(config: RoundConfig, rng: np.random.Generator) -> dict[int, NDArray[np.generic]]:
    dtype = ring_dtype(config.bits)
    high = np.iinfo(dtype).max
    return {
        pid: rng.integers(0, high, size=config.vector_length, dtype=dtype, endpoint=True)
        for pid in config.ids
    }


@dataclass
class RoundOutcome:
    """What a simulated round produced: the unmasked sum or the typed error that ended it."""

    total: NDArray[np.generic] | None = None
    error: SecAggError | None = None
    survivors: tuple[int, ...] = ()
    server_view: list[bytes] = field(default_factory=list)
    refused: dict[int, SecAggError] = field(default_factory=dict)
    #: The config bound to the round's graph seed (set once the key broadcast is).
    config: RoundConfig | None = None


def _through_wire(message: object, kind: type) -> object:
    return kind.from_bytes(message.to_bytes())  # type: ignore[attr-defined]


def run_round(
    federation: Federation,
    inputs: Mapping[int, NDArray[np.generic]],
    dropouts: Mapping[str, frozenset[int]],
    *,
    restore_each_step: bool = False,
    slices: int = 3,
) -> RoundOutcome:
    """Run rounds 0-4; participants in dropouts[stage] stop before sending that stage's message.

    A client that refuses a step (raises a SecAggError) stops too, as a real agent would.
    With `restore_each_step`, every client is exported and restored between steps.
    """
    config, outcome = federation.config, RoundOutcome()
    clients = {
        pid: ClientRound.start(config, pid, federation.identities[pid]) for pid in config.ids
    }

    def step(pid: int, action: str, call: object) -> object | None:
        if pid in dropouts.get(action, frozenset()):
            return None
        if restore_each_step:
            clients[pid] = ClientRound.restore(
                clients[pid].export_state(), federation.identities[pid]
            )
        try:
            result = call()  # type: ignore[operator]
        except SecAggError as error:
            outcome.refused[pid] = error
            return None
        wire = result.to_bytes()
        outcome.server_view.append(wire)
        return type(result).from_bytes(wire)

    try:
        adverts = [a for pid in config.ids if (a := step(pid, "advertise", clients[pid].advert))]
        broadcast = close_advertise(config, adverts)  # type: ignore[arg-type]
        config = outcome.config = config.bind_graph(broadcast)
        relayed = KeyBroadcast.from_bytes(broadcast.to_bytes())
        share_messages: list[ShareKeysMessage] = []
        for pid in broadcast.senders:
            message = step(pid, "share_keys", lambda pid=pid: clients[pid].share_keys(relayed))
            if message is not None:
                share_messages.append(message)  # type: ignore[arg-type]
        bundles = route_shares(config, broadcast, share_messages)
        uploads: dict[int, MaskedInput] = {}
        for pid, bundle in bundles.items():
            received = ShareBundle.from_bytes(bundle.to_bytes())
            upload = step(
                pid,
                "masked_input",
                lambda pid=pid, received=received: clients[pid].masked_input(received, inputs[pid]),
            )
            if upload is not None:
                uploads[pid] = upload  # type: ignore[assignment]
        share_senders = [m.sender for m in share_messages]
        survivor_set = close_masked_input(config, share_senders, uploads)
        shown = SurvivorSet.from_bytes(survivor_set.to_bytes())
        signatures: list[ConsistencySignature] = []
        for pid in survivor_set.survivors:
            signature = step(pid, "consistency", lambda pid=pid: clients[pid].sign_survivors(shown))
            if signature is not None:
                signatures.append(signature)  # type: ignore[arg-type]
        proof = close_consistency(config, survivor_set, signatures)
        relayed_proof = ConsistencyProof.from_bytes(proof.to_bytes())
        responses: list[UnmaskResponse] = []
        for pid in proof.signers:
            response = step(pid, "unmask", lambda pid=pid: clients[pid].unmask(relayed_proof))
            if response is not None:
                responses.append(response)  # type: ignore[arg-type]
        plan = plan_unmask(config, broadcast, share_messages, proof, responses)
    except SecAggError as error:
        outcome.error = error
        return outcome
    outcome.survivors = plan.survivors
    masked_sum = np.zeros(config.vector_length, dtype=ring_dtype(config.bits))
    for pid in plan.survivors:
        add_masked(masked_sum, uploads[pid].vector)
    total = np.empty_like(masked_sum)
    bounds = np.linspace(0, config.vector_length, slices + 1).astype(int)
    for start, stop in itertools.pairwise(bounds):
        if start < stop:
            total[start:stop] = unmask_slice(plan, masked_sum[start:stop].copy(), start, stop)
    outcome.total = total
    return outcome


def exact_sum(
    config: RoundConfig, inputs: Mapping[int, NDArray[np.generic]], survivors: tuple[int, ...]
) -> NDArray[np.generic]:
    """Σ inputs of the survivors mod 2^k, computed with Python integers."""
    modulus = 1 << config.bits
    totals = [
        sum(int(inputs[pid][i]) for pid in survivors) % modulus for i in range(config.vector_length)
    ]
    return np.array(totals, dtype=ring_dtype(config.bits))


def _connected(members: set[int], config: RoundConfig) -> bool:
    if not members:
        return True
    reached, todo = set(), [min(members)]
    while todo:
        node = todo.pop()
        if node in reached:
            continue
        reached.add(node)
        todo.extend(v for v in config.neighbours(node) if v in members and v not in reached)
    return reached == members


def expected_outcome(
    config: RoundConfig | None, dropouts: Mapping[str, frozenset[int]]
) -> tuple[int, ...] | None:
    """The survivors U3 whose sum the round must reveal, or None if it must fail (typed).

    The rules of Bonawitz et al. Fig. 4 (|U_i| >= t at every stage) and, with the graph, of
    Bell et al.: every needed secret keeps `share_threshold` holders, survivors connected;
    and a graph round needs every advert (its seed is their hash). `config` is the round's
    config bound to its graph seed (`RoundOutcome.config`), or None if the round never got
    a key broadcast.
    """
    if config is None:
        return None
    t, ts = config.threshold, config.share_threshold
    u1 = set(config.ids) - dropouts["advertise"]
    if len(u1) < t or (config.graph is not None and u1 != set(config.ids)):
        return None
    u2 = {u for u in u1 - dropouts["share_keys"] if len(config.holders(u) & u1) >= ts}
    if len(u2) < t:
        return None
    u3 = u2 - dropouts["masked_input"]
    if len(u3) < t:
        return None

    def reconstructible(alive: set[int]) -> bool:
        for u in u2:
            if u not in u3 and not config.neighbours(u) & u3:
                continue
            if len(config.holders(u) & alive) < ts:
                return False
        return True

    if not reconstructible(u3) or not _connected(u3, config):
        return None
    u4 = u3 - dropouts["consistency"]
    u5 = u4 - dropouts["unmask"]
    if len(u4) < t or len(u5) < t or not reconstructible(u5):
        return None
    return tuple(sorted(u3))


def no_dropouts() -> dict[str, frozenset[int]]:
    return {stage: frozenset() for stage in STAGES}


__all__ = [
    "STAGES",
    "Federation",
    "RoundOutcome",
    "ThresholdNotMet",
    "exact_sum",
    "expected_outcome",
    "make_federation",
    "no_dropouts",
    "random_inputs",
    "run_round",
]


@dataclass
class Progress:
    """A round driven step by step by a test that wants to interfere between steps."""

    federation: Federation
    clients: dict[int, ClientRound]
    inputs: dict[int, NDArray[np.generic]]
    broadcast: KeyBroadcast | None = None
    share_messages: list[ShareKeysMessage] = field(default_factory=list)
    bundles: dict[int, ShareBundle] = field(default_factory=dict)
    uploads: dict[int, MaskedInput] = field(default_factory=dict)
    survivor_set: SurvivorSet | None = None
    proof: ConsistencyProof | None = None

    @classmethod
    def start(cls, federation: Federation, seed: int = 0) -> Progress:
        config = federation.config
        clients = {
            pid: ClientRound.start(config, pid, federation.identities[pid]) for pid in config.ids
        }
        inputs = random_inputs(config, np.random.default_rng(seed))
        return cls(federation, clients, inputs)

    @property
    def config(self) -> RoundConfig:
        return self.federation.config

    def advertise(self) -> Progress:
        self.broadcast = close_advertise(self.config, [c.advert() for c in self.clients.values()])
        self.federation = Federation(
            self.federation.config.bind_graph(self.broadcast), self.federation.identities
        )
        return self

    def share_keys(self) -> Progress:
        if self.broadcast is None:
            self.advertise()
        assert self.broadcast is not None
        self.share_messages = [c.share_keys(self.broadcast) for c in self.clients.values()]
        self.bundles = route_shares(self.config, self.broadcast, self.share_messages)
        return self

    def masked_input(self, dropped: frozenset[int] = frozenset()) -> Progress:
        if not self.bundles:
            self.share_keys()
        for pid, bundle in self.bundles.items():
            if pid not in dropped:
                self.uploads[pid] = self.clients[pid].masked_input(bundle, self.inputs[pid])
        senders = [m.sender for m in self.share_messages]
        self.survivor_set = close_masked_input(self.config, senders, self.uploads)
        return self

    def consistency(self) -> Progress:
        if self.survivor_set is None:
            self.masked_input()
        assert self.survivor_set is not None
        signatures = [
            self.clients[pid].sign_survivors(self.survivor_set)
            for pid in self.survivor_set.survivors
        ]
        self.proof = close_consistency(self.config, self.survivor_set, signatures)
        return self

    def responses(self) -> list[UnmaskResponse]:
        if self.proof is None:
            self.consistency()
        assert self.proof is not None
        return [self.clients[pid].unmask(self.proof) for pid in self.proof.signers]
