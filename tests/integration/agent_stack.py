"""Real agents against a real coordinator: the pieces the agent integration tests share.

A `Stack` is a coordinator on loopback, either embedded (`fmtl coordinator serve` on a
SQLite file with its in-process worker) or the production one (PostgreSQL, Redis, a
`worker` and a `beat` process, from tests/integration/conftest.py). `Hospital` is one
institution of the heart-disease example: its agent.toml, `fmtl agent enroll` and
`fmtl agent run` as separate processes, and what it logged (JSON lines) and stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

from tests.integration.conftest import (
    SERVER_START_DEADLINE_S,
    CoordinatorEnv,
    _log_tail,
    _stop,
    free_port,
    wait_until,
)

EXAMPLE: Final = Path(__file__).resolve().parents[2] / "examples" / "heart_disease"
HOSPITALS: Final = ("cleveland", "hungarian", "switzerland", "va")
#: Every round of these tests ends well within this (4 agents, a few training steps each).
ROUND_DEADLINE_S: Final = 150.0
#: Coordinator settings shared by both stacks: a fast tick and quick polling.
FAST_COORDINATOR: Final = {
    "FMTL_TICK_INTERVAL_S": "1",
    "FMTL_WORK_POLL_INTERVAL_S": "0.2",
    "FMTL_LOG_LEVEL": "warning",
}


@dataclass
class Stack:
    """A running coordinator, an admin's headers, and the admin's roster key."""

    kind: str
    url: str
    admin: dict[str, str]
    roster_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def roster_fingerprint(self) -> str:
        """What institutions pin at enrollment (`fmtl agent enroll --roster-key`)."""
        from fmtl.admin.roster import public_fingerprint

        return public_fingerprint(self.roster_key)

    def publish_roster(self, federation: str) -> int:
        """Sign and publish the next roster version (every enrolled institution)."""
        from fmtl.admin.client import AdminClient
        from fmtl.admin.roster import publish_next

        token = self.admin["Authorization"].removeprefix("Bearer ")
        with AdminClient(self.url, token) as client:
            return publish_next(client, federation, self.roster_key)

    def post(self, path: str, body: object | None = None) -> dict[str, Any]:
        answer = httpx.post(self.url + path, json=body, headers=self.admin, timeout=30)
        assert answer.status_code in (200, 201), answer.text
        document: dict[str, Any] = answer.json()
        return document

    def get(self, path: str) -> Any:
        answer = httpx.get(self.url + path, headers=self.admin, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def model(self, federation: str, version: int) -> NDArray[np.float64]:
        answer = httpx.get(
            f"{self.url}/api/v1/federations/{federation}/models/{version}/vector",
            headers=self.admin,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        return np.frombuffer(answer.content, dtype="<f4").astype(np.float64)

    def create_federation(
        self, name: str, *, stage_timeout_s: float, noise_multiplier: float | None = 1.0
    ) -> dict[str, Any]:
        """The heart-disease federation with short stage deadlines (and a fixed σ, so that
        agents need no noise search before their first round)."""
        spec = json.loads((EXAMPLE / "federation.json").read_text())
        spec["name"] = name
        spec["schedule"] = {
            "min_participants": 3,
            "max_participants": 4,
            "stage_timeout_s": stage_timeout_s,
        }
        spec["dp"]["noise_multiplier"] = noise_multiplier
        spec["dp"]["planned_rounds"] = 5
        self.post("/api/v1/federations", spec)
        return dict(spec)

    def invite(self, federation: str, name: str, tasks: list[str]) -> str:
        invited = self.post(
            f"/api/v1/federations/{federation}/institutions", {"name": name, "tasks": tasks}
        )
        return str(invited["enrollment_token"])

    def start_round(self, federation: str) -> int:
        return int(self.post(f"/api/v1/federations/{federation}/rounds")["number"])

    def round(self, federation: str, number: int) -> dict[str, Any]:
        found: dict[str, Any] = self.get(f"/api/v1/federations/{federation}/rounds/{number}")
        return found

    def wait_round(self, federation: str, number: int, stage: str = "completed") -> dict[str, Any]:
        latest: dict[str, Any] = {}

        def reached() -> bool:
            nonlocal latest
            latest = self.round(federation, number)
            return bool(latest["stage"] in (stage, "completed", "failed"))

        wait_until(reached, ROUND_DEADLINE_S, f"round {number} to reach {stage}")
        return latest

    def institution_ids(self, federation: str) -> dict[int, str]:
        found = self.get(f"/api/v1/federations/{federation}/institutions")
        return {int(item["id"]): str(item["name"]) for item in found}


def agent_env(**extra: str) -> dict[str, str]:
    """The environment of an agent process: none of the coordinator's FMTL_* settings."""
    base = {key: value for key, value in os.environ.items() if not key.startswith("FMTL_")}
    # Four agents share this machine's cores: one thread each trains these small models
    # fastest (no oversubscription).
    return {**base, "OMP_NUM_THREADS": "1", **extra}


