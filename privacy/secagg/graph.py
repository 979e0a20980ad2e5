"""The SecAgg+ neighbour graph (Bell et al., CCS 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", §3 and §4).

Instead of pairing with all n-1 others, each participant pairs (pairwise masks) and shares
its secrets with k neighbours only, with k = O(log n), which turns the client's O(n) cost
into O(log n). The graph is a Harary graph H(k, n) on a pseudorandom cyclic order of the
participants: order them by SHA-256(label | public seed | id), then link each one to the
k/2 nearest on either side of the cycle. It is k-regular, symmetric, connected, and fixed
by the round's public seed, so every party computes it independently.

Bell et al.'s guarantees hold for a random graph that the adversary did not pick, so the
seed is not the coordinator's to choose: `derive_seed` hashes the signed part of every
participant's key advert of the round (fresh keys each round), which the coordinator can
neither forge nor leave out (`RoundConfig.bind_graph` refuses a broadcast that lacks one).
How large the degree and the neighbourhood threshold must be for a given fraction of
colluding institutions and of dropouts is in `graph_security`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

from privacy.secagg import domains
from privacy.secagg.errors import InvalidArgument
from privacy.secagg.graph_security import recommended_graph

GRAPH_SEED_SIZE: Final = 32
# Smallest useful degree: each participant has at least one neighbour on either side.
MIN_DEGREE: Final = 2


def recommended_degree(n: int) -> int:
    """The degree `graph_security.recommended_graph(n)` gives under the default policy, or 0
    when n is too small for a graph that meets it (use the complete graph)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InvalidArgument(f"a round needs an int of at least 2 participants, got {n!r}")
    chosen = recommended_graph(n)
    return 0 if chosen is None else chosen[0]


def derive_seed(round_id: bytes, signed_adverts: Iterable[bytes]) -> bytes:
    """The graph seed: SHA-256(label | round id | count | each advert's signed payload).

    `signed_adverts` are the signed payloads (both public keys, sender, round id) of every
    participant's advert, in id order. Only the signed part is hashed, so a coordinator
    cannot vary the seed by re-encoding a signature.
    """
    payloads = list(signed_adverts)
    digest = hashlib.sha256(domains.GRAPH_SEED)
    digest.update(round_id + len(payloads).to_bytes(4, "big"))
    for payload in payloads:
        digest.update(len(payload).to_bytes(4, "big") + payload)
    return digest.digest()


def check_degree(degree: int, n: int) -> None:
    if isinstance(degree, bool) or not isinstance(degree, int):
        raise InvalidArgument(f"the graph degree must be an int, got {type(degree).__name__}")
    if degree % 2 or degree < MIN_DEGREE or degree >= n - 1:
        raise InvalidArgument(
            f"the graph degree must be even and between {MIN_DEGREE} and n-2 = {n - 2} "
            f"(got {degree}); use the complete graph for n = {n}"
        )


def neighbours(ids: Sequence[int], seed: bytes, degree: int) -> dict[int, frozenset[int]]:
    """Each participant's k neighbours (never itself) in the round's neighbour graph.

    Cached (the server functions bind a config per call): do not modify the result."""
    if len(seed) != GRAPH_SEED_SIZE:
        raise InvalidArgument(f"the graph seed must be {GRAPH_SEED_SIZE} bytes")
    check_degree(degree, len(ids))
    return _neighbours(tuple(ids), seed, degree)


@functools.lru_cache(maxsize=16)
def _neighbours(ids: tuple[int, ...], seed: bytes, degree: int) -> dict[int, frozenset[int]]:
    order = sorted(
        ids,
        key=lambda pid: hashlib.sha256(
            domains.GRAPH_ORDER + seed + pid.to_bytes(4, "big")
        ).digest(),
    )
    n = len(order)
    half = degree // 2
    result: dict[int, frozenset[int]] = {}
    for position, pid in enumerate(order):
        around = [order[(position + step) % n] for step in range(-half, half + 1) if step]
        result[pid] = frozenset(around)
    return result


def is_connected(members: frozenset[int], adjacency: dict[int, frozenset[int]]) -> bool:
    """Whether the subgraph induced on `members` is connected (an empty set counts as connected).

    If the survivors' subgraph falls apart, the masks no longer tie the components together
    and the server would learn each component's sum, not just the total; both the server
    and every client refuse to go on in that case.
    """
    if not members:
        return True
    start = min(members)
    seen = {start}
    frontier = [start]
    while frontier:
        node = frontier.pop()
        for other in adjacency[node] & members:
            if other not in seen:
                seen.add(other)
                frontier.append(other)
    return len(seen) == len(members)
