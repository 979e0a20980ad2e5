"""The daemon loop: backoff on network errors, --max-rounds, SIGTERM leaves cleanly."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.config import AgentConfig
from agent.coordinator_client import CoordinatorUnreachable, Rejected
from agent.daemon import EXIT_FAILURE, EXIT_OK, Backoff, Daemon, NotAccepted, Shutdown
from agent.ledger import Ledger, RoundStatus
from agent.round_participant import Outcome, StepResult
from agent.round_state import InMemoryRoundStateStore
from federation.round_api import MyStatus


def test_backoff_grows_exponentially_caps_and_jitters() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0, jitter=0.5)
    waits = [backoff.next_wait() for _ in range(6)]
    ceilings = [1, 2, 4, 8, 8, 8]
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert ceiling * 0.5 <= wait <= ceiling
    backoff.reset()
    assert backoff.next_wait() <= 1.0


class _Participant:
    pushed = False  # a coordinator that answers polls at once: the daemon paces them

    def __init__(self, script: Iterator[object]) -> None:
        self.script = script

    def step(self) -> StepResult:
        item = next(self.script)
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, StepResult)
        return item


class _Work:
    """AgentWork's part the daemon uses: it alone writes a round's end to the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.profile = SimpleNamespace(federation="heart")
        self.current = None
        self.budget = 3.0
        self.forgotten: list[int] = []
        self.ledger = ledger

    def epsilon_spent(self) -> float:
        return 0.0

    def end_round(
        self,
        federation: str,
        number: int,
        status: RoundStatus | None,
        reason: str | None = None,
        *,
        keep_result: bool = False,
    ) -> None:
        if status is not None:
            self.ledger.finish(federation, number, status, reason)
        if not keep_result:
            self.forgotten.append(number)


def _daemon(
    config: AgentConfig, script: list[object], tmp_path: Path, **kwargs: object
) -> tuple[Daemon, list[float], Ledger]:
    waits: list[float] = []
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    daemon = Daemon(
        _Participant(iter(script)),  # type: ignore[arg-type]
        _Work(ledger),  # type: ignore[arg-type]
        ledger,
        InMemoryRoundStateStore(),
        config,
        sleep=waits.append,
        **kwargs,  # type: ignore[arg-type]
    )
    return daemon, waits, ledger


def test_network_errors_back_off_then_rounds_count_to_max_rounds(
    config: AgentConfig, tmp_path: Path
) -> None:
    script: list[object] = [
        StepResult(
            Outcome.COMPLETED, round=7, detail="completed", my_status=MyStatus.COMPLETED
        ),  # ended before we started
        CoordinatorUnreachable("down"),
        CoordinatorUnreachable("still down"),
        StepResult(Outcome.IDLE, poll_after_s=1.0),
        StepResult(Outcome.ADVERTISED, round=1),
        StepResult(Outcome.COMPLETED, round=1, detail="completed", my_status=MyStatus.COMPLETED),
        StepResult(
            Outcome.COMPLETED, round=1, detail="completed", my_status=MyStatus.COMPLETED
        ),  # seen again: once
        StepResult(Outcome.WAITING, round=2),
        StepResult(Outcome.FAILED, round=2, detail="too few"),
    ]
    daemon, waits, ledger = _daemon(config, script, tmp_path, max_rounds=2)
    ledger.join(
        "heart",
        1,
        noise_multiplier=1,
        sample_rate=0.1,
        steps=1,
        projected_epsilon=0.1,
        budget_epsilon=3,
    )
    assert daemon.run() == EXIT_OK
    backoff_waits = waits[1:3]
    assert backoff_waits[1] >= backoff_waits[0] * 0.5  # grows (with jitter)
    assert len(daemon.finished) == 2
    assert daemon.work.forgotten == [1, 2]  # type: ignore[attr-defined]
    entry = ledger.round("heart", 1)
    assert entry is not None
    assert entry.status is RoundStatus.COMPLETED
    ledger.close()


