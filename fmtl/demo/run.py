"""`fmtl demo`, the orchestration: a real coordinator and four real agents on this machine.

Everything happens the way it would between five organisations, only on loopback:

1. a run folder (`--out`) gets the coordinator's state (SQLite file, blob folder) or, with
   `--postgres/--redis`, the coordinator runs on PostgreSQL with a Redis broker and separate
   `fmtl coordinator worker` and `beat` processes;
2. `fmtl coordinator create-token` bootstraps an admin token; `fmtl coordinator serve` starts
   on a free loopback port;
3. as an admin (over the REST API, `fmtl.admin.client`), the demo creates the federation from
   the example's spec and invites each hospital with the tasks its data mapping labels;
4. each hospital gets its own folder and `agent.toml` (its data mapping, its own ε budget),
   enrolls with `fmtl agent enroll` and runs `fmtl agent run` as a separate process that
   signs every request;
5. the demo starts R rounds one after the other and follows each to its end, printing the
   task-wise results and each hospital's ε; with `--agents-drop-at STAGE` it kills one
   agent (SIGKILL) when a round reaches that stage, and restarts it after the round;
6. it records what the API reports (`record.json`) and writes the HTML report.

Child output goes to `<run>/logs/<child>.log`; a child that fails stops the demo with one
line naming its log. Ctrl-C (or SIGTERM) stops every child, agents first.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Final

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from fmtl.admin import tables
from fmtl.admin.client import AdminClient, AdminError, RoundInfo
from fmtl.admin.roster import create_roster_key, public_fingerprint, publish_next
from fmtl.demo.example import (
    Example,
    Hospital,
    agent_config,
    demo_spec,
    generate_data,
    load_example,
    locate_example,
)
from fmtl.demo.processes import (
    Child,
    ChildFailed,
    Children,
    DemoError,
    child_environment,
    fmtl_command,
    last_line_hint,
    run_once,
)
from fmtl.demo.record import DemoEvent, DemoRecord, HospitalRecord, LocalModels
from fmtl.demo.report import write_report

#: Stages an agent can be killed at, in protocol order (coordinator `RoundStage` values).
DROP_STAGES: Final = (
    "advertise_keys",
    "share_keys",
    "masked_input",
    "consistency_check",
    "unmasking",
)
ROUND_STAGE_ORDER: Final = (
    "scheduled",
    *DROP_STAGES,
    "aggregating",
    "completed",
    "failed",
)
#: How often the demo asks the coordinator where a round is (fast enough to kill an agent
#: at the start of a stage of a few seconds).
POLL_S: Final = 0.1
READY_TIMEOUT_S: Final = 120.0
#: Reading a hospital's own figures at the end (`fmtl agent status --json`: a fresh Python
#: process importing torch): on a loaded machine that took over 120 s.
STATUS_TIMEOUT_S: Final = 300.0
#: The longest a round may take: every stage at its deadline, plus aggregation.
ROUND_DEADLINE_STAGES: Final = 8
EMBEDDED_STACK: Final = "embedded (SQLite, in-process worker)"
#: The line an agent logs once it is ready to take part (`agent.daemon`, text log format).
AGENT_STARTED: Final = re.compile(r"^\S+\s+info\s+started\b", re.MULTILINE)
AGENT_START_WAIT_S: Final = 120.0
#: An agent's log line saying it finished a round's local work (`agent.work`), and the
#: fields the demo reads from it.
TRAINING_FINISHED: Final = re.compile(r"^\S+\s+info\s+training_finished\b(.*)$", re.MULTILINE)
ROUND_FIELD: Final = re.compile(r"\bround=(\d+)\b")
LOCAL_S_FIELD: Final = re.compile(r"\blocal_s=([0-9.]+)\b")
#: Where `fmtl agent enroll` reads its one-time token from.
ENROLLMENT_TOKEN_ENV: Final = "FMTL_AGENT_ENROLLMENT_TOKEN"  # noqa: S105 - a variable name
#: The last model version's parameters (model layout, little-endian float32).
FINAL_MODEL_FILE: Final = "final_model.f32"
#: `--serve`: the admin token to sign in to the console with (mode 0600, in the run folder).
ADMIN_TOKEN_FILE: Final = "admin_token"  # noqa: S105 - a file name
SERVE_POLL_S: Final = 0.5


@dataclass(frozen=True)
class DemoOptions:
    rounds: int = 10
    epsilon: float = 8.0
    agents_drop_at: str | None = None
    drop_round: int | None = None
    drop_agent: str | None = None
    postgres: str | None = None
    redis: str | None = None
    out: Path | None = None
    #: None: the spec's initial model, the mappings' splits, unseeded training (DP noise
    #: from the OS's CSPRNG). A seed makes the whole run reproducible, DP noise included:
    #: its agents run under `python -m fmtl.demo.agent` (`fmtl agent run` refuses that).
    seed: int | None = None
    #: Where the agents train: cpu (default: four agents share this machine's cores), cuda
    #: or auto.
    device: str = "cpu"
    #: A shipped example's name or an example folder (None: heart_disease).
    example: Path | str | None = None
    stage_timeout_s: float = 30.0
    local_epochs: float | None = None
    #: False: plain (unmasked) aggregation, for benchmarks only (the coordinator must allow it).
    secure: bool = True
    worker_concurrency: int = 2
    #: Keep the coordinator up after the report, with its web console, until Ctrl-C.
    serve: bool = False
    #: Hospitals that opt in to send their own validation metrics in clear (by default
    #: none: the results are federation-wide, from the secure sums).
    share_own_metrics: tuple[str, ...] = ()

    def check(self) -> None:
        if self.rounds < 1:
            raise DemoError("--rounds must be at least 1")
        if not self.epsilon > 0:
            raise DemoError("--epsilon must be positive")
        if self.device not in ("cpu", "cuda", "auto"):
            raise DemoError(f"--device must be cpu, cuda or auto (got {self.device!r})")
        if self.agents_drop_at is not None and self.agents_drop_at not in DROP_STAGES:
            raise DemoError(
                f"--agents-drop-at must be one of {', '.join(DROP_STAGES)} "
                f"(got {self.agents_drop_at!r})"
            )
        if self.drop_round is not None and not 1 <= self.drop_round <= self.rounds:
            raise DemoError(f"--drop-round must be within 1..{self.rounds}")
        if self.postgres is not None and not self.postgres.startswith(("postgres", "postgresql")):
            raise DemoError("--postgres must be a postgresql:// URL")
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://")):
            raise DemoError("--redis must be a redis:// URL")

    @property
    def dropping_round(self) -> int | None:
        if self.agents_drop_at is None:
            return None
        if self.drop_round is not None:
            return self.drop_round
        return min(2, self.rounds)

    @property
    def stack(self) -> str:
        if self.postgres is None and self.redis is None:
            return EMBEDDED_STACK
        database = "PostgreSQL" if self.postgres else "SQLite"
        broker = (
            "Redis broker, separate worker and beat processes"
            if self.redis
            else "in-process worker"
        )
        return f"{database}, {broker}"


@dataclass(frozen=True)
class DemoOutcome:
    run_dir: Path
    report: Path
    record: DemoRecord


class Interrupted(DemoError):
    """Ctrl-C or SIGTERM: the demo stopped its children and exits."""


def postgres_sqlalchemy_url(url: str) -> str:
    """postgres://... or postgresql://... with the psycopg 3 driver SQLAlchemy needs."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def default_run_dir() -> Path:
    return Path.cwd() / "fmtl-demo" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while the demo runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class _Agent:
    hospital: Hospital
    folder: Path
    config: Path
    child: Child | None = None
    starts: int = 0


