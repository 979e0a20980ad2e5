"""Scale: a large secure round on the real stack, the protocol's cost as n grows, and scale-out.

Three measurements in one run:

1. **round**: one SecAgg+ round with n agents (default 200), 10% of which drop out after
   sharing keys (they vanish while training: the coordinator must recover their pairwise
   masks), on the real stack: a fresh PostgreSQL database, Redis, and separate `serve`,
   `worker` and `beat` processes. The agents are threads driving `RoundParticipant` over
   the signed HTTP API (`--agent-threads` threads, each stepping its share of the agents).
   The round time is the coordinator's own (first stage opened -> model stored); it
   includes waiting out the masked-input deadline (`--stage-timeout`) for the dropouts.
   The stored model must equal the survivors' aggregate (computed here from their known
   contributions, within fixed-point resolution and float32 storage) or the run fails.
2. **protocol**: the secure-aggregation protocol in process (privacy.secagg, no I/O) at
   n = 100, 300, 1000 with the SecAgg+ graph and 10% dropouts, d = 10^4: server time per
   stage and mean client time per stage, to show how each grows with n.
3. **scale-out**: unmasking and aggregation of d = 10^7 (n = `--scaleout-n` agents) on the
   real stack with one worker process (concurrency 1), then with a second worker process
   started next to it, in the same run: the aggregating stage's duration with 1 against 2.

    python benchmarks/scale.py            # the above (about 10-20 minutes on 2 cores)
    python benchmarks/scale.py --quick    # smoke run: n = 30, protocol up to n = 200, d = 10^6

The last line is `scale: n=<n> round_s=<a> workers2_vs_1=<b>`. PostgreSQL and Redis come
from FMTL_TEST_DATABASE_URL / FMTL_TEST_REDIS_URL (defaults: 127.0.0.1).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from benchmarks.coordinator import (  # noqa: E402
    HIDDEN,
    Stack,
    console,
    enroll_agents,
    input_dim_for,
    real_stack,
    stage_seconds,
)

TASKS = ["disease", "stage"]
PROTOCOL_STAGES = ("advertise", "share_keys", "masked_input", "consistency", "unmask")


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min), {os.cpu_count()} cpus"


# -- 1. a large round on the real stack ---------------------------------------------------------


class Vanished(Exception):
    """The agent 'crashes' while training: it never uploads, and never comes back."""


@dataclass
class Agent:
    index: int
    participant: Any  # RoundParticipant
    work: Any  # FixedDeltaWork
    drops: bool
    uploaded: bool = False
    gone: bool = False
    errors: int = 0


def _make_agents(
    stack: Stack, http: httpx.Client, spec: Any, n: int, dropouts: int, seed: int
) -> list[Agent]:
    from agent.coordinator_client import CoordinatorClient
    from agent.round_participant import RoundParticipant
    from agent.round_state import InMemoryRoundStateStore
    from federation.round_api import Receipt
    from tests.round_support import FixedDeltaWork, small_deltas

    class Dropping(FixedDeltaWork):
        def train(self, assignment: Any, global_vector: NDArray[np.float64]) -> Any:
            raise Vanished

    deltas = small_deltas(spec, n, seed=seed)
    agents: list[Agent] = []
    enrolled = enroll_agents(stack, http, spec.name, TASKS, n)
    dropping = set(range(n - dropouts, n))
    for i, identity in enumerate(enrolled):
        labelled = {"disease": 10 + i % 7, "stage": 5 + i % 3}
        work_type = Dropping if i in dropping else FixedDeltaWork
        work = work_type(spec, deltas[i], labelled, seed=i)

        class Client(CoordinatorClient):
            owner: Agent

            def upload_masked_update(self, number: int, masked_input: bytes) -> Receipt:
                receipt = super().upload_masked_update(number, masked_input)
                if receipt.outcome.value in ("accepted", "repeat"):
                    self.owner.uploaded = True
                return receipt

        client = Client(stack.url, identity.key, identity.key_id, timeout_s=120)
        participant = RoundParticipant(
            client, identity.key, InMemoryRoundStateStore(), work, policy=identity.policy()
        )
        agent = Agent(i, participant, work, i in dropping)
        client.owner = agent
        agents.append(agent)
    return agents


def _drive(agents: list[Agent], done: threading.Event) -> None:
    """Step each agent of this thread's share in turn until the round is over."""
    while not done.is_set():
        for agent in agents:
            if agent.gone or done.is_set():
                continue
            try:
                agent.participant.step()
            except Vanished:
                agent.gone = True
            except Exception:  # an agent retries what failed, as the daemon does
                agent.errors += 1
        time.sleep(0.02)


