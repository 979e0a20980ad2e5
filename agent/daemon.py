"""`fmtl agent run`: the daemon loop around `RoundParticipant.step()`.

The loop polls the coordinator and does what each stage of each round needs, round after
round, until it is stopped:

- network failures (after the client's own quick retries) wait with exponential backoff
  and jitter, up to `[daemon] backoff_max_s`, and the loop goes on: a coordinator down for
  an hour is waited for, not a reason to exit;
- SIGTERM / SIGINT: the current stage is finished if it ends within
  `[daemon] shutdown_grace_s`; training (the long stage) stops at once. Either way the
  round state on disk stays consistent (every secret is saved before the message that
  needs it), a restarted agent continues the round, and the exit status is 0. A second
  signal stops at once;
- a round this agent cannot continue (its state damaged, its data unusable, its budget
  gone) is left cleanly: the participant records why and the round goes on without it;
- `--max-rounds N` (and `--once`) exit 0 after N rounds ended for this agent (completed,
  failed, or declined and then finished), for tests and demos.

Every step is logged as a structured event; no secret, share, update or model value is.
"""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Final

import httpx

from agent.audit_anchor import ANCHOR_FILE, AuditAnchor
from agent.config import (
    AgentConfig,
    check_coordinator_url,
    refuse_testing_switches,
    refuse_unmasked_off_loopback,
)
from agent.coordinator_client import (
    BadResponse,
    ClientError,
    CoordinatorClient,
    CoordinatorUnreachable,
    Rejected,
)
from agent.enrollment import Enrollment, coordinator_url, load_enrollment
from agent.errors import AgentError, ConfigError, DataError, TrainingError
from agent.identity import load_identity, public_key_bytes
from agent.ledger import Ledger, RoundStatus
from agent.logging import event, get_logger
from agent.refusals import ended_in, record_refusal
from agent.roster import SignedRosterCheck
from agent.round_participant import Outcome, RoundParticipant, StepResult
from agent.round_policy import RoundPolicy
from agent.round_state import ParticipantState, RoundStateStore
from agent.sources import check_local_data
from agent.state_store import EncryptedFileStore, StateCorrupted
from agent.work import AgentWork, TrainingInterrupted
from federation.round_api import MyStatus, WorkStatus
from privacy.dp.errors import DPError

_log = get_logger("daemon")

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
#: Quick retries inside one request before the daemon's own, longer backoff takes over.
CLIENT_RETRIES: Final = 2
#: After a stage that sent something, poll again this soon (the next stage may be open).
ACTIVE_POLL_S: Final = 0.2
#: Between two long polls (which wait in the coordinator): a floor against a tight loop.
LONG_POLL_GAP_S: Final = 0.02
#: Consecutive polls the coordinator refuses (401/403) before the daemon exits 1 (under
#: systemd it is restarted, and says why in the journal each time).
MAX_REFUSED_POLLS: Final = 3
#: Consecutive unexpected errors after which the daemon gives up (exit 1) rather than loop.
MAX_UNEXPECTED_ERRORS: Final = 10
#: How a completed round ended for this agent, by the coordinator's word on it.
_ENDED: Final = {MyStatus.COMPLETED: RoundStatus.COMPLETED, MyStatus.DROPPED: RoundStatus.DROPPED}
_ACTIONS: Final = frozenset(
    {
        Outcome.ADVERTISED,
        Outcome.SHARED,
        Outcome.UPLOADED,
        Outcome.SIGNED,
        Outcome.UNMASKED,
    }
)


class NotAccepted(Rejected):
    """The coordinator refuses this agent's *poll* (401/403): revoked, re-enrolled elsewhere,
    or a clock too far off. (A refused protocol message is a plain `Rejected`.)"""


class DaemonClient(CoordinatorClient):
    """The coordinator client, telling a refused poll apart from a refused message."""

    def work(self, *, wait_s: float = 0.0, seen: str | None = None) -> WorkStatus:
        try:
            return super().work(wait_s=wait_s, seen=seen)
        except Rejected as exc:
            if exc.status in (401, 403):
                raise NotAccepted(exc.status, exc.problem) from None
            raise


class ShutdownNow(BaseException):
    """Raised from the signal handler to leave a stage that outlived its grace period.

    A `BaseException`, so that no `except Exception` on the way swallows it."""


@dataclass
class Backoff:
    """Exponential backoff with jitter: initial · 2^n, capped, minus a random fraction."""

    initial_s: float
    max_s: float
    jitter: float
    failures: int = 0
    _random: random.Random = field(default_factory=random.Random)

    def next_wait(self) -> float:
        ceiling = min(self.max_s, self.initial_s * 2.0**self.failures)
        self.failures += 1
        return ceiling * (1.0 - self.jitter * self._random.random())

    def reset(self) -> None:
        self.failures = 0