@dataclass
class DemoRun:
    """One run of the demo. `run()` does everything and always stops its children."""

    options: DemoOptions
    console: Console = field(default_factory=Console)
    #: Called after each finished round (benchmarks and tests hook in here).
    on_round: Callable[[RoundInfo], None] | None = None

    def __post_init__(self) -> None:
        self.options.check()
        self.run_dir = (self.options.out or default_run_dir()).resolve()
        self.log_dir = self.run_dir / "logs"
        self.children = Children(self.log_dir)
        self.agents: dict[str, _Agent] = {}
        self.url = ""
        self.token = ""
        self.env: dict[str, str] = {}
        self.federation = ""
        self.record: DemoRecord | None = None
        #: Where a generated example's data was written (None: the example's own files).
        self.data_root: Path | None = None

    # --- the whole run ------------------------------------------------------------------

    def run(self) -> DemoOutcome:
        example = load_example(locate_example(self.options.example))
        names = [hospital.name for hospital in example.hospitals]
        if self.options.drop_agent is not None and self.options.drop_agent not in names:
            raise DemoError(
                f"--drop-agent must be one of {', '.join(names)} (got {self.options.drop_agent!r})"
            )
        unknown = sorted(set(self.options.share_own_metrics) - set(names))
        if unknown:
            raise DemoError(
                f"--share-own-metrics must name hospitals among {', '.join(names)} "
                f"(got {unknown[0]!r})"
            )
        self._prepare_folder()
        self.data_root = generate_data(example, self.run_dir)
        started = datetime.now(UTC)
        try:
            with sigterm_as_interrupt():
                return self._run(example, started)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted: stopped every child process; logs are in {self.log_dir}"
            ) from None
        finally:
            self.children.stop_all()

    def _prepare_folder(self) -> None:
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise DemoError(f"{self.run_dir} is not empty: choose another --out folder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        # The federation admin's roster key (`fmtl admin roster-key`): hospitals pin it.
        self.roster_key = create_roster_key(self.run_dir / "admin-roster.key")

    def _run(self, example: Example, started: datetime) -> DemoOutcome:
        options = self.options
        say = self.console.print
        say(
            f"[bold]fmtl demo[/bold]: {len(example.hospitals)} hospitals, {options.rounds} rounds, "
            f"ε = {options.epsilon:g} each, on {options.stack}; run folder {self.run_dir}"
        )
        with self.console.status("starting the coordinator...") as status:
            self._start_coordinator()
            status.update("creating the federation and inviting the hospitals...")
            with AdminClient(self.url, self.token) as admin:
                self.federation = self._create_federation(admin, example)
                invitations = {
                    hospital.name: admin.invite(self.federation, hospital.name, hospital.tasks)
                    for hospital in example.hospitals
                }
                status.update("enrolling the hospitals' agents...")
                self._enroll(example, {k: v.enrollment_token for k, v in invitations.items()})
                # The admin signs the roster of the enrolled hospitals (agents pinned its key).
                publish_next(admin, self.federation, self.roster_key)
                ids = {item.name: item.id for item in admin.institutions(self.federation)}
        say(
            f"coordinator at {self.url}; federation '{self.federation}'; enrolled "
            + ", ".join(f"{h.name} ({', '.join(h.tasks)})" for h in example.hospitals)
        )
        self.record = DemoRecord(
            federation=self.federation,
            stack=options.stack,
            started_at=started,
            settings=self._settings_for_report(example),
            tasks=example.task_kinds,
            hospitals=[
                HospitalRecord(
                    name=h.name,
                    tasks=h.tasks,
                    institution_id=ids.get(h.name),
                    budget_epsilon=options.epsilon,
                )
                for h in example.hospitals
            ],
        )
        for agent in self.agents.values():
            self._start_agent(agent)
        with self.console.status("waiting for the agents to load their data..."):
            self._wait_agents_started(list(self.agents.values()))
        with AdminClient(self.url, self.token) as admin:
            try:
                self._rounds(admin)
            except DemoError as exc:
                # Keep what the coordinator recorded so far: the report shows the failure.
                try:
                    self._finish(admin)
                    partial = write_report(self.record, self.run_dir / "report.html")
                except (AdminError, OSError):
                    raise exc from None
                raise DemoError(f"{exc} (partial report: {partial})") from None
            self._finish(admin)
        report = write_report(self.record, self.run_dir / "report.html")
        say(f"[bold green]report:[/bold green] {report}")
        outcome = DemoOutcome(self.run_dir, report, self.record)
        if options.serve:
            self._serve_console()
        return outcome

    def _serve_console(self) -> None:
        """Keep the coordinator (and its console) up until Ctrl-C; agents stop first."""
        for child in self.children.items:
            if child.name.startswith("agent-"):
                child.stop()
        token_file = self.run_dir / ADMIN_TOKEN_FILE
        descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(self.token + "\n")
        self.console.print(
            f"[bold green]console:[/bold green] {self.url}/console — sign in with the admin "
            f"token in {token_file}; Ctrl-C stops the coordinator"
        )
        try:
            while True:
                self.children.check()  # the coordinator died: one line, exit 1
                time.sleep(SERVE_POLL_S)
        except KeyboardInterrupt:
            self.console.print("stopping the coordinator")

    def _settings_for_report(self, example: Example) -> dict[str, str | int | float | bool | None]:
        o = self.options
        return {
            "rounds": o.rounds,
            "epsilon per hospital": o.epsilon,
            "delta": example.spec.get("dp", {}).get("delta", 1e-5),
            "accountant": example.spec.get("dp", {}).get("accountant", "rdp"),
            "seed": "none (DP noise from the OS's CSPRNG)" if o.seed is None else o.seed,
            "stage deadline (s)": o.stage_timeout_s,
            "aggregation": "secure (masked)" if o.secure else "plain (unmasked, benchmark)",
            "own metrics sent in clear by": ", ".join(o.share_own_metrics) or "none",
            "agent killed at": o.agents_drop_at,
            "in round": o.dropping_round,
            "stack": o.stack,
            "coordinator": self.url,
            "example": str(example.folder),
        }

    def _event(self, round_number: int | None, what: str) -> None:
        assert self.record is not None
        self.record.events.append(DemoEvent(at=datetime.now(UTC), round=round_number, what=what))
        self.console.print(f"[yellow]{what}[/yellow]")

    # --- coordinator --------------------------------------------------------------------

    def _coordinator_env(self, port: int) -> dict[str, str]:
        variables = {
            "FMTL_STATE_DIR": str(self.run_dir / "coordinator"),
            "FMTL_HOST": "127.0.0.1",
            "FMTL_PORT": str(port),
            "FMTL_LOG_LEVEL": "warning",
            # Deadlines of a few seconds are checked every second, not every five.
            "FMTL_TICK_INTERVAL_S": "1",
            "FMTL_WORK_POLL_INTERVAL_S": "0.5",
        }
        if not self.options.secure:
            variables["FMTL_ALLOW_PLAIN_AGGREGATION"] = "true"
        if self.options.postgres is not None:
            variables["FMTL_DATABASE_URL"] = postgres_sqlalchemy_url(self.options.postgres)
        if self.options.redis is not None:
            variables["FMTL_BROKER_URL"] = self.options.redis
            # Our own queue: another coordinator on the same Redis never takes our tasks.
            variables["FMTL_QUEUE"] = f"fmtl-demo-{secrets.token_hex(4)}"
        if self.options.postgres is not None or self.options.redis is not None:
            # Every process must hash tokens alike; a fresh secret per run.
            variables["FMTL_TOKEN_PEPPER"] = secrets.token_urlsafe(32)
        return child_environment(variables)

    def _start_coordinator(self) -> None:
        port = free_port()
        self.env = self._coordinator_env(port)
        self.url = f"http://127.0.0.1:{port}"
        if self.options.postgres is not None:
            run_once(
                "coordinator-migrate",
                fmtl_command("coordinator", "migrate"),
                self.env,
                self.log_dir,
            )
        self.token = run_once(
            "coordinator-create-token",
            fmtl_command("coordinator", "create-token", "--role", "admin", "--name", "demo"),
            self.env,
            self.log_dir,
        ).strip()
        if not self.token:
            raise DemoError(
                f"no admin token was printed: read {self.log_dir / 'coordinator-create-token.log'}"
            )
        serve = self.children.start("coordinator", fmtl_command("coordinator", "serve"), self.env)
        if self.options.redis is not None:
            self.children.start(
                "coordinator-worker",
                fmtl_command(
                    "coordinator", "worker", "--concurrency", str(self.options.worker_concurrency)
                ),
                self.env,
            )
            self.children.start("coordinator-beat", fmtl_command("coordinator", "beat"), self.env)
        self._wait_ready(serve)

    def _wait_ready(self, serve: Child) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.children.check()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise DemoError(
            f"the coordinator was not ready after {READY_TIMEOUT_S:.0f} s: read {serve.log}"
        )

    def _create_federation(self, admin: AdminClient, example: Example) -> str:
        base = str(example.spec.get("name", "heart_disease"))
        taken = {item.name for item in admin.federations()}
        name = base
        suffix = 2
        while name in taken:  # a shared PostgreSQL may hold earlier runs' federations
            name = f"{base}_{suffix}"
            suffix += 1
        spec = demo_spec(
            example,
            name=name,
            rounds=self.options.rounds,
            seed=self.options.seed,
            stage_timeout_s=self.options.stage_timeout_s,
            local_epochs=self.options.local_epochs,
            secure=self.options.secure,
        )
        return admin.create_federation(spec).name

    # --- agents -------------------------------------------------------------------------

    def _agent_env(self) -> dict[str, str]:
        # Four agents share this machine's cores: one thread each keeps them from thrashing.
        return child_environment({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})

    def _enroll(self, example: Example, tokens: dict[str, str]) -> None:
        exp = example.spec.get("dp", {})
        processes = []
        for index, hospital in enumerate(example.hospitals):
            folder = self.run_dir / "agents" / hospital.name
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "agent.toml"
            config.write_text(
                agent_config(
                    hospital,
                    coordinator_url=self.url,
                    state_dir=folder / "state",
                    epsilon=self.options.epsilon,
                    delta=float(exp.get("delta", 1e-5)),
                    accountant=str(exp.get("accountant", "rdp")),
                    seed=None
                    if self.options.seed is None
                    else agent_seed(self.options.seed, index),
                    split_seed=self.options.seed,
                    data_root=self.data_root,
                    poll_interval_s=0.5,
                    share_own_metrics=hospital.name in self.options.share_own_metrics,
                    personalisation=example.personalisation,
                    device=self.options.device,
                    unmasked=not self.options.secure,
                ),
                encoding="utf-8",
            )
            self.agents[hospital.name] = _Agent(hospital, folder, config)
            processes.append(
                self.children.start(
                    f"agent-{hospital.name}-enroll",
                    fmtl_command(
                        "agent",
                        "enroll",
                        "--coordinator",
                        self.url,
                        "--config",
                        str(config),
                        "--roster-key",
                        public_fingerprint(self.roster_key),
                    ),
                    # In the environment, not the command line (process listings show that).
                    {**self._agent_env(), ENROLLMENT_TOKEN_ENV: tokens[hospital.name]},
                )
            )
        for child in processes:
            child.expected_exit = True
            try:
                child.process.wait(READY_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise ChildFailed(
                    f"{child.name} did not finish in {READY_TIMEOUT_S:.0f} s: read {child.log}"
                ) from None
            if child.process.returncode != 0:
                raise ChildFailed(
                    f"{child.name} failed with status {child.process.returncode}: read "
                    f"{child.log}{last_line_hint(child.log)}"
                )

    def _start_agent(self, agent: _Agent) -> None:
        agent.starts += 1
        # A seeded run makes the DP noise reproducible, which `fmtl agent run` refuses: its
        # agents run under the demo's own runner that allows it (fmtl/demo/agent.py).
        command = (
            fmtl_command("agent", "run", "--config", str(agent.config))
            if self.options.seed is None
            else [sys.executable, "-m", "fmtl.demo.agent", "--config", str(agent.config)]
        )
        agent.child = self.children.start(
            f"agent-{agent.hospital.name}", command, self._agent_env()
        )

    def _wait_agents_started(self, agents: list[_Agent]) -> None:
        """Until each agent's log says it started (loaded its data, built its trainer), so
        that round 1's first stage does not also time the agents' start-up. Gives up
        quietly after a while: the round's deadlines still hold."""
        deadline = time.monotonic() + AGENT_START_WAIT_S
        waiting = list(agents)
        while waiting and time.monotonic() < deadline:
            self.children.check()
            waiting = [a for a in waiting if not _has_started(a)]
            time.sleep(0.2)

    # --- rounds -------------------------------------------------------------------------

    def _rounds(self, admin: AdminClient) -> None:
        options = self.options
        columns = (
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} rounds"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=True) as progress:
            overall = progress.add_task("rounds", total=options.rounds)
            last = 0
            for _ in range(options.rounds):
                started = self._start_round(admin, last)
                last = started.number
                number = started.number
                drop = options.dropping_round == number
                finished = self._follow(admin, number, progress, overall, drop)
                self._report_round(admin, finished, progress.console)
                if self.on_round is not None:
                    self.on_round(finished)
                progress.advance(overall)
                if finished.stage == "failed":
                    raise DemoError(
                        f"round {number} failed: {finished.failure_reason}; the agents' logs "
                        f"are in {self.log_dir}"
                    )

    def _start_round(self, admin: AdminClient, after: int) -> RoundInfo:
        self.children.check()
        try:
            return admin.start_next_round(self.federation, after)
        except AdminError as exc:
            raise DemoError(f"cannot start a round: {exc}") from None

    def _victim(self) -> _Agent:
        name = self.options.drop_agent or list(self.agents)[-1]
        if name not in self.agents:
            raise DemoError(f"--drop-agent must be one of {', '.join(self.agents)} (got {name!r})")
        return self.agents[name]

    def _follow(
        self,
        admin: AdminClient,
        number: int,
        progress: Progress,
        overall: TaskID,
        drop: bool,
    ) -> RoundInfo:
        options = self.options
        limit = options.stage_timeout_s * ROUND_DEADLINE_STAGES + 120.0
        deadline = time.monotonic() + limit
        began = time.monotonic()
        victim = self._victim() if drop else None
        killed = False
        while True:
            self.children.check()
            current = admin.round(self.federation, number)
            progress.update(
                overall,
                description=f"round {number}: {current.stage} ({time.monotonic() - began:.0f} s)",
            )
            if (
                victim is not None
                and not killed
                and options.agents_drop_at is not None
                and _stage_index(current.stage) >= _stage_index(options.agents_drop_at)
            ):
                killed = True
                if victim.child is not None:
                    victim.child.kill()
                self._event(
                    number,
                    f"killed the agent of {victim.hospital.name} (SIGKILL) with round {number} "
                    f"at {current.stage}",
                )
            if current.finished:
                break
            if time.monotonic() > deadline:
                raise DemoError(
                    f"round {number} still at {current.stage} after {limit:.0f} s: read the "
                    f"logs in {self.log_dir}"
                )
            time.sleep(POLL_S)
        if victim is not None and killed:
            self._start_agent(victim)
            self._event(number, f"restarted the agent of {victim.hospital.name}")
        return current

    def _report_round(self, admin: AdminClient, finished: RoundInfo, console: Console) -> None:
        assert self.record is not None
        results = admin.results(self.federation, finished.number)
        ledger = admin.ledger(self.federation)
        names = self.record.institution_names()
        seconds = (
            (finished.finished_at - finished.started_at).total_seconds()
            if finished.finished_at and finished.started_at
            else float("nan")
        )
        dropped = [
            f"{names.get(p.institution_id, p.institution_id)} at {p.dropped_at_stage}"
            for p in finished.participant_list
            if p.status == "dropped"
        ]
        in_sum = sum(1 for p in finished.participant_list if p.status == "completed")
        training = self._training_seconds(finished.number)
        split = ""
        if training is not None:
            self.record.training_s[finished.number] = training
            split = (
                f" (training {training:.1f} s at the slowest hospital, "
                f"service {max(seconds - training, 0.0):.1f} s)"
            )
        line = (
            f"[bold]round {finished.number}[/bold] {finished.stage} in {seconds:.1f} s{split}: "
            f"{in_sum} of {finished.participants} updates in the sum (t = {finished.threshold})"
        )
        if dropped:
            line += f"; dropped: {', '.join(dropped)}"
        console.print(line)
        if results:
            console.print(tables.results_table(results, finished.number))
        console.print(tables.spend_table(ledger, finished.number))

    def _training_seconds(self, number: int) -> float | None:
        """The slowest hospital's local work in round `number` (evaluation, training),
        from the agents' logs; None when no agent logged it (e.g. a round that failed)."""
        found = [
            seconds
            for agent in self.agents.values()
            if agent.child is not None
            for seconds in training_seconds(agent.child.log, number)
        ]
        return max(found) if found else None

    def _finish(self, admin: AdminClient) -> None:
        assert self.record is not None
        self.record.rounds = [
            admin.round(self.federation, r.number) for r in admin.rounds(self.federation)
        ]
        self.record.results = admin.results(self.federation)
        self.record.ledger = admin.ledger(self.federation)
        try:
            self.record.audit = admin.audit_verify()
        except AdminError as exc:
            self._event(None, f"audit verification failed: {exc}")
        self._read_local_models()
        versions = admin.models(self.federation)
        if versions:
            latest = max(item.version for item in versions)
            vector = admin.model_vector(self.federation, latest)
            (self.run_dir / FINAL_MODEL_FILE).write_bytes(vector)
            self.record.final_model_version = latest
        self.record.finished_at = datetime.now(UTC)
        self.record.save(self.run_dir / "record.json")
        completed = sum(1 for r in self.record.rounds if r.stage == "completed")
        self.console.print(
            f"{completed} of {len(self.record.rounds)} rounds completed in "
            f"{self.record.wall_s or 0:.0f} s; audit log "
            + (
                "intact"
                if self.record.audit is not None and self.record.audit.ok
                else "NOT verified"
            )
        )

    def _read_local_models(self) -> None:
        """Each hospital's own figures of its federated and personalised model, read from
        its agent (`fmtl agent status --json`), as the hospital would look at them."""
        assert self.record is not None
        for name, agent in self.agents.items():
            try:
                out = run_once(
                    f"agent-{name}-status",
                    fmtl_command("agent", "status", "--config", str(agent.config), "--json"),
                    self._agent_env(),
                    self.run_dir / "logs",
                    timeout_s=STATUS_TIMEOUT_S,
                )
                history = (json.loads(out).get("models") or {}).get("history", [])
                self.record.local_models[name] = [
                    LocalModels(
                        round=entry["round"],
                        federated=entry["global"],
                        personalised=entry.get("personal"),
                    )
                    for entry in history
                    if entry.get("federation") == self.federation
                ]
            except (ChildFailed, ValueError, KeyError) as exc:
                self._event(None, f"{name}: could not read its local model figures ({exc})")
        rows = [
            (which, self.record.local_curve("disease", metric, which))
            for which in ("federated", "personalised")
            for metric in ("accuracy",)
        ]
        shown = [f"{which} {curve[-1][1]:.3f}" for which, curve in rows if curve]
        if shown:
            self.console.print(
                "disease accuracy at each hospital's last round, mean over hospitals (local "
                "figures): " + ", ".join(shown)
            )


def training_seconds(log: Path, number: int) -> list[float]:
    """Every `local_s` an agent's log gives for round `number` (one per training; a
    restarted agent that reused its result logs none)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    found = []
    for match in TRAINING_FINISHED.finditer(text):
        fields = match.group(1)
        round_field, local = ROUND_FIELD.search(fields), LOCAL_S_FIELD.search(fields)
        if round_field and local and int(round_field.group(1)) == number:
            found.append(float(local.group(1)))
    return found


def _has_started(agent: _Agent) -> bool:
    if agent.child is None:
        return False
    try:
        text = agent.child.log.read_text(errors="replace")
    except OSError:
        return False
    return AGENT_STARTED.search(text) is not None


def agent_seed(seed: int, index: int) -> int:
    """The DP seed of the index-th hospital: the in-process benchmark's convention
    (`benchmarks/heart_disease.py`), so the same --seed means the same runs there and here."""
    return seed * 100 + index


def _stage_index(stage: str) -> int:
    try:
        return ROUND_STAGE_ORDER.index(stage)
    except ValueError:
        return -1


def run_demo(options: DemoOptions, console: Console | None = None) -> DemoOutcome:
    """Run the demo; raises `DemoError` (one line) on failure, `Interrupted` on Ctrl-C."""
    run = DemoRun(options, console or Console())
    try:
        return run.run()
    except AdminError as exc:
        raise DemoError(f"{exc} (coordinator log: {run.log_dir / 'coordinator.log'})") from None
