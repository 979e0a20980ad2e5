"""Round configuration and the neighbour graph: validated, canonical, agreed by everyone."""

from __future__ import annotations

import dataclasses

import pytest

from privacy.secagg import (
    IdentityKey,
    InvalidArgument,
    MalformedMessage,
    NeighbourGraph,
    ProtocolViolation,
    RoundConfig,
    RoundContext,
    RoundMember,
    recommended_degree,
)
from privacy.secagg.graph import neighbours

KEYS = [IdentityKey.generate().public_key() for _ in range(12)]
SEED = bytes(range(32))


def _participants(n: int) -> tuple[RoundMember, ...]:
    return tuple(RoundMember(i, f"p{i}", KEYS[i - 1]) for i in range(1, n + 1))


def _config(**changes) -> RoundConfig:
    values = {
        "context": RoundContext("fed", 3),
        "participants": _participants(10),
        "threshold": 7,
        "vector_length": 100,
        "bits": 32,
        "graph": NeighbourGraph(4, 3),
    }
    values.update(changes)
    return RoundConfig(**values)


def test_config_round_trips_through_canonical_bytes() -> None:
    config = _config()
    again = RoundConfig.from_bytes(config.to_bytes())
    assert again == config
    assert again.to_bytes() == config.to_bytes()
    assert again.digest == config.digest
    shuffled = _config(participants=tuple(reversed(_participants(10))))
    assert shuffled.to_bytes() == config.to_bytes()


@pytest.mark.parametrize(
    "change",
    [
        {"context": RoundContext("fed", 4)},
        {"context": RoundContext("other", 3)},
        {"threshold": 8},
        {"vector_length": 101},
        {"bits": 64},
        {"graph": None},
        {"graph": NeighbourGraph(4, 4)},
        {"participants": _participants(9)},
    ],
)
def test_every_field_changes_the_round_id(change) -> None:
    assert _config(**change).digest != _config().digest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": 5}, "n/2 < t <= n"),
        ({"threshold": 11}, "n/2 < t <= n"),
        ({"threshold": True}, "n/2 < t <= n"),
        ({"vector_length": 0}, "vector length"),
        ({"bits": 16}, "bits"),
        ({"participants": _participants(1)}, "2 to"),
        ({"participants": (*_participants(3), RoundMember(3, "again", KEYS[5]))}, "distinct"),
        ({"graph": NeighbourGraph(10, 6)}, "n-2 = 8"),
        ({"graph": NeighbourGraph(5, 4)}, "even"),
        ({"context": "fed-3"}, "RoundContext"),
    ],
)
def test_invalid_configs_are_refused(change, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _config(**change)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: NeighbourGraph(4, 2), r"> \(degree \+ 1\) / 2"),
        (lambda: NeighbourGraph(4, 6), "<= degree"),
        (lambda: NeighbourGraph(4, 3, seed=b"short"), "32 bytes"),
        (lambda: RoundMember(0, "zero", KEYS[0]), r"\[1, 2\^32\)"),
        (lambda: RoundMember(1, "", KEYS[0]), "name"),
        (lambda: RoundContext("", 1), "federation"),
        (lambda: RoundContext("fed", -1), "round number"),
    ],
)
def test_invalid_parts_are_refused(factory, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        factory()


def test_unknown_participant_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation) as caught:
        _config().neighbours(42)
    assert caught.value.participant == 42


def test_non_canonical_or_damaged_config_bytes_are_malformed() -> None:
    raw = _config().to_bytes()
    for damaged in (raw[:-1], raw + b"\x00", b"XXXX" + raw[4:], raw[:4] + b"\x02" + raw[5:]):
        with pytest.raises(MalformedMessage):
            RoundConfig.from_bytes(damaged)


@pytest.mark.parametrize("n", [5, 10, 37, 100])
def test_neighbour_graph_is_regular_symmetric_and_connected(n: int) -> None:
    ids = list(range(1, n + 1))
    degree = min(recommended_degree(n) or 2, n - 2) // 2 * 2
    graph = neighbours(ids, SEED, degree)
    for pid, around in graph.items():
        assert len(around) == degree
        assert pid not in around
        assert all(pid in graph[other] for other in around)
    reached, todo = set(), [1]
    while todo:
        node = todo.pop()
        if node not in reached:
            reached.add(node)
            todo.extend(graph[node])
    assert reached == set(ids)


def test_neighbour_graph_is_fixed_by_its_public_seed() -> None:
    ids = list(range(1, 41))
    assert neighbours(ids, SEED, 6) == neighbours(list(reversed(ids)), SEED, 6)
    assert neighbours(ids, SEED, 6) != neighbours(ids, bytes(32), 6)


def test_recommended_degree_is_the_policy_s_and_0_for_the_complete_graph() -> None:
    assert recommended_degree(4) == 0  # too small for a graph: use everyone
    assert recommended_degree(50) == 24  # graph_security: 1/3 colluding, 10% dropouts, 2^-40
    assert recommended_degree(1000) == 126


def test_a_config_with_a_coordinator_chosen_seed_is_refused_as_bytes() -> None:
    """The old format carried a seed the coordinator chose; it must not parse any more."""
    raw = _config().to_bytes()
    flag_at = len(raw) - 9  # flag (1 byte), degree and threshold (u32 each) end the bytes
    assert raw[flag_at] == 2
    legacy = raw[:flag_at] + b"\x01" + SEED + raw[flag_at + 1 :]
    with pytest.raises(MalformedMessage, match="seed the coordinator chose"):
        RoundConfig.from_bytes(legacy)


def test_the_graph_is_unknown_until_bound_to_the_adverts() -> None:
    with pytest.raises(ProtocolViolation, match="bind"):
        _config().neighbours(1)


def test_config_holders_follow_the_graph() -> None:
    config = _config(graph=NeighbourGraph(4, 3, seed=SEED))
    assert config.share_threshold == 3
    for pid in config.ids:
        assert config.holders(pid) == config.neighbours(pid) | {pid}
        assert len(config.neighbours(pid)) == 4
    full = dataclasses.replace(config, graph=None)
    assert full.share_threshold == 7
    assert full.neighbours(1) == frozenset(range(2, 11))