@dataclass
class Hospital:
    """One institution: its folder, agent.toml, and its agent process."""

    name: str
    folder: Path
    coordinator_url: str
    epsilon: float = 30.0
    #: The identity key's passphrase (FMTL_AGENT_KEY_PASSPHRASE), if any.
    passphrase: str | None = None
    #: Make the key beforehand (as for a Kubernetes secret) and `enroll --existing-key`.
    existing_key: bool = False
    #: The admin's roster key fingerprint, pinned at enrollment (`Stack.roster_fingerprint`).
    roster_key: str = ""
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.folder / "agent.toml"

    @property
    def tasks(self) -> list[str]:
        import tomllib

        mapping = tomllib.loads((EXAMPLE / f"mapping_{self.name}.toml").read_text())
        return list(mapping["labels"])

    def write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"""
[coordinator]
url = "{self.coordinator_url}"
timeout_s = 30

[data]
mapping = "{EXAMPLE / f"mapping_{self.name}.toml"}"

[privacy]
epsilon = {self.epsilon}
delta = 1e-5

[training]
device = "cpu"

[daemon]
poll_interval_s = 0.3
backoff_initial_s = 0.3
backoff_max_s = 3
shutdown_grace_s = 5
"""
        )

    def env(self) -> dict[str, str]:
        extra = {"FMTL_AGENT_KEY_PASSPHRASE": self.passphrase} if self.passphrase else {}
        return agent_env(**extra)

    def enroll(self, token: str) -> subprocess.Popen[str]:
        """`fmtl agent enroll` (started; `.communicate()` it)."""
        self.write_config()
        if not self.roster_key:
            pytest.fail(f"{self.name}: no roster key to pin (Hospital.roster_key)")
        args = ["--roster-key", self.roster_key]
        if self.existing_key:
            from agent.identity import generate_identity, save_identity

            passphrase = self.passphrase.encode() if self.passphrase else None
            save_identity(self.folder / "state" / "identity.key", generate_identity(), passphrase)
            args.append("--existing-key")
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fmtl",
                "agent",
                "enroll",
                "--config",
                str(self.config),
                "--token",
                token,
                *args,
            ],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def start(self, *args: str) -> None:
        """`fmtl agent run --log-format json ...` in the background."""
        self.runs += 1
        log = self.folder / f"run-{self.runs}.log"
        self.logs.append(log)
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fmtl",
                    "agent",
                    "run",
                    "--config",
                    str(self.config),
                    "--log-format",
                    "json",
                    "--no-progress",
                    *args,
                ],
                env=self.env(),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: the agent's machine crashes."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def wait_exit(self, deadline_s: float = ROUND_DEADLINE_S) -> int:
        assert self.process is not None
        try:
            return self.process.wait(deadline_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"agent {self.name} did not exit:\n{self.log_tail()}", pytrace=False)

    def events(self, run: int | None = None) -> list[dict[str, Any]]:
        """The JSON log events of one run (default: all runs)."""
        logs = self.logs if run is None else [self.logs[run - 1]]
        out: list[dict[str, Any]] = []
        for log in logs:
            with contextlib.suppress(FileNotFoundError):
                for line in log.read_text(errors="replace").splitlines():
                    if line.startswith("{"):
                        with contextlib.suppress(json.JSONDecodeError):
                            out.append(json.loads(line))
        return out

    def logged(self, name: str, **fields: object) -> bool:
        return any(
            e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            for e in self.events()
        )

    def log_tail(self) -> str:
        return "\n".join(_log_tail(log) for log in self.logs[-1:])

    def status(self) -> dict[str, Any]:
        """`fmtl agent status --json` (in this process: the same command, without the
        start-up time of another interpreter)."""
        from typer.testing import CliRunner

        from agent.cli import app

        done = CliRunner().invoke(app, ["status", "--config", str(self.config), "--json"])
        assert done.exit_code == 0, done.stderr
        document: dict[str, Any] = json.loads(done.stdout)
        return document