def test_an_agent_the_coordinator_no_longer_accepts_exits_1(
    config: AgentConfig, tmp_path: Path
) -> None:
    refused = NotAccepted(401, {"detail": "unknown key"})
    script: list[object] = [
        Rejected(401, {"detail": "a message was refused"}),  # one message: go on
        StepResult(Outcome.IDLE),
        refused,
        refused,
        refused,
    ]
    daemon, waits, ledger = _daemon(config, script, tmp_path)
    assert daemon.run() == EXIT_FAILURE
    assert len(waits) == 4
    ledger.close()


def test_sigterm_between_steps_stops_with_exit_0(config: AgentConfig, tmp_path: Path) -> None:
    shutdown = Shutdown(grace_s=5.0)
    shutdown.install()

    def steps() -> Iterator[object]:
        yield StepResult(Outcome.IDLE, poll_after_s=0.01)
        os.kill(os.getpid(), signal.SIGTERM)
        yield StepResult(Outcome.IDLE, poll_after_s=0.01)
        pytest.fail("the daemon stepped again after SIGTERM")

    try:
        ledger = Ledger(tmp_path / "ledger.sqlite3")
        daemon = Daemon(
            _Participant(steps()),  # type: ignore[arg-type]
            _Work(ledger),  # type: ignore[arg-type]
            ledger,
            InMemoryRoundStateStore(),
            config,
            shutdown=shutdown,
            sleep=lambda _s: None,
        )
        assert daemon.run() == EXIT_OK
        assert shutdown.requested.is_set()
        ledger.close()
    finally:
        shutdown.uninstall()


def test_a_round_that_ended_unseen_counts_when_the_next_one_opens(
    config: AgentConfig, tmp_path: Path
) -> None:
    script: list[object] = [
        StepResult(Outcome.ADVERTISED, round=1),
        StepResult(Outcome.UNMASKED, round=1),
        StepResult(Outcome.ADVERTISED, round=2),  # round 1 completed between two polls
        StepResult(Outcome.COMPLETED, round=2, detail="completed", my_status=MyStatus.COMPLETED),
    ]
    daemon, _, ledger = _daemon(config, script, tmp_path, max_rounds=2)
    for number in (1, 2):
        ledger.join(
            "heart",
            number,
            noise_multiplier=1,
            sample_rate=0.1,
            steps=1,
            projected_epsilon=0.1,
            budget_epsilon=3,
        )
    assert daemon.run() == EXIT_OK
    assert daemon.finished == {("heart", 1), ("heart", 2)}
    statuses = {entry.round: entry.status for entry in ledger.rounds()}
    assert statuses == {1: RoundStatus.COMPLETED, 2: RoundStatus.COMPLETED}
    ledger.close()


def test_how_a_round_ended_comes_from_the_coordinators_status_not_from_a_string(
    config: AgentConfig, tmp_path: Path
) -> None:
    """`StepResult.my_status` carries the coordinator's `MyStatus` to the daemon; the
    human-readable `detail` no longer decides what the ledger records."""
    script: list[object] = [
        StepResult(Outcome.ADVERTISED, round=1),
        StepResult(Outcome.COMPLETED, round=1, detail="completed", my_status=MyStatus.DROPPED),
        StepResult(Outcome.ADVERTISED, round=2),
        StepResult(Outcome.COMPLETED, round=2, detail="", my_status=MyStatus.COMPLETED),
    ]
    daemon, _, ledger = _daemon(config, script, tmp_path, max_rounds=2)
    for number in (1, 2):
        ledger.join(
            "heart",
            number,
            noise_multiplier=1,
            sample_rate=0.1,
            steps=1,
            projected_epsilon=0.1,
            budget_epsilon=3,
        )
    assert daemon.run() == EXIT_OK
    statuses = {entry.round: entry.status for entry in ledger.rounds()}
    assert statuses == {1: RoundStatus.DROPPED, 2: RoundStatus.COMPLETED}
    ledger.close()
