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

    python benchmarks/coordinator.py                # n = 50, d ~ 1e6, blobs in a local folder
    python benchmarks/coordinator.py --quick        # n = 10, d ~ 1e5
    python benchmarks/coordinator.py --blobs s3     # blobs in an S3-compatible store
                                                    # (SeaweedFS on loopback, dev extra)

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

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
HIDDEN = (64, 32)

console = Console(stderr=True)


def input_dim_for(d: int) -> int:
    """The MLP input width whose update layout has about d coordinates."""
    fixed = HIDDEN[0] + HIDDEN[0] * HIDDEN[1] + HIDDEN[1] + (HIDDEN[1] + 1) + 4
    return max(1, round((d - fixed) / HIDDEN[0]))


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


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
def real_stack(workers: int, blobs: str = "local") -> Iterator[Stack]:
    """A fresh PostgreSQL database, then `serve` and `worker` processes on loopback; with
    `blobs="s3"` a SeaweedFS on loopback holds the blobs (no folder shared by the processes)."""
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
    stack = Stack(url=f"http://127.0.0.1:{port}", env=env)
    object_store = None
    try:
        if blobs == "s3":
            from tests.seaweedfs import SeaweedS3

            object_store = SeaweedS3.start(state / "seaweedfs", bucket="fmtl-bench")
            env.update(object_store.env)
        migrations.upgrade(database_url)
        log = (state / "processes.log").open("ab")
        command = [sys.executable, "-m", "fmtl", "coordinator"]
        stack.processes.append(
            subprocess.Popen(  # noqa: S603 - our own command line, no user input
                [*command, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        )
        stack.processes.append(
            subprocess.Popen(  # noqa: S603 - our own command line, no user input
                [*command, "worker", "--concurrency", str(workers)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

        def ready() -> bool:
            try:
                return httpx.get(f"{stack.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, 120, "the coordinator")
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


def run(n: int, d: int, workers: int, blobs: str = "local") -> tuple[float, float, float, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.coordinator_client import CoordinatorClient
    from agent.http_signing import enrollment_proof
    from agent.round_participant import RoundParticipant
    from agent.round_policy import RoundPolicy
    from agent.round_state import InMemoryRoundStateStore
    from federation.round_api import Receipt
    from federation.spec import FederationSpec
    from federation.wire import AgentProfile
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

    with real_stack(workers, blobs) as stack:
        made = subprocess.run(
            [sys.executable, "-m", "fmtl", "coordinator", "create-token", "--role", "admin"],
            env=stack.env,
            capture_output=True,
            text=True,
            check=True,
        )
        admin = {"Authorization": f"Bearer {made.stdout.strip()}"}
        document = {
            "name": "bench",
            "tasks": [{"name": "disease", "kind": "binary"}, {"name": "stage", "kind": "binary"}],
            "model": {"encoder": {"kind": "mlp", "input_dim": input_dim_for(d), "hidden": HIDDEN}},
            "schedule": {"min_participants": 3, "max_participants": n, "stage_timeout_s": 3600},
            "dp": {"enabled": False},
        }
        http = httpx.Client(base_url=stack.url, headers=admin, timeout=120)
        assert http.post("/api/v1/federations", json=document).status_code == 201
        spec = FederationSpec.model_validate(document)
        parts: list[RoundParticipant] = []
        stores: list[InMemoryRoundStateStore] = []
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("enrolling agents", total=n)
            for i in range(n):
                invited = http.post(
                    "/api/v1/federations/bench/institutions",
                    json={"name": f"site_{i}", "tasks": ["disease", "stage"]},
                ).json()
                key = Ed25519PrivateKey.generate()
                token = invited["enrollment_token"]

                def b64(raw: bytes) -> str:
                    return base64.urlsafe_b64encode(raw).decode().rstrip("=")

                profile = httpx.post(
                    f"{stack.url}/agent/v1/enroll",
                    json={
                        "token": token,
                        "public_key": b64(key.public_key().public_bytes_raw()),
                        "proof": b64(enrollment_proof(key, token)),
                    },
                    timeout=30,
                ).json()
                store = InMemoryRoundStateStore()
                stores.append(store)
                client = TimedClient(stack.url, key, profile["key_id"], timeout_s=300)
                policy = RoundPolicy(
                    AgentProfile.model_validate(profile), key.public_key().public_bytes_raw()
                )
                parts.append(
                    RoundParticipant(client, key, store, DeltaWork(spec, i), policy=policy)
                )
                progress.advance(task)
        started = http.post("/api/v1/federations/bench/rounds")
        assert started.status_code == 201, started.text
        number = started.json()["number"]
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("running the round", total=None)
            while True:
                for part in parts:
                    part.step()
                state = http.get(f"/api/v1/federations/bench/rounds/{number}").json()
                progress.update(task, description=f"round stage: {state['stage']}")
                if state["stage"] in ("completed", "failed"):
                    break
                time.sleep(0.05)
        if state["stage"] != "completed":
            raise SystemExit(f"the round failed: {state['failure_reason']}")
        stages = {s["stage"]: s for s in state["stages"]}
        aggregating = stages["aggregating"]
        opened = datetime.fromisoformat(aggregating["opened_at"])
        closed = datetime.fromisoformat(aggregating["closed_at"])
        aggregate_s = (closed - opened).total_seconds()
        # The same n masked vectors, summed in memory.
        memsum_s = min(_memsum(vectors) for _ in range(5))
        http.close()
    total_bytes = sum(size for size, _ in uploads)
    total_s = sum(seconds for _, seconds in uploads)
    return total_bytes / total_s / 1e6, aggregate_s, memsum_s, total_bytes / n


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
        "--blobs", choices=("local", "s3"), default="local", help="where the blobs live"
    )
    args = parser.parse_args()
    n = args.n or (10 if args.quick else 50)
    d = args.d or (100_000 if args.quick else 1_000_000)
    ingest, aggregate_s, memsum_s, upload_bytes = run(n, d, args.workers, args.blobs)
    print(
        f"n={n} d~{d} upload={upload_bytes / 1e6:.2f} MB workers={args.workers} blobs={args.blobs}"
    )
    print(f"ingest: {ingest:.1f} MB/s over {n} uploads")
    print(f"aggregate: {aggregate_s * 1e3:.0f} ms; memsum: {memsum_s * 1e3:.1f} ms")
    print(f"coordinator: ingest_mb_s={ingest:.1f} aggregate_vs_memsum={aggregate_s / memsum_s:.2f}")


if __name__ == "__main__":
    main()