def start_all(hospitals: list[Hospital], *args: str) -> None:
    """Start every hospital's agent and wait until each is up (data loaded, polling)."""
    for hospital in hospitals:
        hospital.start(*args)
    for hospital in hospitals:

        def up(hospital: Hospital = hospital) -> bool:
            if hospital.process is not None and hospital.process.poll() is not None:
                pytest.fail(f"agent {hospital.name} exited:\n{hospital.log_tail()}")
            return hospital.logged("started")

        wait_until(up, ROUND_DEADLINE_S, f"agent {hospital.name} to start")


def enroll_all(
    stack: Stack, federation: str, hospitals: list[Hospital], *, cli: bool = False
) -> None:
    """Invite every hospital and enroll its agent: with `fmtl agent enroll` processes (in
    parallel) when `cli`, else with the same enrollment code in this process (quicker)."""
    tokens = {h.name: stack.invite(federation, h.name, h.tasks) for h in hospitals}
    for hospital in hospitals:
        hospital.roster_key = stack.roster_fingerprint
    if cli:
        running = [(h, h.enroll(tokens[h.name])) for h in hospitals]
        for hospital, process in running:
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, f"{hospital.name}: {err}"
            assert f"enrolled '{hospital.name}'" in out
    else:
        from agent.config import AgentEnvironment, load_config
        from agent.enrollment import enroll

        for hospital in hospitals:
            hospital.write_config()
            config = load_config(hospital.config, environment=AgentEnvironment(key_passphrase=None))
            enroll(
                config,
                coordinator=hospital.coordinator_url,
                token=tokens[hospital.name],
                roster_key=hospital.roster_key,
            )
    # The admin signs the roster of the institutions just enrolled.
    stack.publish_roster(federation)


@contextlib.contextmanager
def embedded_coordinator(tmp_path: Path) -> Iterator[Stack]:
    """`fmtl coordinator serve` with every default: SQLite, blobs and worker in-process."""
    env = agent_env(
        FMTL_STATE_DIR=str(tmp_path / "coordinator"),
        FMTL_HOST="127.0.0.1",
        FMTL_PORT=str(free_port()),
        **FAST_COORDINATOR,
    )
    log = tmp_path / "coordinator.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "fmtl", "coordinator", "serve"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{env['FMTL_PORT']}"

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the coordinator exited ({process.returncode}):\n{_log_tail(log)}")
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, SERVER_START_DEADLINE_S, "the embedded coordinator's /readyz")
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "fmtl",
                "coordinator",
                "create-token",
                "--role",
                "admin",
                "--name",
                "agent-tests",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().split()[0]
        yield Stack("sqlite", url, {"Authorization": f"Bearer {token}"})
    finally:
        _stop(process)


@contextlib.contextmanager
def open_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """The stack `request.param` names: "sqlite" (embedded) or "postgres" (PostgreSQL,
    Redis, a worker and a beat process; the fixtures of tests/integration/conftest.py)."""
    if request.param == "sqlite":
        with embedded_coordinator(tmp_path) as embedded:
            yield embedded
        return
    env: CoordinatorEnv = request.getfixturevalue("coordinator_env")
    env.variables.update(FAST_COORDINATOR)
    server = request.getfixturevalue("coordinator_server")
    request.getfixturevalue("celery_worker")
    token = request.getfixturevalue("admin_token")
    beat_log = tmp_path / "beat.log"
    with beat_log.open("wb") as sink:
        beat = subprocess.Popen(
            [sys.executable, "-m", "fmtl", "coordinator", "beat"],
            env=env.process_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Stack("postgres", server.url, {"Authorization": f"Bearer {token}"})
    finally:
        _stop(beat)


class TamperingProxy:
    """A loopback HTTP proxy to the coordinator that flips one bit of every masked-update
    upload passing through it: the network between one agent and the coordinator is hostile."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tampered = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "PUT" and "/uploads/" in self.path and body:
                    changed = bytearray(body)
                    changed[-1] ^= 0x01
                    body = bytes(changed)
                    proxy.tampered += 1
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in {"host", "connection"}
                }
                answer = httpx.request(
                    self.command,
                    proxy.upstream + self.path,
                    content=body,
                    headers=headers,
                    timeout=60,
                )
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in {"content-length", "transfer-encoding", "connection"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TamperingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
