"""Secure-aggregation cost: client masking and server unmasking against the AES-CTR floor.

Run from the repository root:

    python -m benchmarks.secagg            # full grid (several minutes)
    python -m benchmarks.secagg --quick    # reduced grid, under a minute
    python benchmarks/secagg.py --quick    # the same, run by path

For each n (participants), d (vector length), dropout rate (participants that share keys
and then drop before uploading, the costly case for the server) and graph (everyone, or
the SecAgg+ neighbour graph with k = recommended_degree(n)), it runs whole rounds and times

- client: one `ClientRound.masked_input` call (decrypt the peer shares, agree the pairwise
  seeds, expand and add 1 + |neighbours| masks to a copy of the input);
- server: `plan_unmask` (reconstruct seeds from shares, agree the dropped participants'
  pairwise seeds) plus `unmask_slice` over the whole vector in one worker;

and, paired with each timing (measured right after it, so both see the same machine
load), the floor: raw AES-256-CTR producing the same number of keystream bytes (one fresh
key per mask, d·k/8 bytes each) into a preallocated buffer, the faster of two buffer
sizes. A ratio is the median over pairs: the first 15 participants' masking, three
server repetitions. Summing the uploads (reading n vectors) is reported apart: it is the
same with or without masks.
The last line is the headline: n=50, d=10^6, 10% dropout, neighbour graph.

    python benchmarks/secagg.py --graph-table

prints instead, for n in {32, 100, 1000, 10000}, the degree k and neighbourhood threshold ℓ
the default policy gives (privacy/secagg/graph_security.py: 1/3 colluding, 10% dropouts,
2^-40), the computed bounds on the probability that the colluders learn an honest update
and that dropouts fail the round, the largest coalition the graph tolerates at 2^-40, and
what the old rule (k ≈ 3·log2 n) gave. Its last line is
`secagg_graph: n=1000 gamma=0.33 log2_fail=<x>`.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run by path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cryptography
import numpy as np
from cryptography.hazmat.backends.openssl.backend import backend
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privacy.secagg import (
    ClientRound,
    GraphPolicy,
    IdentityKey,
    NeighbourGraph,
    RoundConfig,
    RoundContext,
    RoundMember,
    add_masked,
    close_advertise,
    close_consistency,
    close_masked_input,
    graph_risk,
    plan_unmask,
    recommended_graph,
    route_shares,
    unmask_slice,
)
from privacy.secagg.graph_security import max_colluders

REPEATS = 3  # server repetitions
CLIENTS_TIMED = 15  # participants whose masking is paired with a floor measurement
FLOOR_CHUNKS = (256 * 1024, 1024 * 1024)
HEADLINE = (50, 1_000_000, 0.1, True)
FULL_GRID = [
    (n, d, drop, graph)
    for n in (10, 50, 100)
    for d in (100_000, 1_000_000)
    for drop in (0.0, 0.1)
    for graph in (False, True)
]
QUICK_GRID = [
    (10, 100_000, 0.0, False),
    (50, 100_000, 0.1, False),
    (50, 1_000_000, 0.1, False),
    (50, 1_000_000, 0.0, True),
    HEADLINE,
]


@dataclass(frozen=True)
class Row:
    n: int
    d: int
    dropout: float
    graph: str
    client_streams: int
    client_s: float
    client_floor_s: float
    client_ratio: float
    server_streams: int
    server_s: float
    plan_s: float
    server_floor_s: float
    server_ratio: float
    sum_s: float


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def keystream_floor(streams: int, nbytes: int) -> float:
    """Seconds for raw AES-256-CTR to produce `streams` keystreams of `nbytes` each.

    One fresh key per keystream, output into a preallocated buffer; the faster of two
    buffer sizes.
    """
    keys = [os.urandom(32) for _ in range(streams)]
    best = math.inf
    for chunk in FLOOR_CHUNKS:
        buffer = bytearray(chunk + 16)
        zeros = memoryview(bytes(chunk))

        def run(chunk: int = chunk, buffer: bytearray = buffer, zeros: memoryview = zeros) -> None:
            for key in keys:
                encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
                for offset in range(0, nbytes, chunk):
                    encryptor.update_into(zeros[: min(chunk, nbytes - offset)], buffer)

        best = min(best, timed(run))
    return best


def median(values: list[float]) -> float:
    return float(np.median(values))


def graph_for(n: int, threshold_fraction: float) -> NeighbourGraph:
    """The graph the coordinator uses for n (`recommended_graph`); where that is the complete
    graph (small n), the largest proper graph, so that small rows still time a graph."""
    chosen = recommended_graph(n)
    if chosen is not None:
        return NeighbourGraph(*chosen)
    degree = (n - 2) // 2 * 2
    local = max(math.ceil(threshold_fraction * (degree + 1)), (degree + 1) // 2 + 1)
    return NeighbourGraph(degree, local)


def measure(n: int, d: int, dropout: float, graph: bool, bits: int = 32) -> Row:
    fraction = 2 / 3  # the federation default: t = ceil(2n/3)
    identities = {pid: IdentityKey.generate() for pid in range(1, n + 1)}
    config = RoundConfig(
        RoundContext("benchmark", 1),
        tuple(RoundMember(pid, f"p{pid}", key.public_key()) for pid, key in identities.items()),
        max(math.ceil(fraction * n), n // 2 + 1),
        d,
        bits,
        graph_for(n, fraction) if graph else None,
    )
    clients = {pid: ClientRound.start(config, pid, identities[pid]) for pid in config.ids}
    broadcast = close_advertise(config, [c.advert() for c in clients.values()])
    config = config.bind_graph(broadcast)  # the graph seed is the hash of the adverts
    share_messages = [c.share_keys(broadcast) for c in clients.values()]
    bundles = route_shares(config, broadcast, share_messages)
    dropped = set(range(n - round(dropout * n) + 1, n + 1))
    base = np.random.default_rng(0).integers(0, 2**32, d, dtype=np.uint64).astype(np.uint32)
    masked_sum = np.zeros(d, dtype=np.uint32)
    share_senders = {m.sender for m in share_messages}
    nbytes = d * bits // 8
    client_s, client_floor_s, client_ratio, streams = [], [], [], []
    uploaded, sum_s = [], 0.0
    for pid in config.ids:
        if pid in dropped:
            continue
        encoded = base + np.uint32(pid)
        start = time.perf_counter()
        upload = clients[pid].masked_input(bundles[pid], encoded)
        elapsed = time.perf_counter() - start
        if len(client_s) < CLIENTS_TIMED:  # paired: the floor right after, same conditions
            masks = 1 + len(config.neighbours(pid) & share_senders)
            floor = keystream_floor(masks, nbytes)
            client_s.append(elapsed)
            client_floor_s.append(floor)
            client_ratio.append(elapsed / floor)
            streams.append(masks)
        start = time.perf_counter()
        add_masked(masked_sum, upload.vector)
        sum_s += time.perf_counter() - start
        uploaded.append(pid)
    survivors = close_masked_input(config, [m.sender for m in share_messages], uploaded)
    signatures = [clients[pid].sign_survivors(survivors) for pid in uploaded]
    proof = close_consistency(config, survivors, signatures)
    responses = [clients[pid].unmask(proof) for pid in proof.signers]
    server_s, plan_s, server_floor_s, server_ratio = [], [], [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        plan = plan_unmask(config, broadcast, share_messages, proof, responses)
        planned = time.perf_counter()
        total = unmask_slice(plan, masked_sum, 0, d)
        elapsed = time.perf_counter() - start
        floor = keystream_floor(len(plan.entries), nbytes)
        server_s.append(elapsed)
        plan_s.append(planned - start)
        server_floor_s.append(floor)
        server_ratio.append(elapsed / floor)
    expected = (base.astype(np.uint64) * len(uploaded) + sum(uploaded)) % 2**32
    if not np.array_equal(total, expected.astype(np.uint32)):
        raise SystemExit(f"wrong sum for n={n} d={d}: the benchmark is invalid")
    return Row(
        n,
        d,
        dropout,
        "all" if config.graph is None else f"k={config.graph.degree}",
        round(median(streams)),
        median(client_s),
        median(client_floor_s),
        median(client_ratio),
        len(plan.entries),
        median(server_s),
        median(plan_s),
        median(server_floor_s),
        median(server_ratio),
        sum_s / len(uploaded),
    )


GRAPH_TABLE_NS = (32, 100, 1000, 10000)
GRAPH_TABLE_HEADLINE = 1000


def _log2_text(value: float) -> str:
    return "0" if value == -math.inf else f"2^{value:.1f}"


def old_rule(n: int) -> tuple[int, int] | None:
    """What the coordinator used before: k = 2·⌈1.5·log2 n⌉, ℓ = ⌈2(k+1)/3⌉."""
    degree = 2 * math.ceil(3.0 * math.log2(n) / 2)
    if degree >= n - 1:
        return None
    return degree, max(math.ceil(2 * (degree + 1) / 3), (degree + 1) // 2 + 1)


def graph_table() -> None:
    policy = GraphPolicy()
    gamma = policy.collusion_fraction
    print("# python benchmarks/secagg.py --graph-table")
    print(
        f"# policy: gamma={gamma:.3f} colluding, delta={policy.dropout_fraction:.2f} dropping "
        f"after round 0, target 2^{policy.log2_target:g}; bounds: union over participants of "
        "exact hypergeometric tails (privacy/secagg/graph_security.py)"
    )
    header = (
        f"{'n':>6} {'k':>4} {'l':>4} {'c':>5} | {'P(exposure)':>12} {'P(fail)':>10} | "
        f"{'tolerates':>14} | {'old k, l':>8} {'old P(exposure)':>15}"
    )
    print(header)
    print("-" * len(header))
    headline = None
    for n in GRAPH_TABLE_NS:
        chosen = recommended_graph(n, policy)
        degree, threshold = chosen if chosen is not None else (n - 1, math.ceil(2 * n / 3))
        risk = graph_risk(n, degree, threshold, policy)
        tolerated = max_colluders(n, degree, threshold, policy)
        old = old_rule(n)
        old_text, old_risk = "all", "-"
        if old is not None:
            old_text = f"{old[0]}, {old[1]}"
            old_risk = _log2_text(graph_risk(n, *old, policy).log2_exposure)
        print(
            f"{n:>6} {degree:>4} {threshold:>4} {risk.colluders:>5} | "
            f"{_log2_text(risk.log2_exposure):>12} {_log2_text(risk.log2_dropout_failure):>10} | "
            f"{f'{tolerated} ({tolerated / n:.1%})':>14} | {old_text:>8} {old_risk:>15}",
            flush=True,
        )
        if n == GRAPH_TABLE_HEADLINE:
            headline = risk.log2_exposure
    assert headline is not None
    print(f"secagg_graph: n={GRAPH_TABLE_HEADLINE} gamma={gamma:.2f} log2_fail={headline:.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced grid, under a minute")
    parser.add_argument(
        "--graph-table",
        action="store_true",
        help="the neighbour graph's degree, threshold and security over n (no timing)",
    )
    args = parser.parse_args(argv)
    if args.graph_table:
        graph_table()
        return
    grid = QUICK_GRID if args.quick else FULL_GRID
    command = "python -m benchmarks.secagg" + (" --quick" if args.quick else "")
    print(f"# {command}")
    print(
        f"# {platform.machine()} {platform.processor() or platform.platform()}, "
        f"{os.cpu_count()} cpus, python {platform.python_version()}, numpy {np.__version__}, "
        f"cryptography {cryptography.__version__} ({backend.openssl_version_text()})"
    )
    print("# times in ms; ratio = time / raw AES-CTR time for the same keystream bytes")
    header = (
        f"{'n':>4} {'d':>8} {'drop':>5} {'graph':>6} | {'masks':>5} {'client':>8} "
        f"{'floor':>8} {'ratio':>5} | {'masks':>5} {'server':>8} {'(plan)':>8} {'floor':>8} "
        f"{'ratio':>5} | {'sum/upload':>10}"
    )
    print(header)
    print("-" * len(header))
    headline = None
    for n, d, dropout, graph in grid:
        row = measure(n, d, dropout, graph)
        client_ratio, server_ratio = row.client_ratio, row.server_ratio
        print(
            f"{row.n:>4} {row.d:>8} {row.dropout:>5.0%} {row.graph:>6} | "
            f"{row.client_streams:>5} {row.client_s * 1e3:>8.2f} {row.client_floor_s * 1e3:>8.2f} "
            f"{client_ratio:>5.2f} | {row.server_streams:>5} {row.server_s * 1e3:>8.2f} "
            f"{row.plan_s * 1e3:>8.2f} {row.server_floor_s * 1e3:>8.2f} {server_ratio:>5.2f} | "
            f"{row.sum_s * 1e3:>10.2f}",
            flush=True,
        )
        if (n, d, dropout, graph) == HEADLINE:
            headline = (client_ratio, server_ratio)
    assert headline is not None
    print(f"secagg: client_vs_floor={headline[0]:.2f} server_vs_floor={headline[1]:.2f}")


if __name__ == "__main__":
    main()
