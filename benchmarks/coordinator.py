"""Coordinator throughput on loopback with the real stack: PostgreSQL, Redis, `fmtl coordinator
serve` and `worker` processes, and n in-process agents speaking the signed HTTP API.

Measured in one run:

- **ingest**: MB/s of masked-update uploads (`PUT .../masked-update`: signature check,
  streamed into the blob store while hashed, size-checked, recorded), summed over the n
  uploads of the round, sequential from one client;
- **aggregate**: the round's aggregation stage as the coordinator recorded it (from the close
  of unmasking to the stored model version: unmask plan, the sliced unmasking tasks reading
  every upload, decoding, applying FedAvg, storing the model), against **memsum**, summing
  the same n masked vectors already in memory (numpy, uint32), in the same run.

Before the measured round, two rounds of a small federation (3 agents, 3 slices) warm the
worker processes up, as a worker that has served rounds before is: the first round a fresh
worker process aggregates also pays its imports and SQLAlchemy's statement compilation
(their aggregation times are printed as well). With `--profile` no worker process runs: the
benchmark aggregates the rounds itself and prints where the measured one's time goes
(benchmarks/aggregation_profile.py); `--profile-out FILE` also writes the cProfile stats.

    python benchmarks/coordinator.py                # n = 50, d ~ 1e6, blobs in a local folder
    python benchmarks/coordinator.py --quick        # n = 10, d ~ 1e5
    python benchmarks/coordinator.py --blobs s3     # blobs in an S3-compatible store
                                                    # (SeaweedFS on loopback, dev extra)
    python benchmarks/coordinator.py --profile      # where aggregation's time goes

The last line is `coordinator: ingest_mb_s=<x.x> aggregate_vs_memsum=<y.yy>`. PostgreSQL
and Redis come from FMTL_TEST_DATABASE_URL / FMTL_TEST_REDIS_URL (defaults: 127.0.0.1).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import Progress

# Run as `python benchmarks/coordinator.py`, this file's folder comes first on sys.path and
# its name would shadow the `coordinator` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0] or ".").resolve() == _HERE:
    sys.path[0] = str(_HERE.parent)

from benchmarks.aggregation_profile import (  # noqa: E402 - after the path fix
    AggregationProfile,
    Handoffs,
    InProcessAggregator,
    handoffs,
    print_profile,
    round_id_of,
)

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
HIDDEN = (64, 32)
# The warm-up federation: 3 slices' worth of coordinates, the fewest agents a round takes.
WARMUP_N, WARMUP_D, WARMUP_ROUNDS = 3, 3 * 262_144, 2
SLICE_LEASE_S = 120.0  # FMTL_SLICE_LEASE_S as the stack runs (the default)

console = Console(stderr=True)


def input_dim_for(d: int) -> int:
    """The MLP input width whose update layout has about d coordinates."""
    fixed = HIDDEN[0] + HIDDEN[0] * HIDDEN[1] + HIDDEN[1] + (HIDDEN[1] + 1) + 4
    return max(1, round((d - fixed) / HIDDEN[0]))


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    log: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *arguments: str) -> subprocess.Popen[bytes]:
        """Start `fmtl coordinator <arguments>` on this stack (stopped when the stack is)."""
        with self.log.open("ab") as log:
            process = subprocess.Popen(  # noqa: S603 - our own command line, no user input
                [sys.executable, "-m", "fmtl", "coordinator", *arguments],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def start_worker(self, concurrency: int) -> subprocess.Popen[bytes]:
        return self.start("worker", "--concurrency", str(concurrency))

    def settings(self) -> Any:
        """The coordinator's Settings as the stack's processes read them."""
        from coordinator.settings import ENV_PREFIX, Settings

        values = {
            key.removeprefix(ENV_PREFIX).lower(): value
            for key, value in self.env.items()
            if key.startswith(ENV_PREFIX)
        }
        return Settings(**values)

    def wait_for_workers(self, count: int, seconds: float = 180) -> None:
        """Until `count` worker processes (`worker` commands) answer a ping on the broker."""
        from coordinator.worker import create_celery

        app = create_celery(self.settings())

        def answered() -> bool:
            return len(app.control.ping(timeout=1.0) or []) >= count

        _wait(answered, seconds, f"{count} worker processes")

    def admin_token(self) -> str:
        made = subprocess.run(
            [sys.executable, "-m", "fmtl", "coordinator", "create-token", "--role", "admin"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return made.stdout.strip()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


@contextmanager
def real_stack(
    workers: int,
    blobs: str = "local",
    *,
    beat: bool = False,
    settings: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """A fresh PostgreSQL database, then `serve` and (unless `workers` is 0) one `worker`
    process of `workers` processes, and with `beat` a `beat` process, on loopback; with
    `blobs="s3"` a SeaweedFS on loopback holds the blobs (no folder shared by the processes).
    `settings` adds or overrides FMTL_* variables."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    import migrations

    admin_url = os.environ.get("FMTL_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("FMTL_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    name = f"fmtl_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    state = Path(tempfile.mkdtemp(prefix="fmtl-bench-"))
    database_url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("FMTL_")}
    env.update(
        {
            "FMTL_DATABASE_URL": database_url,
            "FMTL_BROKER_URL": redis_url,
            "FMTL_QUEUE": f"fmtl-bench-{secrets.token_hex(4)}",
            "FMTL_STATE_DIR": str(state),
            "FMTL_TOKEN_PEPPER": secrets.token_urlsafe(32),
            "FMTL_LOG_LEVEL": "warning",
            "FMTL_HOST": "127.0.0.1",
            "FMTL_PORT": str(port),
            "FMTL_WORK_POLL_INTERVAL_S": "0",
        }
    )
    env.update(settings or {})
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env, log=state / "processes.log")
    object_store = None
    try:
        if blobs == "s3":
            from tests.seaweedfs import SeaweedS3

            object_store = SeaweedS3.start(state / "seaweedfs", bucket="fmtl-bench")
            env.update(object_store.env)
        migrations.upgrade(database_url)
        stack.start("serve")
        if workers > 0:
            stack.start_worker(workers)
        if beat:
            stack.start("beat")

        def ready() -> bool:
            try:
                return httpx.get(f"{stack.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            _wait(ready, 300, "the coordinator")
        except SystemExit:
            tail = stack.log.read_text(errors="replace").splitlines()[-20:]
            console.print("\n".join(["the coordinator's processes said:", *tail]))
            raise
        yield stack
    finally:
        for process in stack.processes:
            process.terminate()
        for process in stack.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        if object_store is not None:
            object_store.stop()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(state, ignore_errors=True)


class DeltaWork:
    """Local work that adds a fixed small random vector (no training: we time the service)."""

    def __init__(self, spec: Any, seed: int) -> None:
        from federation.layout import ParameterLayout

        self.spec = spec
        length = ParameterLayout.model(spec).length
        self.delta = np.random.default_rng(seed).normal(0.0, 0.01, length)

    def decide(self, assignment: Any) -> Any:
        from agent.local_work import Decision

        return Decision.accept()

    def train(self, assignment: Any, global_vector: NDArray[np.float64]) -> Any:
        from agent.local_work import LocalResult
        from federation.aggregation import local_contribution

        labelled = dict.fromkeys(self.spec.task_names, 10)
        contribution = local_contribution(
            self.spec,
            global_vector,
            global_vector + self.delta,
            train_samples=10,
            labelled=labelled,
        )
        return LocalResult(contribution=contribution)


@dataclass
class Measured:
    ingest_mb_s: float
    aggregate_s: float
    memsum_s: float
    upload_bytes: float
    warmup_s: list[float]
    handoffs: Handoffs | None = None
    profile: AggregationProfile | None = None


@dataclass
class Enrolled:
    """An enrolled agent: its identity key and the key id the coordinator gave it."""

    key: Any  # Ed25519PrivateKey
    key_id: str
    profile: dict[str, Any]  # the enrollment answer (AgentProfile)

    def policy(self) -> Any:
        """The agent's round policy from what it pinned at enrollment."""
        from agent.round_policy import RoundPolicy
        from federation.wire import AgentProfile

        return RoundPolicy(
            AgentProfile.model_validate(self.profile), self.key.public_key().public_bytes_raw()
        )


def enroll_agents(
    stack: Stack, http: httpx.Client, federation: str, tasks: list[str], n: int
) -> list[Enrolled]:
    """Invite n institutions (admin API) and enroll an agent for each (signed proof)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.http_signing import enrollment_proof

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    enrolled = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("enrolling agents", total=n)
        for i in range(n):
            invited = http.post(
                f"/api/v1/federations/{federation}/institutions",
                json={"name": f"site_{i}", "tasks": tasks},
            )
            assert invited.status_code == 201, invited.text
            key = Ed25519PrivateKey.generate()
            token = invited.json()["enrollment_token"]
            answer = httpx.post(
                f"{stack.url}/agent/v1/enroll",
                json={
                    "token": token,
                    "public_key": b64(key.public_key().public_bytes_raw()),
                    "proof": b64(enrollment_proof(key, token)),
                },
                timeout=30,
            )
            assert answer.status_code in (200, 201), answer.text
            enrolled.append(Enrolled(key, answer.json()["key_id"], answer.json()))
            progress.advance(task)
    return enrolled


def _federation(name: str, n: int, d: int) -> dict[str, Any]:
    return {
        "name": name,
        "tasks": [{"name": "disease", "kind": "binary"}, {"name": "stage", "kind": "binary"}],
        "model": {"encoder": {"kind": "mlp", "input_dim": input_dim_for(d), "hidden": HIDDEN}},
        "schedule": {"min_participants": 3, "max_participants": n, "stage_timeout_s": 3600},
        "dp": {"enabled": False},
    }


def _drive(
    http: httpx.Client,
    federation: str,
    parts: list[Any],
    aggregator: InProcessAggregator | None = None,
    profile_out: Path | None = None,
) -> tuple[int, dict[str, Any], AggregationProfile | None]:
    """Run one round of `federation` with these participants, stepping them in turn. With an
    aggregator (no worker process), the benchmark aggregates the round itself: under
    cProfile when `profile_out` is given (Path("") = profile without writing the stats)."""
    started = http.post(f"/api/v1/federations/{federation}/rounds")
    assert started.status_code == 201, started.text
    number = started.json()["number"]
    found = None
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{federation}: running a round", total=None)
        while True:
            for part in parts:
                part.step()
            state = http.get(f"/api/v1/federations/{federation}/rounds/{number}").json()
            progress.update(task, description=f"{federation}: round stage {state['stage']}")
            if state["stage"] in ("completed", "failed"):
                break
            if aggregator is not None and state["stage"] == "aggregating":
                database_url = aggregator.runtime.settings.resolved_database_url
                round_id = round_id_of(database_url, federation, number)
                if profile_out is None:
                    aggregator.aggregate(round_id)
                else:
                    found = aggregator.profile(round_id, profile_out if profile_out.name else None)
            time.sleep(0.05)
    if state["stage"] != "completed":
        raise SystemExit(f"the round failed: {state['failure_reason']}")
    return number, state, found


def run(
    n: int,
    d: int,
    workers: int,
    blobs: str = "local",
    profile: bool = False,
    profile_out: Path | None = None,
) -> Measured:
    """A warm-up round of a small federation, then the measured round. With `profile`, no
    worker process: the benchmark aggregates both rounds itself, the second under cProfile
    (benchmarks/aggregation_profile.py), instead of timing the workers."""
    from agent.coordinator_client import CoordinatorClient
    from agent.round_participant import RoundParticipant
    from agent.round_state import InMemoryRoundStateStore
    from federation.round_api import Receipt
    from federation.spec import FederationSpec
    from privacy.secagg import MaskedInput

    uploads: list[tuple[int, float]] = []
    vectors: list[NDArray[np.uint32]] = []  # the accepted uploads, for the in-memory sum

    class TimedClient(CoordinatorClient):
        def upload_masked_update(self, number: int, masked_input: bytes) -> Receipt:
            began = time.perf_counter()
            receipt = super().upload_masked_update(number, masked_input)
            uploads.append((len(masked_input), time.perf_counter() - began))
            if receipt.outcome.value == "accepted":
                vectors.append(MaskedInput.from_bytes(masked_input).vector.copy())
            return receipt

    def participants(name: str, spec: FederationSpec, count: int, timed: bool) -> list[Any]:
        client_type = TimedClient if timed else CoordinatorClient
        return [
            RoundParticipant(
                client_type(stack.url, agent.key, agent.key_id, timeout_s=300),
                agent.key,
                InMemoryRoundStateStore(),
                DeltaWork(spec, i),
                policy=agent.policy(),
            )
            for i, agent in enumerate(enroll_agents(stack, http, name, spec.task_names, count))
        ]

    with real_stack(0 if profile else workers, blobs) as stack:
        admin = {"Authorization": f"Bearer {stack.admin_token()}"}
        http = httpx.Client(base_url=stack.url, headers=admin, timeout=120)
        aggregator = InProcessAggregator(stack.settings()) if profile else None
        # Warm-up: a worker process that has served rounds before has imported what
        # aggregation needs and compiled its SQL statements; a fresh one pays that once.
        warm_document = _federation("warmup", WARMUP_N, WARMUP_D)
        assert http.post("/api/v1/federations", json=warm_document).status_code == 201
        warm_spec = FederationSpec.model_validate(warm_document)
        warm_parts = participants("warmup", warm_spec, WARMUP_N, timed=False)
        cold_s = []
        for _ in range(WARMUP_ROUNDS):
            _, warm_state, _ = _drive(http, "warmup", warm_parts, aggregator)
            cold_s.append(stage_seconds(warm_state, "aggregating"))
        document = _federation("bench", n, d)
        assert http.post("/api/v1/federations", json=document).status_code == 201
        spec = FederationSpec.model_validate(document)
        parts = participants("bench", spec, n, timed=True)
        number, state, found = _drive(
            http, "bench", parts, aggregator, (profile_out or Path("")) if profile else None
        )
        aggregate_s = stage_seconds(state, "aggregating")
        database_url = stack.env["FMTL_DATABASE_URL"]
        round_id = round_id_of(database_url, "bench", number)
        cut = None if profile else handoffs(database_url, round_id, SLICE_LEASE_S)
        # The same n masked vectors, summed in memory.
        memsum_s = min(_memsum(vectors) for _ in range(5))
        http.close()
    total_bytes = sum(size for size, _ in uploads)
    total_s = sum(seconds for _, seconds in uploads)
    return Measured(
        total_bytes / total_s / 1e6, aggregate_s, memsum_s, total_bytes / n, cold_s, cut, found
    )


def stage_seconds(state: dict[str, Any], stage: str) -> float:
    """How long a stage of a round (the admin API's answer) was open."""
    record = next(s for s in state["stages"] if s["stage"] == stage)
    opened = datetime.fromisoformat(record["opened_at"])
    closed = datetime.fromisoformat(record["closed_at"])
    return (closed - opened).total_seconds()


def _memsum(vectors: list[NDArray[np.uint32]]) -> float:
    began = time.perf_counter()
    total = np.zeros_like(vectors[0])
    for vector in vectors:
        np.add(total, vector, out=total)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 10, d ~ 1e5")
    parser.add_argument("--n", type=int, default=None, help="participants (default 50)")
    parser.add_argument("--d", type=int, default=None, help="update length (default 1e6)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="no worker process: aggregate in the benchmark under cProfile and print where"
        " the time goes (the aggregate figure is then one process, slices in sequence)",
    )
    parser.add_argument(
        "--profile-out", type=Path, default=None, help="with --profile: write the cProfile stats"
    )
    parser.add_argument(
        "--blobs", choices=("local", "s3"), default="local", help="where the blobs live"
    )
    args = parser.parse_args()
    n = args.n or (10 if args.quick else 50)
    d = args.d or (100_000 if args.quick else 1_000_000)
    got = run(
        n, d, args.workers, args.blobs, args.profile or bool(args.profile_out), args.profile_out
    )
    workers = "none (profiled in the benchmark)" if args.profile else args.workers
    print(
        f"n={n} d~{d} upload={got.upload_bytes / 1e6:.2f} MB workers={workers} blobs={args.blobs}"
    )
    print(f"ingest: {got.ingest_mb_s:.1f} MB/s over {n} uploads")
    print(f"aggregate: {got.aggregate_s * 1e3:.0f} ms; memsum: {got.memsum_s * 1e3:.1f} ms")
    warm = ", ".join(f"{seconds * 1e3:.0f}" for seconds in got.warmup_s)
    print(f"warm-up rounds (n={WARMUP_N}, d~{WARMUP_D}) aggregated in {warm} ms")
    if got.handoffs is not None:
        cut = got.handoffs
        print(
            f"aggregate = {cut.dispatch_s * 1e3:.0f} ms to the first slice taken (Celery hand-off)"
            f" + {cut.slices_s * 1e3:.0f} ms for {cut.slices} slices"
            f" + {cut.finish_s * 1e3:.0f} ms to the stored model (finish hand-off and finish)"
        )
    if got.profile is not None:
        print_profile(got.profile, print)
    ratio = got.aggregate_s / got.memsum_s
    print(f"coordinator: ingest_mb_s={got.ingest_mb_s:.1f} aggregate_vs_memsum={ratio:.2f}")


if __name__ == "__main__":
    main()
