"""Wall time of one round on loopback: secure aggregation against plain (unmasked) sums.

Run from the repository root:

    python benchmarks/round_latency.py            # n = 4, 16, 32; 3 rounds per mode
    python benchmarks/round_latency.py --quick    # n = 4, 32; 1 round per mode

One `fmtl coordinator serve` process (embedded: SQLite, in-process worker; plain
aggregation allowed for this measurement only) and n lightweight agents: threads of this
process, each driving the real agent-side protocol (`agent.round_participant.
RoundParticipant` over a signed `CoordinatorClient`, real HTTP) with a trivial `LocalWork`
whose "training" adds a small random step to the global model. Training cost is left out on
purpose: what is timed is what the service adds to a round — protocol messages, masking,
storage, unmasking and applying the aggregate.

For each n and mode the benchmark creates a federation (the example's heart-disease model,
or a wider one with `--hidden`), enrolls n institutions over HTTP, starts rounds one after
the other, and takes each round's wall time from the coordinator's own timestamps: from the
round's creation (the admin's start request) to its completion (model version stored).
An untimed round before the timed ones creates the initial model version and warms caches.
Secure rounds go through all five protocol stages (advertise keys, share keys, masked
input, consistency check, unmasking); plain rounds only through masked input. Both modes
run in the same process against the same coordinator, one after the other per n.

With `--profile` the coordinator runs under `benchmarks.stack_profile` (every thread's
stack sampled every 5 ms) and so do the agents' threads in this process; a table per n then
shows, for each stage of the timed secure rounds, its wall time, how much of it the
coordinator spent with no thread busy (waiting for agents), and the coordinator's and the
agents' busy thread-seconds by kind of work (signature checks, database, blob I/O, secagg
crypto, Celery hand-offs, request handling, aggregation). Sampling costs a little CPU:
take the headline from a run without it.

The last line is the headline, exactly: `round_latency: n=32 secure_vs_plain=<ratio>`.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

if __package__ in (None, ""):  # run by path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from agent.coordinator_client import ClientError, CoordinatorClient
from agent.http_signing import enrollment_proof
from agent.local_work import Decision, LocalResult
from agent.round_participant import RoundParticipant
from agent.round_policy import RoundPolicy
from agent.round_state import InMemoryRoundStateStore
from benchmarks.stack_profile import StackSampler, Window, busy_by_window
from federation.aggregation import local_contribution
from federation.round_api import RoundAssignment
from federation.spec import FederationSpec
from federation.wire import AgentProfile
from fmtl.admin.client import AdminClient
from fmtl.demo.example import load_example, locate_example
from fmtl.demo.processes import Children, child_environment, fmtl_command, run_once
from fmtl.demo.run import free_port

#: How often each lightweight agent polls for work with `--poll` (the same in both modes).
AGENT_POLL_S = 0.2
#: How long the coordinator may hold an agent's work poll (push, the default).
LONG_POLL_S = 25.0
ROUND_TIMEOUT_S = 600.0
console = Console()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class TrivialWork:
    """Joins every round; "trains" by adding a small random step (no data, no DP)."""

    def __init__(self, spec: FederationSpec, seed: int) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(seed)

    def decide(self, assignment: RoundAssignment) -> Decision:
        return Decision.accept()

    def train(self, assignment: RoundAssignment, global_vector: NDArray[np.float64]) -> LocalResult:
        local = global_vector + self.rng.normal(0.0, 1e-3, size=global_vector.shape)
        labelled = dict.fromkeys(self.spec.task_names, 10)
        contribution = local_contribution(
            self.spec, global_vector, local, train_samples=10, labelled=labelled
        )
        return LocalResult(contribution=contribution)


@dataclass
class LightAgent:
    """One enrolled institution, run by a thread calling `RoundParticipant.step()`."""

    name: str
    participant: RoundParticipant
    client: CoordinatorClient
    errors: list[str] = field(default_factory=list)

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                result = self.participant.step()
                # Pushed: the next step waits in the coordinator until the round moves on.
                wait = 0.0 if self.participant.pushed else min(result.poll_after_s, AGENT_POLL_S)
            except ClientError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                wait = AGENT_POLL_S
            stop.wait(wait)


def enroll(
    base_url: str,
    admin: AdminClient,
    federation: str,
    name: str,
    spec: FederationSpec,
    long_poll_s: float,
) -> LightAgent:
    invitation = admin.invite(federation, name, list(spec.task_names))
    key = Ed25519PrivateKey.generate()
    token = invitation.enrollment_token
    response = httpx.post(
        f"{base_url}/agent/v1/enroll",
        json={
            "token": token,
            "public_key": _b64(key.public_key().public_bytes_raw()),
            "proof": _b64(enrollment_proof(key, token)),
        },
        timeout=30,
    )
    response.raise_for_status()
    profile = AgentProfile.model_validate_json(response.content)
    client = CoordinatorClient(base_url, key, profile.key_id, retries=3, backoff_s=0.1)
    work = TrivialWork(spec, seed=profile.institution_id)
    # A plain benchmark federation pins mode 'plain': these agents opt in (loopback only).
    policy = RoundPolicy(
        profile, key.public_key().public_bytes_raw(), allow_unmasked=spec.secagg.mode == "plain"
    )
    participant = RoundParticipant(
        client, key, InMemoryRoundStateStore(), work, policy=policy, long_poll_s=long_poll_s
    )
    return LightAgent(name, participant, client)


def bench_spec(
    base: dict[str, Any], name: str, n: int, mode: str, hidden: list[int] | None
) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(json.dumps(base))
    spec["name"] = name
    spec["dp"] = {"enabled": False}
    spec.setdefault("secagg", {})["mode"] = mode
    spec["schedule"] = {"min_participants": n, "max_participants": n, "stage_timeout_s": 120.0}
    if hidden:
        spec["model"]["encoder"]["hidden"] = hidden
    return spec


@dataclass(frozen=True)
class Timing:
    n: int
    mode: str
    seconds: list[float]
    vector_length: int
    #: stage -> its duration in each timed round
    stages: dict[str, list[float]] = field(default_factory=dict)
    #: (stage, opened, closed) of every timed round, wall-clock seconds since the epoch
    windows: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def run_rounds(
    base_url: str, admin: AdminClient, federation: str, rounds: int
) -> tuple[list[float], int, dict[str, list[float]], list[tuple[str, float, float]]]:
    seconds: list[float] = []
    stages: dict[str, list[float]] = {}
    windows: list[tuple[str, float, float]] = []
    length = 0
    for _ in range(rounds):
        started = admin.start_next_round(federation)
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        current = started
        while not current.finished:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"round {started.number} of {federation} stuck at {current.stage}"
                )
            time.sleep(0.05)
            current = admin.round(federation, started.number)
        if current.stage != "completed":
            raise RuntimeError(
                f"round {started.number} of {federation} failed: {current.failure_reason}"
            )
        if current.created_at is None or current.finished_at is None:
            raise RuntimeError(f"round {started.number} of {federation} has no timestamps")
        seconds.append((current.finished_at - current.created_at).total_seconds())
        for stage in current.stages:
            if stage.closed_at is not None and stage.stage != "scheduled":
                duration = (stage.closed_at - stage.opened_at).total_seconds()
                stages.setdefault(stage.stage, []).append(duration)
                windows.append(
                    (stage.stage, stage.opened_at.timestamp(), stage.closed_at.timestamp())
                )
        length = current.vector_length or 0
    return seconds, length, stages, windows


def measure(
    base_url: str,
    admin: AdminClient,
    base: dict[str, Any],
    n: int,
    mode: str,
    rounds: int,
    hidden: list[int] | None,
    long_poll_s: float,
) -> Timing:
    federation = f"latency_{mode}_{n}"
    spec_raw = bench_spec(base, federation, n, mode, hidden)
    admin.create_federation(spec_raw)
    spec = FederationSpec.model_validate(spec_raw)
    agents = [
        enroll(base_url, admin, federation, f"site_{i:03d}", spec, long_poll_s) for i in range(n)
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=a.loop, args=(stop,), daemon=True) for a in agents]
    for thread in threads:
        thread.start()
    try:
        # One untimed round first: it creates model version 0 and warms every cache.
        run_rounds(base_url, admin, federation, 1)
        seconds, length, stages, windows = run_rounds(base_url, admin, federation, rounds)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for agent in agents:
            agent.client.close()
    errors = [e for a in agents for e in a.errors]
    if errors:
        console.print(
            f"[yellow]{len(errors)} agent request errors (retried), first: {errors[0]}[/yellow]"
        )
    return Timing(n, mode, seconds, length, stages, windows)


STAGE_ORDER = (
    "advertise_keys",
    "share_keys",
    "masked_input",
    "consistency_check",
    "unmasking",
    "aggregating",
)


def profile_table(timing: Timing, server: dict[str, Any], agents: StackSampler) -> Table:
    """Per stage of the timed rounds (mean over them): wall time, the coordinator's time
    with no thread busy, and busy thread-seconds by kind of work in the coordinator and in
    the agents' threads."""
    rounds = len(timing.seconds)
    windows = [w for w in timing.windows if w[0] in STAGE_ORDER]
    cuts = {
        "coordinator": busy_by_window([tuple(x) for x in server["timeline"]], windows),
        "agents": busy_by_window(agents.timeline, windows),
    }

    def mean(cut: list[Window], stage: str, value: Callable[[Window], float]) -> float:
        return float(sum(value(w) for w in cut if stage in ("round", w.label))) / rounds

    table = Table(
        title=f"n={timing.n} secure: where a round's time goes, seconds (mean of {rounds} "
        "round(s); busy = thread-seconds)"
    )
    columns = (*STAGE_ORDER, "round")
    table.add_column("")
    for stage in columns:
        table.add_column(stage.replace("_", " "), justify="right")
    server_cut = cuts["coordinator"]
    table.add_row("wall", *(f"{mean(server_cut, s, lambda w: w.seconds):.3f}" for s in columns))
    table.add_row(
        "coordinator idle (agent wait)",
        *(f"{mean(server_cut, s, lambda w: w.idle_s):.3f}" for s in columns),
    )
    for side, cut in cuts.items():
        kinds = sorted(
            {k for w in cut for k in w.busy_s},
            key=lambda k: -sum(w.busy_s[k] for w in cut if k in w.busy_s),
        )
        for kind in kinds:

            def busy(window: Window, kind: str = kind) -> float:
                return window.busy_s.get(kind, 0.0)

            table.add_row(f"{side}: {kind}", *(f"{mean(cut, s, busy):.3f}" for s in columns))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 4 and 32, one round per mode")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per n and mode")
    parser.add_argument(
        "--ns", type=str, default=None, help="comma-separated n values (default 4,16,32)"
    )
    parser.add_argument("--hidden", type=str, default=None, help="encoder widths, e.g. 256,128")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the coordinator's and the agents' stacks; a breakdown per stage",
    )
    parser.add_argument(
        "--poll",
        action="store_true",
        help=f"agents poll every {AGENT_POLL_S} s instead of long polling (the old way)",
    )
    args = parser.parse_args(argv)
    long_poll_s = 0.0 if args.poll else LONG_POLL_S
    # The lightweight agents' own warnings (e.g. a report arriving after a plain round
    # closed) are not what this benchmark measures.
    logging.getLogger("agent").setLevel(logging.ERROR)
    ns = (
        [int(x) for x in args.ns.split(",")]
        if args.ns
        else ([4, 32] if args.quick else [4, 16, 32])
    )
    rounds = args.rounds or (1 if args.quick else 3)
    hidden = [int(x) for x in args.hidden.split(",")] if args.hidden else None
    base = load_example(locate_example()).spec

    with TemporaryDirectory(prefix="fmtl-latency-") as folder:
        run_dir = Path(folder)
        port = free_port()
        env = child_environment(
            {
                "FMTL_STATE_DIR": str(run_dir / "coordinator"),
                "FMTL_HOST": "127.0.0.1",
                "FMTL_PORT": str(port),
                "FMTL_LOG_LEVEL": "warning",
                "FMTL_TICK_INTERVAL_S": "1",
                "FMTL_WORK_POLL_INTERVAL_S": str(AGENT_POLL_S),
                "FMTL_ALLOW_PLAIN_AGGREGATION": "true",
            }
        )
        children = Children(run_dir / "logs")
        token = run_once(
            "create-token",
            fmtl_command("coordinator", "create-token", "--role", "admin", "--name", "latency"),
            env,
            run_dir / "logs",
        ).strip()
        profile_out = run_dir / "coordinator-profile.json"
        serve = (
            [
                sys.executable,
                "-m",
                "benchmarks.stack_profile",
                "--out",
                str(profile_out),
                "--",
                "coordinator",
                "serve",
            ]
            if args.profile
            else fmtl_command("coordinator", "serve")
        )
        agent_sampler = StackSampler()
        if args.profile:
            agent_sampler.start()
            env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        children.start("coordinator", serve, env)
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                children.check()
                try:
                    if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the coordinator did not become ready")
                time.sleep(0.2)
            timings: list[Timing] = []
            with AdminClient(base_url, token) as admin:
                for n in ns:
                    for mode in ("secure", "plain"):
                        with console.status(f"n={n} {mode}: {rounds} round(s)..."):
                            timing = measure(
                                base_url, admin, base, n, mode, rounds, hidden, long_poll_s
                            )
                        timings.append(timing)
                        console.print(
                            f"n={n:>3} {mode:>6}: median {timing.median:.2f} s over "
                            f"{len(timing.seconds)} round(s) {[f'{s:.2f}' for s in timing.seconds]}"
                        )
        finally:
            children.stop_all()
            if args.profile:
                agent_sampler.stop()
        server_profile = json.loads(profile_out.read_text()) if args.profile else None

    table = Table(title="Round wall time on loopback (creation to model stored), seconds")
    for column in ("n", "vector length", "secure (median)", "plain (median)", "secure / plain"):
        table.add_column(column, justify="right")
    ratios: dict[int, float] = {}
    for n in ns:
        secure = next(t for t in timings if t.n == n and t.mode == "secure")
        plain = next(t for t in timings if t.n == n and t.mode == "plain")
        ratios[n] = secure.median / plain.median
        table.add_row(
            str(n),
            str(secure.vector_length or "?"),
            f"{secure.median:.2f}",
            f"{plain.median:.2f}",
            f"{ratios[n]:.2f}",
        )
    console.print(table)
    order = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking")
    breakdown = Table(title="Median stage durations, seconds")
    breakdown.add_column("n / mode")
    for stage in (*order, "aggregating"):
        breakdown.add_column(stage, justify="right")
    for timing in timings:
        breakdown.add_row(
            f"{timing.n} {timing.mode}",
            *(
                f"{statistics.median(timing.stages[stage]):.2f}" if stage in timing.stages else "-"
                for stage in (*order, "aggregating")
            ),
        )
    console.print(breakdown)
    if server_profile is not None:
        for timing in timings:
            if timing.mode == "secure":
                Console(width=200).print(profile_table(timing, server_profile, agent_sampler))
    how = f"polling every {AGENT_POLL_S} s" if args.poll else f"long polls of {LONG_POLL_S:g} s"
    console.print(
        f"agents: threads driving RoundParticipant with a trivial LocalWork, {how}; "
        f"coordinator: embedded (SQLite, in-process worker); "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    headline = 32 if 32 in ratios else max(ratios)  # 32 unless --ns left it out
    print(f"round_latency: n={headline} secure_vs_plain={ratios[headline]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