class Shutdown:
    """SIGTERM/SIGINT handling: the first asks to stop, the grace timer or a second forces."""

    def __init__(self, grace_s: float) -> None:
        self.requested = threading.Event()
        self.grace_s = grace_s
        self.in_step = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        signal.signal(signal.SIGALRM, self._expired)

    def uninstall(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            event(_log, "shutdown_forced", level=30, signal=name)
            if self.in_step:
                raise ShutdownNow(name)
            return
        self.requested.set()
        event(_log, "shutdown_requested", signal=name, grace_s=self.grace_s)
        if self.in_step and self.grace_s > 0:
            signal.setitimer(signal.ITIMER_REAL, self.grace_s)
        elif self.in_step:
            raise ShutdownNow(name)

    def _expired(self, signum: int, frame: FrameType | None) -> None:
        if self.in_step:
            event(_log, "shutdown_grace_expired", level=30, grace_s=self.grace_s)
            raise ShutdownNow("grace period expired")


class Daemon:
    """The loop; `run()` returns the exit status."""

    def __init__(
        self,
        participant: RoundParticipant,
        work: AgentWork,
        ledger: Ledger,
        store: RoundStateStore,
        config: AgentConfig,
        *,
        max_rounds: int | None = None,
        shutdown: Shutdown | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.participant = participant
        self.work = work
        self.ledger = ledger
        self.store = store
        self.settings = config.daemon
        self.max_rounds = max_rounds
        self.shutdown = shutdown or Shutdown(config.daemon.shutdown_grace_s)
        self.backoff = Backoff(
            config.daemon.backoff_initial_s,
            config.daemon.backoff_max_s,
            config.daemon.backoff_jitter,
        )
        self._sleep = sleep
        self.finished: set[tuple[str, int]] = set()
        self._unexpected = 0
        self._refused_polls = 0
        self._seen_open: set[tuple[str, int]] = set()
        self._unmasked: set[tuple[str, int]] = set()
        self._last: tuple[Outcome, int | None] | None = None
        self._pushed: bool | None = None

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            self.shutdown.requested.wait(seconds)

    def run(self) -> int:
        federation = self.work.profile.federation
        while not self.shutdown.requested.is_set():
            try:
                self.shutdown.in_step = True
                result = self.participant.step()
            except ShutdownNow:
                event(_log, "stage_abandoned", level=30, reason="shutdown")
                break
            except TrainingInterrupted as exc:
                event(_log, "training_abandoned", level=30, detail=str(exc))
                break
            except CoordinatorUnreachable as exc:
                wait = self.backoff.next_wait()
                event(
                    _log,
                    "coordinator_unreachable",
                    level=30,
                    detail=str(exc),
                    retry_in_s=round(wait, 2),
                    failures=self.backoff.failures,
                )
                self._between_steps(wait)
                continue
            except NotAccepted as exc:
                self._refused_polls += 1
                event(
                    _log,
                    "not_accepted",
                    level=40,
                    status=exc.status,
                    detail=exc.detail,
                    consecutive=self._refused_polls,
                )
                if self._refused_polls >= MAX_REFUSED_POLLS:
                    self._stop_step()
                    return EXIT_FAILURE
                self._between_steps(self.backoff.next_wait())
                continue
            except Rejected as exc:
                wait = self.backoff.next_wait()
                event(
                    _log,
                    "request_rejected",
                    level=30,
                    status=exc.status,
                    detail=exc.detail,
                    retry_in_s=round(wait, 2),
                )
                self._between_steps(wait)
                continue
            except (StateCorrupted, DataError, TrainingError, DPError) as exc:
                self._leave_current_round(f"{type(exc).__name__}: {exc}")
                self._between_steps(self.backoff.next_wait())
                continue
            except (BadResponse, ClientError, AgentError, httpx.HTTPError) as exc:
                wait = self.backoff.next_wait()
                event(
                    _log,
                    "step_failed",
                    level=30,
                    error_type=type(exc).__name__,
                    detail=str(exc),
                    retry_in_s=round(wait, 2),
                )
                self._between_steps(wait)
                continue
            except Exception as exc:
                self._unexpected += 1
                event(
                    _log,
                    "unexpected_error",
                    level=40,
                    error_type=type(exc).__name__,
                    detail=str(exc),
                    consecutive=self._unexpected,
                )
                if self._unexpected >= MAX_UNEXPECTED_ERRORS:
                    self._stop_step()
                    return EXIT_FAILURE
                self._between_steps(self.backoff.next_wait())
                continue
            self._stop_step()
            self._unexpected = 0
            self._refused_polls = 0
            self.backoff.reset()
            self._observe(federation, result)
            if self.max_rounds is not None and len(self.finished) >= self.max_rounds:
                event(_log, "max_rounds_reached", rounds=len(self.finished))
                break
            self._note_push()
            if self.participant.pushed:
                # The next poll waits in the coordinator until the round moves on (push).
                self._wait(LONG_POLL_GAP_S)
            elif result.outcome in _ACTIONS:
                self._wait(ACTIVE_POLL_S)
            else:
                self._wait(min(self.settings.poll_interval_s, max(result.poll_after_s, 0.05)))
        self._stop_step()
        event(_log, "stopped", rounds_finished=len(self.finished))
        return EXIT_OK

    def _note_push(self) -> None:
        """Log once (and again on a change) whether the coordinator holds this agent's
        polls until its work changes (long polls) or the agent polls at intervals."""
        pushed = self.participant.pushed
        if pushed == self._pushed:
            return
        self._pushed = pushed
        if pushed:
            event(_log, "work_pushed", long_poll_s=self.participant.long_poll_s)
        else:
            event(_log, "work_polled", poll_interval_s=self.settings.poll_interval_s)

    def _stop_step(self) -> None:
        self.shutdown.in_step = False
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _between_steps(self, seconds: float) -> None:
        self._stop_step()
        self._wait(seconds)

    def _observe(self, federation: str, result: StepResult) -> None:
        """Log what happened (once per change) and keep the ledger's round status."""
        number = result.round
        changed = self._last != (result.outcome, number)
        self._last = (result.outcome, number)
        if number is None:
            if changed:
                event(_log, "idle", level=10)
            return
        self._superseded(federation, number)
        if result.outcome not in (Outcome.COMPLETED, Outcome.FAILED):
            self._seen_open.add((federation, number))
            if result.outcome is Outcome.UNMASKED:
                self._unmasked.add((federation, number))
        elif not self._took_part(federation, number):
            return  # a round that ended before this process ever saw it open
        if result.outcome in _ACTIONS:
            event(_log, f"stage_{result.outcome.value}", round=number, stage=result.stage)
        elif result.outcome is Outcome.DROPPED and changed:
            self.work.end_round(
                federation, number, RoundStatus.DROPPED, result.detail, keep_result=True
            )
            event(_log, "round_dropped", level=30, round=number, detail=result.detail)
        elif result.outcome is Outcome.COMPLETED:
            if (federation, number) not in self.finished:
                mine = result.my_status
                self.work.end_round(federation, number, _ENDED.get(mine) if mine else None)
                self.finished.add((federation, number))
                event(
                    _log,
                    "round_completed",
                    round=number,
                    included=mine is MyStatus.COMPLETED,
                    my_status=mine.value if mine else None,
                    epsilon_spent=round(self.work.epsilon_spent(), 4),
                    epsilon_budget=self.work.budget,
                )
        elif result.outcome is Outcome.FAILED:
            if (federation, number) not in self.finished:
                self.work.end_round(federation, number, RoundStatus.FAILED, result.detail)
                self.finished.add((federation, number))
                event(_log, "round_failed", level=30, round=number, detail=result.detail)
        elif result.outcome is Outcome.REFUSED and changed:
            record_refusal(self.ledger, self.work, federation, number, result.detail)
        elif result.outcome is Outcome.DECLINED and changed:
            event(_log, "round_declined_waiting", round=number, detail=result.detail)
        elif changed:
            event(_log, "waiting", level=10, round=number, stage=result.stage, detail=result.detail)

    def _superseded(self, federation: str, number: int) -> None:
        """Rounds this agent was in that ended unseen: the coordinator opens round n only
        after every earlier round ended, so seeing n ends them (rounds back to back)."""
        for key in sorted(self._seen_open - self.finished):
            if key[0] != federation or key[1] >= number:
                continue
            # Its unmasking shares went in, so the round reached aggregation, where it
            # completes unless unmasking itself fails (rare; the coordinator records it):
            # recorded as completed, and logged as inferred.
            if key in self._unmasked:
                self.work.end_round(*key, RoundStatus.COMPLETED)
                status = "completed"
            else:
                self.work.end_round(*key, RoundStatus.DROPPED, "ended unseen")
                status = "unknown"
            self.finished.add(key)
            event(
                _log,
                "round_ended_unseen",
                round=key[1],
                next_round=number,
                status=status,
                inferred=True,
            )

    def _took_part(self, federation: str, number: int) -> bool:
        """Whether this agent had a part in a round that has now ended: it saw the round
        open, or its ledger shows the round joined and not yet ended (before a restart)."""
        if (federation, number) in self._seen_open:
            return True
        entry = self.ledger.round(federation, number)
        return entry is not None and not entry.status.final

    def _leave_current_round(self, reason: str) -> None:
        """Mark the round in progress as abandoned (the participant will not retry it)."""
        current = self.work.current
        event(_log, "round_left", level=40, round=current.round if current else None, detail=reason)
        if current is None:
            return
        key = ParticipantState.key(current.federation, current.round)
        state = ParticipantState(current.federation, current.round, abandoned=reason[:500])
        try:
            data = self.store.load(key)
            if data is not None:
                state = ParticipantState.from_bytes(data).with_(abandoned=reason[:500])
        except (StateCorrupted, ValueError):
            pass  # replaced by a fresh, abandoned state: the damaged one is never used
        self.store.save(key, state.to_bytes())
        self.work.end_round(
            current.federation, current.round, RoundStatus.DROPPED, reason, keep_result=True
        )


def _client(config: AgentConfig, enrollment: Enrollment, identity: object) -> DaemonClient:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    assert isinstance(identity, Ed25519PrivateKey)
    verify: str | bool = (
        str(config.coordinator.ca_bundle) if config.coordinator.ca_bundle is not None else True
    )
    return DaemonClient(
        coordinator_url(config, enrollment),
        identity,
        enrollment.profile.key_id,
        retries=CLIENT_RETRIES,
        backoff_s=min(0.5, config.daemon.backoff_initial_s),
        max_backoff_s=config.daemon.backoff_max_s,
        timeout_s=config.coordinator.timeout_s,
        transport=httpx.HTTPTransport(verify=verify),
    )


def run_daemon(
    config: AgentConfig,
    *,
    max_rounds: int | None = None,
    show_progress: bool,
    allow_testing_switches: bool = False,
) -> int:
    """Set everything up from agent.toml and the state folder, then loop; the exit status.

    `allow_testing_switches` is for the seeded demo and benchmarks only (`fmtl agent run`
    never sets it)."""
    if not allow_testing_switches:
        refuse_testing_switches(config)
    enrollment = load_enrollment(config)
    url = coordinator_url(config, enrollment)
    try:
        check_coordinator_url(url)
    except ValueError as exc:
        raise ConfigError(f"{config.source}: coordinator url: {exc}") from None
    refuse_unmasked_off_loopback(config, url)
    if enrollment.roster_key is None:
        raise ConfigError(
            f"{config.profile_file}: no roster key pinned (enrolled before signed rosters); "
            "enroll again: fmtl agent enroll --force --roster-key FINGERPRINT ..."
        )
    identity = load_identity(config.key_file, config.key_passphrase)
    dataset = check_local_data(config, enrollment)
    profile = enrollment.profile
    shutdown = Shutdown(config.daemon.shutdown_grace_s)
    shutdown.install()
    try:
        with Ledger.open(config.ledger_file) as ledger:
            store = EncryptedFileStore(config.rounds_dir, identity)
            work = AgentWork(
                config,
                profile,
                dataset,
                ledger,
                store,
                stop=shutdown.requested,
                show_progress=show_progress,
            )
            with _client(config, enrollment, identity) as client:
                policy = RoundPolicy(
                    profile,
                    public_key_bytes(identity),
                    allow_unmasked=config.privacy.insecure_allow_unmasked_rounds,
                    ended=ended_in(ledger),
                    graph=config.neighbour_graph.policy(),
                    roster=SignedRosterCheck(
                        enrollment.roster_key, profile.federation, client.roster, ledger
                    ),
                )
                participant = RoundParticipant(
                    client,
                    identity,
                    store,
                    work,
                    policy=policy,
                    long_poll_s=config.daemon.long_poll_s,
                    audit_anchor=AuditAnchor(
                        config.state_dir / ANCHOR_FILE,
                        profile.coordinator_key,
                        client.audit_checkpoints,
                    ),
                )
                event(
                    _log,
                    "started",
                    institution=profile.institution,
                    federation=profile.federation,
                    key_id=profile.key_id,
                    coordinator=client.base_url,
                    tasks_held=list(dataset.tasks_held),
                    train_rows=dataset.n_train,
                    validation_rows=dataset.n_validation,
                    device=str(work.trainer.device),
                    epsilon_budget=config.privacy.epsilon,
                    epsilon_spent=round(work.epsilon_spent(), 4),
                    accountant=config.privacy.accountant,
                )
                daemon = Daemon(
                    participant,
                    work,
                    ledger,
                    store,
                    config,
                    max_rounds=max_rounds,
                    shutdown=shutdown,
                )
                return daemon.run()
    finally:
        shutdown.uninstall()


__all__ = [
    "Backoff",
    "Daemon",
    "DaemonClient",
    "NotAccepted",
    "Shutdown",
    "ShutdownNow",
    "run_daemon",
]
