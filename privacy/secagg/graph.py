"""The SecAgg+ neighbour graph (Bell et al., CCS 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", §3 and §4).

Instead of pairing with all n-1 others, each participant pairs (pairwise masks) and shares
its secrets with k neighbours only, with k = O(log n), which turns the client's O(n) cost
into O(log n). The graph is a Harary graph H(k, n) on a pseudorandom cyclic order of the
participants: order them by SHA-256(label | public seed | id), then link each one to the
k/2 nearest on either side of the cycle. It is k-regular, symmetric, connected, and fixed
by the round's public seed, so every party computes it independently. The seed must be
drawn at random by the coordinator when it opens the round (Bell et al. assume a random
graph unknown to the clients in advance; see docs/secagg.md for what a lying server could
do by choosing it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Final

from privacy.secagg import domains
from privacy.secagg.errors import InvalidArgument

GRAPH_SEED_SIZE: Final = 32
# Smallest useful degree: each participant has at least one neighbour on either side.
MIN_DEGREE: Final = 2
# k ≈ DEGREE_PER_LOG2_N · log2(n): Bell et al. prove k = O(log n) suffices; the constant is a
# heuristic of ours (it gives k = 18 for n = 50 and k = 30 for n = 1000), not derived from
# their bounds for a particular corruption and dropout rate.
DEGREE_PER_LOG2_N: Final = 3.0


def recommended_degree(n: int) -> int:
    """An even degree k ≈ 3·log2(n) for n participants, or 0 when n is too small for a graph.

    0 means "use the complete graph" (the neighbour graph saves nothing below that size).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InvalidArgument(f"a round needs an int of at least 2 participants, got {n!r}")
    degree = 2 * math.ceil(DEGREE_PER_LOG2_N * math.log2(n) / 2)
    return degree if degree < n - 1 else 0


def check_degree(degree: int, n: int) -> None:
    if isinstance(degree, bool) or not isinstance(degree, int):
        raise InvalidArgument(f"the graph degree must be an int, got {type(degree).__name__}")
    if degree % 2 or degree < MIN_DEGREE or degree >= n - 1:
        raise InvalidArgument(
            f"the graph degree must be even and between {MIN_DEGREE} and n-2 = {n - 2} "
            f"(got {degree}); use the complete graph for n = {n}"
        )


def neighbours(ids: Sequence[int], seed: bytes, degree: int) -> dict[int, frozenset[int]]:
    """Each participant's k neighbours (never itself) in the round's neighbour graph."""
    if len(seed) != GRAPH_SEED_SIZE:
        raise InvalidArgument(f"the graph seed must be {GRAPH_SEED_SIZE} bytes")
    check_degree(degree, len(ids))
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
