"""The privacy ledger: every spend with the accountant's state, rounds, durable and private."""

from __future__ import annotations

import stat
from pathlib import Path

from agent.ledger import Ledger, RoundStatus
from privacy.dp import Accountant, epsilon_for


def _spend(ledger: Ledger, number: int, accountant: Accountant) -> None:
    accountant.record(1.5, 0.25, 4)
    ledger.record_spend(
        "heart",
        number,
        noise_multiplier=1.5,
        sample_rate=0.25,
        steps=4,
        delta=1e-5,
        accountant="rdp",
        epsilon=accountant.epsilon(1e-5),
        budget_epsilon=3.0,
        accountant_state=accountant.state_dict(),
    )


def test_spends_persist_with_the_accountant_state(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    accountant = Accountant("rdp")
    with Ledger.open(path) as ledger:
        _spend(ledger, 1, accountant)
        _spend(ledger, 2, accountant)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Ledger.open(path) as ledger:  # a restarted agent
        assert ledger.history() == [(1.5, 0.25, 4), (1.5, 0.25, 4)]
        state = ledger.accountant_state("rdp")
        assert state is not None
        restored = Accountant.from_state_dict(state)
        assert restored.epsilon(1e-5) == accountant.epsilon(1e-5)
        assert ledger.accountant_state("prv") is None
        summary = ledger.summary()
        assert summary.trainings == 2
        assert summary.epsilon_spent == epsilon_for(ledger.history(), 1e-5, "rdp")
        assert ledger.round("heart", 2) is not None
        assert ledger.round("heart", 2).status is RoundStatus.TRAINED  # type: ignore[union-attr]


def test_a_second_training_of_a_round_counts_again(tmp_path: Path) -> None:
    accountant = Accountant("rdp")
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        _spend(ledger, 1, accountant)
        _spend(ledger, 1, accountant)  # trained again after a lost result: both count
        assert [s.attempt for s in ledger.spends("heart", 1)] == [1, 2]
        assert len(ledger.history()) == 2


def test_join_fixes_the_plan_and_decline_records_why(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        first = ledger.join(
            "heart",
            3,
            noise_multiplier=2.0,
            sample_rate=0.2,
            steps=5,
            projected_epsilon=1.0,
            budget_epsilon=3.0,
        )
        again = ledger.join(
            "heart",
            3,
            noise_multiplier=9.0,
            sample_rate=0.9,
            steps=1,
            projected_epsilon=2.0,
            budget_epsilon=3.0,
        )
        assert (again.noise_multiplier, again.steps) == (first.noise_multiplier, first.steps)
        ledger.decline("heart", 4, "budget", projected_epsilon=3.5, budget_epsilon=3.0)
        ledger.finish("heart", 4, RoundStatus.COMPLETED)  # a declined round stays declined
        ledger.finish("heart", 3, RoundStatus.COMPLETED)
        statuses = {entry.round: entry.status for entry in ledger.rounds()}
        assert statuses == {3: RoundStatus.COMPLETED, 4: RoundStatus.DECLINED}
        declined = ledger.round("heart", 4)
        assert declined is not None
        assert declined.reason == "budget"
        summary = ledger.summary()
        assert summary.joined == 1
        assert summary.rounds[RoundStatus.DECLINED] == 1


def test_remembered_values_survive(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        ledger.remember("noise_plan", {"sigma": 2.5})
    with Ledger.open(tmp_path / "l.sqlite3") as ledger:
        assert ledger.remembered("noise_plan") == {"sigma": 2.5}
        assert ledger.remembered("other") is None


_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rounds (federation TEXT NOT NULL, round INTEGER NOT NULL, status TEXT NOT NULL,
    reason TEXT, noise_multiplier REAL, sample_rate REAL, steps INTEGER,
    projected_epsilon REAL, budget_epsilon REAL, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, PRIMARY KEY (federation, round));
CREATE TABLE spends (id INTEGER PRIMARY KEY AUTOINCREMENT, federation TEXT NOT NULL,
    round INTEGER NOT NULL, attempt INTEGER NOT NULL, noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL, steps INTEGER NOT NULL, delta REAL NOT NULL,
    accountant TEXT NOT NULL, epsilon REAL NOT NULL, budget_epsilon REAL NOT NULL,
    accountant_state TEXT NOT NULL, recorded_at TEXT NOT NULL,
    UNIQUE (federation, round, attempt));
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO spends (federation, round, attempt, noise_multiplier, sample_rate, steps, delta,
    accountant, epsilon, budget_epsilon, accountant_state, recorded_at)
    VALUES ('f', 1, 1, 2.0, 0.25, 4, 1e-5, 'rdp', 0.5, 3.0, '{}', '2026-01-01T00:00:00+00:00');
"""


def test_a_schema_1_ledger_is_migrated_and_keeps_its_spends(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_1)
    with Ledger.open(path) as ledger:
        (old,) = ledger.spends()
        assert old.history_entry == (2.0, 0.25, 4)
        assert old.run_id is None
        assert old.noise_pairs == 0
        state = {"version": 1, "kind": "rdp", "history": []}
        kwargs = {
            "noise_multiplier": 2.0,
            "sample_rate": 0.25,
            "steps": 4,
            "delta": 1e-5,
            "accountant": "rdp",
            "epsilon": 0.7,
            "budget_epsilon": 3.0,
            "accountant_state": state,
            "run_id": "run-0123456789",
            "noise_pairs": 10,
        }
        first = ledger.record_spend("f", 1, **kwargs)  # type: ignore[arg-type]
        again = ledger.record_spend("f", 2, **kwargs)  # the same run, under another number
        assert again == first
        assert [s.run_id for s in ledger.spends()] == [None, "run-0123456789"]
        assert ledger.noise_pairs() == 10
    with Ledger.open(path) as reopened:  # the migration ran once
        assert len(reopened.spends()) == 2