def _run_round(
    stack: Stack,
    http: httpx.Client,
    federation: str,
    agents: list[Agent],
    threads: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Start a round, drive the agents from `threads` threads, return the round's state."""
    for agent in agents:
        agent.uploaded = False
    started = http.post(f"/api/v1/federations/{federation}/rounds")
    assert started.status_code == 201, started.text
    number = started.json()["number"]
    done = threading.Event()
    shares = [agents[i::threads] for i in range(threads)]
    workers = [
        threading.Thread(target=_drive, args=(share, done), daemon=True)
        for share in shares
        if share
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            state: dict[str, Any] = http.get(
                f"/api/v1/federations/{federation}/rounds/{number}"
            ).json()
            if state["stage"] in ("completed", "failed"):
                return state
            if time.monotonic() > deadline:
                raise SystemExit(f"round {number} still in {state['stage']} after {timeout_s} s")
            time.sleep(0.25)
    finally:
        done.set()
        for worker in workers:
            worker.join(30)


def _round_seconds(state: dict[str, Any]) -> float:
    from datetime import datetime

    opened = min(datetime.fromisoformat(s["opened_at"]) for s in state["stages"])
    closed = max(datetime.fromisoformat(s["closed_at"]) for s in state["stages"] if s["closed_at"])
    return (closed - opened).total_seconds()


def _model_vector(http: httpx.Client, federation: str, version: int) -> NDArray[np.float64]:
    answer = http.get(f"/api/v1/federations/{federation}/models/{version}/vector")
    assert answer.status_code == 200, answer.text
    return np.frombuffer(answer.content, dtype="<f4").astype(np.float64)


@dataclass
class RoundResult:
    n: int
    dropouts: int
    survivors: int
    round_s: float
    stages: list[tuple[str, float, int | None]]
    max_error: float
    tolerance: float
    agent_errors: int


def large_round(n: int, dropout: float, threads: int, stage_timeout_s: float) -> RoundResult:
    from federation.round_api import update_codec
    from federation.spec import FederationSpec
    from privacy.secagg.encoding import FloatSegment
    from tests.round_support import expected_model

    dropouts = round(dropout * n)
    document = {
        "name": "scale",
        "tasks": [{"name": name, "kind": "binary"} for name in TASKS],
        "model": {"encoder": {"kind": "mlp", "input_dim": 16, "hidden": [16, 8]}},
        "schedule": {
            "min_participants": 3,
            "max_participants": n,
            "stage_timeout_s": stage_timeout_s,
        },
        "dp": {"enabled": False},
    }
    spec = FederationSpec.model_validate(document)
    with real_stack(2, beat=True) as stack:
        http = httpx.Client(
            base_url=stack.url,
            headers={"Authorization": f"Bearer {stack.admin_token()}"},
            timeout=120,
        )
        assert http.post("/api/v1/federations", json=document).status_code == 201
        agents = _make_agents(stack, http, spec, n, dropouts, seed=1)
        console.print(f"round: {n} agents ({dropouts} drop after sharing keys), running")
        state = _run_round(stack, http, "scale", agents, threads, 60 * stage_timeout_s)
        if state["stage"] != "completed":
            raise SystemExit(f"the n={n} round failed: {state['failure_reason']}")
        survivors = [agent for agent in agents if agent.uploaded]
        if any(agent.drops for agent in survivors):
            raise SystemExit("an agent that was to drop out uploaded: the benchmark is invalid")
        base = _model_vector(http, "scale", 0)  # built by the coordinator as the round started
        stored = _model_vector(http, "scale", 1)
        expected = expected_model(spec, base, [agent.work for agent in survivors])
        codec = update_codec(spec, n)
        resolution = max(
            codec.resolution(s.name) for s in codec.segments if isinstance(s, FloatSegment)
        )
        # Fixed-point rounding of each contribution (half a unit each, averaged) plus
        # float32 storage of the model.
        tolerance = resolution + float(np.abs(expected).max()) * 2**-23
        error = float(np.abs(stored - expected).max())
        if error > tolerance:
            raise SystemExit(
                f"the stored model is not the survivors' aggregate: max error {error:.3g} >"
                f" {tolerance:.3g}"
            )
        everyone = expected_model(spec, base, [agent.work for agent in agents])
        if float(np.abs(everyone - expected).max()) <= tolerance:
            raise SystemExit("the dropouts do not change the aggregate: the check proves nothing")
        stages = [
            (s["stage"], stage_seconds(state, s["stage"]), s.get("responders"))
            for s in state["stages"]
            if s["closed_at"]
        ]
        http.close()
    return RoundResult(
        n=n,
        dropouts=dropouts,
        survivors=len(survivors),
        round_s=_round_seconds(state),
        stages=stages,
        max_error=error,
        tolerance=tolerance,
        agent_errors=sum(agent.errors for agent in agents),
    )


# -- 2. the protocol in process, as n grows -----------------------------------------------------


@dataclass
class ProtocolRow:
    n: int
    degree: int
    d: int
    server_s: dict[str, float] = field(default_factory=dict)  # whole stage, all messages
    client_s: dict[str, float] = field(default_factory=dict)  # mean per client


def protocol_run(n: int, d: int, dropout: float) -> ProtocolRow:
    """One round of privacy.secagg in process (no I/O), SecAgg+ graph as the coordinator
    picks it, `dropout` of the agents dropping after sharing keys; times per stage."""
    from benchmarks.secagg import graph_for
    from privacy.secagg import (
        ClientRound,
        IdentityKey,
        RoundConfig,
        RoundContext,
        RoundMember,
        add_masked,
        close_advertise,
        close_consistency,
        close_masked_input,
        plan_unmask,
        route_shares,
        unmask_slice,
    )

    fraction = 2 / 3  # the federation default: t = ceil(2n/3)
    identities = {pid: IdentityKey.generate() for pid in range(1, n + 1)}
    config = RoundConfig(
        RoundContext("scale", 1),
        tuple(RoundMember(pid, f"p{pid}", key.public_key()) for pid, key in identities.items()),
        max(math.ceil(fraction * n), n // 2 + 1),
        d,
        32,
        graph_for(n, fraction),
    )
    row = ProtocolRow(n, config.graph.degree if config.graph else n - 1, d)
    client_total: dict[str, float] = dict.fromkeys(PROTOCOL_STAGES, 0.0)

    def client(stage: str, action: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        out = action()
        client_total[stage] += time.perf_counter() - began
        return out

    def server(stage: str, action: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        out = action()
        row.server_s[stage] = row.server_s.get(stage, 0.0) + time.perf_counter() - began
        return out

    clients = {
        pid: client("advertise", lambda pid=pid: ClientRound.start(config, pid, identities[pid]))
        for pid in config.ids
    }
    adverts = [client("advertise", c.advert) for c in clients.values()]
    broadcast = server("advertise", lambda: close_advertise(config, adverts))
    messages = [client("share_keys", lambda c=c: c.share_keys(broadcast)) for c in clients.values()]
    bundles = server("share_keys", lambda: route_shares(config, broadcast, messages))
    dropped = set(range(n - round(dropout * n) + 1, n + 1))
    encoded = np.random.default_rng(0).integers(0, 2**16, d, dtype=np.uint32)
    masked_sum = np.zeros(d, dtype=np.uint32)
    uploaded = []
    for pid in config.ids:
        if pid in dropped:
            continue
        upload = client(
            "masked_input", lambda pid=pid: clients[pid].masked_input(bundles[pid], encoded)
        )
        server("masked_input", lambda upload=upload: add_masked(masked_sum, upload.vector))
        uploaded.append(pid)
    senders = [m.sender for m in messages]
    survivors = server("masked_input", lambda: close_masked_input(config, senders, uploaded))
    signatures = [
        client("consistency", lambda pid=pid: clients[pid].sign_survivors(survivors))
        for pid in uploaded
    ]
    proof = server("consistency", lambda: close_consistency(config, survivors, signatures))
    responses = [
        client("unmask", lambda pid=pid: clients[pid].unmask(proof)) for pid in proof.signers
    ]
    plan = server("unmask", lambda: plan_unmask(config, broadcast, messages, proof, responses))
    total = server("unmask", lambda: unmask_slice(plan, masked_sum, 0, d))
    expected = (encoded.astype(np.uint64) * len(uploaded)) % 2**32
    if not np.array_equal(total, expected.astype(np.uint32)):
        raise SystemExit(f"wrong sum at n={n}: the benchmark is invalid")
    per_stage = {
        "advertise": n,  # ClientRound.start and advert(), both counted
        "share_keys": n,
        "masked_input": len(uploaded),
        "consistency": len(uploaded),
        "unmask": len(responses),
    }
    row.client_s = {stage: client_total[stage] / per_stage[stage] for stage in PROTOCOL_STAGES}
    return row


# -- 3. scale-out: aggregation with 2 worker processes against 1 ------------------------------


@dataclass
class ScaleOut:
    n: int
    d: int
    one_s: float
    two_s: float
    slices: int


def scale_out(n: int, d: int, threads: int) -> ScaleOut:
    """Two rounds of the same federation on one stack: the first aggregated by one worker
    process (concurrency 1), the second after a second one joined."""
    from federation.layout import ParameterLayout
    from federation.spec import FederationSpec
    from tests.round_support import FixedDeltaWork

    document = {
        "name": "wide",
        "tasks": [{"name": name, "kind": "binary"} for name in TASKS],
        "model": {"encoder": {"kind": "mlp", "input_dim": input_dim_for(d), "hidden": HIDDEN}},
        "schedule": {"min_participants": 3, "max_participants": n, "stage_timeout_s": 3600},
        "dp": {"enabled": False},
    }
    spec = FederationSpec.model_validate(document)
    length = ParameterLayout.model(spec).length
    times = []
    with real_stack(1) as stack:
        stack.wait_for_workers(1)
        http = httpx.Client(
            base_url=stack.url,
            headers={"Authorization": f"Bearer {stack.admin_token()}"},
            timeout=300,
        )
        assert http.post("/api/v1/federations", json=document).status_code == 201
        agents = _make_agents(stack, http, spec, n, 0, seed=2)
        # One shared delta: n vectors of 10^7 floats each would only cost memory here.
        delta = np.random.default_rng(3).normal(0.0, 0.01, length)
        for agent in agents:
            agent.work = FixedDeltaWork(spec, delta, {"disease": 10, "stage": 10}, seed=agent.index)
            agent.participant.work = agent.work
        slices = math.ceil(d / 262_144)
        for workers in (1, 2):
            if workers == 2:
                stack.start_worker(1)
                stack.wait_for_workers(2)  # both take slices from the round's first one
            console.print(f"scale-out: d={length}, n={n}, {workers} worker process(es)")
            state = _run_round(stack, http, "wide", agents, threads, 1800)
            if state["stage"] != "completed":
                raise SystemExit(f"the d={length} round failed: {state['failure_reason']}")
            times.append(stage_seconds(state, "aggregating"))
        http.close()
    return ScaleOut(n, length, times[0], times[1], slices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    parser.add_argument("--n", type=int, default=None, help="agents in the real round (200)")
    parser.add_argument("--dropout", type=float, default=0.1, help="fraction that drops out")
    parser.add_argument("--stage-timeout", type=float, default=None, help="stage deadline, s")
    parser.add_argument("--agent-threads", type=int, default=8, help="threads driving agents")
    parser.add_argument("--scaleout-n", type=int, default=None, help="agents at d = 10^7 (12)")
    parser.add_argument(
        "--skip",
        choices=("round", "protocol", "scaleout"),
        action="append",
        default=[],
        help="leave a part out",
    )
    args = parser.parse_args()
    n = args.n or (30 if args.quick else 200)
    stage_timeout = args.stage_timeout or (60.0 if args.quick else 120.0)
    sizes = (50, 200) if args.quick else (100, 300, 1000)
    wide_d = 1_000_000 if args.quick else 10_000_000
    wide_n = args.scaleout_n or (6 if args.quick else 12)
    command = "python benchmarks/scale.py" + (" --quick" if args.quick else "")
    print(f"# {command}")
    print(f"# load average at the start: {load_average()}")

    result = None
    if "round" not in args.skip:
        result = large_round(n, args.dropout, args.agent_threads, stage_timeout)
        print(
            f"round: n={result.n}, {result.dropouts} dropped after sharing keys, "
            f"{result.survivors} survivors, {result.round_s:.1f} s "
            f"(stage deadline {stage_timeout:.0f} s; agent request errors retried: "
            f"{result.agent_errors})"
        )
        for stage, seconds, responders in result.stages:
            print(f"  {stage:<18} {seconds:8.2f} s  responders {responders}")
        print(
            f"  stored model = the survivors' aggregate: max error {result.max_error:.2e} "
            f"(bound {result.tolerance:.2e})"
        )
        print(f"# load average after the round: {load_average()}")

    if "protocol" not in args.skip:
        print("protocol in process (privacy.secagg), 10% dropouts, d = 10^4; seconds")
        header = f"  {'n':>5} {'k':>4} | server: " + " ".join(f"{s:>12}" for s in PROTOCOL_STAGES)
        header += " | client (mean): " + " ".join(f"{s:>12}" for s in PROTOCOL_STAGES)
        print(header)
        for size in sizes:
            row = protocol_run(size, 10_000, 0.1)
            print(
                f"  {row.n:>5} {row.degree:>4} | server: "
                + " ".join(f"{row.server_s[s]:>12.4f}" for s in PROTOCOL_STAGES)
                + " | client (mean): "
                + " ".join(f"{row.client_s[s]:>12.5f}" for s in PROTOCOL_STAGES),
                flush=True,
            )
        print(f"# load average after the protocol runs: {load_average()}")

    ratio = float("nan")
    if "scaleout" not in args.skip:
        out = scale_out(wide_n, wide_d, min(4, args.agent_threads, wide_n))
        ratio = out.one_s / out.two_s
        print(
            f"scale-out: d={out.d}, n={out.n}, {out.slices} slices: aggregating took "
            f"{out.one_s:.2f} s with 1 worker process, {out.two_s:.2f} s with 2"
        )
        print(f"# load average after the scale-out: {load_average()}")
    round_s = result.round_s if result is not None else float("nan")
    print(f"scale: n={n} round_s={round_s:.1f} workers2_vs_1={ratio:.2f}")


if __name__ == "__main__":
    main()
