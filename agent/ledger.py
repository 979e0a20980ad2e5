"""The institution's own privacy ledger: the source of truth of what it has spent.

An SQLite file in the state folder (mode 0600), written with full synchronous commits:

- `spends`: one row per local training run the agent did, keyed by the run's random
  identifier (`run_id`, also in its cached result and its spend report), with the DP
  parameters the accountant needs (noise multiplier, sampling rate, steps, δ), the noise
  pairs it drew (for the sampler's slack, `privacy.dp.noise`), the cumulative ε after it,
  the budget at the time, and the accountant's full state (`privacy.dp.Accountant`'s
  `state_dict()`) — so the history can be replayed by any accountant, and the exact
  state of the configured one is restored as it was. A run is recorded once whatever
  round number it was offered under: a round number offered again (after a crash, or by
  a coordinator that reuses numbers) never hides another run's spend;
- `rounds`: every round the coordinator offered — the plan the agent fixed for it (so a
  restarted agent trains with the very same parameters it checked against its budget),
  whether it joined or declined (and why), and how it ended.

A spend is recorded in one transaction *after* training and *before* the update leaves
the machine: a crash can make the agent over-count a round it never sent, never
under-count one it did. Nothing here holds model values or secrets.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from agent.errors import AgentError
from agent.identity import KEY_FILE_MODE
from privacy.dp.noise import NoiseDraws

#: Memo (`Ledger.remember`) of the latest round's metrics of the federated and the
#: personalised model on the local validation split (local only: `fmtl agent status`).
MODEL_METRICS_MEMO: Final = "model_metrics"
#: Bump with a migration step in `_migrate` when the schema changes.
SCHEMA_VERSION: Final = 2

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    federation TEXT NOT NULL,
    round INTEGER NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    noise_multiplier REAL,
    sample_rate REAL,
    steps INTEGER,
    projected_epsilon REAL,
    budget_epsilon REAL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (federation, round)
);
CREATE TABLE IF NOT EXISTS spends (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    federation TEXT NOT NULL,
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    delta REAL NOT NULL,
    accountant TEXT NOT NULL,
    epsilon REAL NOT NULL,
    budget_epsilon REAL NOT NULL,
    accountant_state TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    run_id TEXT,
    noise_pairs INTEGER NOT NULL DEFAULT 0,
    UNIQUE (federation, round, attempt)
);
CREATE UNIQUE INDEX IF NOT EXISTS spends_run_id ON spends (run_id) WHERE run_id IS NOT NULL;
"""
#: Schema 1 -> 2: training runs get their identifier and their noise pairs.
_MIGRATE_1_TO_2: Final = (
    "ALTER TABLE spends ADD COLUMN run_id TEXT",
    "ALTER TABLE spends ADD COLUMN noise_pairs INTEGER NOT NULL DEFAULT 0",
)


class LedgerError(AgentError):
    """The ledger file cannot be opened or is not an fmtl ledger."""


class RoundStatus(enum.StrEnum):
    """Where a round stands for this institution."""

    JOINED = "joined"  # the budget allowed it; plan fixed
    DECLINED = "declined"  # refused (reason: budget, data, ...)
    TRAINED = "trained"  # local training done and its spend recorded
    COMPLETED = "completed"  # the round completed with this institution in the aggregate
    DROPPED = "dropped"  # the coordinator dropped it (missed a deadline, crash)
    FAILED = "failed"  # the round failed as a whole

    @property
    def final(self) -> bool:
        return self in {
            RoundStatus.DECLINED,
            RoundStatus.COMPLETED,
            RoundStatus.DROPPED,
            RoundStatus.FAILED,
        }


@dataclass(frozen=True)
class Spend:
    federation: str
    round: int
    attempt: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    epsilon: float
    budget_epsilon: float
    recorded_at: datetime
    run_id: str | None = None
    noise_pairs: int = 0

    @property
    def history_entry(self) -> tuple[float, float, int]:
        """What an accountant needs of this training: (σ, q, steps)."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class RoundEntry:
    federation: str
    round: int
    status: RoundStatus
    reason: str | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    projected_epsilon: float | None
    budget_epsilon: float | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class LedgerSummary:
    """Counts per round status, the spends, and the cumulative ε of the last one."""

    rounds: Mapping[RoundStatus, int]
    trainings: int
    epsilon_spent: float

    @property
    def joined(self) -> int:
        return sum(n for status, n in self.rounds.items() if status is not RoundStatus.DECLINED)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Ledger:
    """The ledger file; open it with `Ledger(path)` or `Ledger.open(path)` as a context."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
            os.close(fd)
        try:
            self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: not a usable ledger ({exc})") from None

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: Path) -> Iterator[Ledger]:
        ledger = cls(path)
        try:
            yield ledger
        finally:
            ledger.close()

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = None
            if db.execute("SELECT name FROM sqlite_master WHERE name = 'meta'").fetchone():
                row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = None if row is None else int(row[0])
            if version == 1:
                for statement in _MIGRATE_1_TO_2:
                    db.execute(statement)
                db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
            # One statement at a time: `executescript` would commit outside this transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path}: written by a newer fmtl (schema {row[0]}); upgrade fmtl"
                )

    # --- settings the agent remembers -----------------------------------------------------

    def remembered(self, key: str) -> dict[str, Any] | None:
        """A JSON value the agent stored under `key` (e.g. its noise plan), or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"memo:{key}",)).fetchone()
        if row is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

    def remember(self, key: str, value: Mapping[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (f"memo:{key}", json.dumps(value, sort_keys=True, allow_nan=False)),
            )

    # --- rounds --------------------------------------------------------------------------

    def round(self, federation: str, number: int) -> RoundEntry | None:
        row = self._db.execute(
            "SELECT federation, round, status, reason, noise_multiplier, sample_rate, steps, "
            "projected_epsilon, budget_epsilon, created_at, updated_at FROM rounds "
            "WHERE federation = ? AND round = ?",
            (federation, number),
        ).fetchone()
        return None if row is None else _round_entry(row)

    def rounds(self) -> list[RoundEntry]:
        rows = self._db.execute(
            "SELECT federation, round, status, reason, noise_multiplier, sample_rate, steps, "
            "projected_epsilon, budget_epsilon, created_at, updated_at FROM rounds "
            "ORDER BY created_at, round"
        ).fetchall()
        return [_round_entry(row) for row in rows]

    def join(
        self,
        federation: str,
        number: int,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        projected_epsilon: float,
        budget_epsilon: float,
    ) -> RoundEntry:
        """Fix the plan of a round the agent joins; an existing entry is kept unchanged."""
        now = _now()
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO rounds (federation, round, status, noise_multiplier, "
                "sample_rate, steps, projected_epsilon, budget_epsilon, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    federation,
                    number,
                    RoundStatus.JOINED.value,
                    noise_multiplier,
                    sample_rate,
                    steps,
                    projected_epsilon,
                    budget_epsilon,
                    now,
                    now,
                ),
            )
        entry = self.round(federation, number)
        assert entry is not None
        return entry

    def decline(
        self,
        federation: str,
        number: int,
        reason: str,
        *,
        projected_epsilon: float | None = None,
        budget_epsilon: float | None = None,
    ) -> RoundEntry:
        now = _now()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO rounds (federation, round, status, reason, projected_epsilon, "
                "budget_epsilon, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (federation, round) DO UPDATE SET status = excluded.status, "
                "reason = excluded.reason, updated_at = excluded.updated_at",
                (
                    federation,
                    number,
                    RoundStatus.DECLINED.value,
                    reason,
                    projected_epsilon,
                    budget_epsilon,
                    now,
                    now,
                ),
            )
        entry = self.round(federation, number)
        assert entry is not None
        return entry

    def finish(
        self, federation: str, number: int, status: RoundStatus, reason: str | None = None
    ) -> None:
        """Record how a round ended for this institution (no-op for an unknown round)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE rounds SET status = ?, reason = COALESCE(?, reason), updated_at = ? "
                "WHERE federation = ? AND round = ? AND status != ?",
                (status.value, reason, _now(), federation, number, RoundStatus.DECLINED.value),
            )

    # --- spends --------------------------------------------------------------------------

    def record_spend(
        self,
        federation: str,
        number: int,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        delta: float,
        accountant: str,
        epsilon: float,
        budget_epsilon: float,
        accountant_state: Mapping[str, Any],
        run_id: str | None = None,
        noise_pairs: int = 0,
    ) -> Spend:
        """Append one training run's spend and mark its round trained, in one transaction.

        A run already recorded (same `run_id`) is not recorded again: its row is returned."""
        state = json.dumps(accountant_state, sort_keys=True, allow_nan=False)
        now = _now()
        if run_id is not None:
            known = self.spend_of_run(run_id)
            if known is not None:
                return known
        with self._transaction() as db:
            (attempt,) = db.execute(
                "SELECT COUNT(*) + 1 FROM spends WHERE federation = ? AND round = ?",
                (federation, number),
            ).fetchone()
            db.execute(
                "INSERT INTO spends (federation, round, attempt, noise_multiplier, sample_rate, "
                "steps, delta, accountant, epsilon, budget_epsilon, accountant_state, "
                "recorded_at, run_id, noise_pairs) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    federation,
                    number,
                    attempt,
                    noise_multiplier,
                    sample_rate,
                    steps,
                    delta,
                    accountant,
                    epsilon,
                    budget_epsilon,
                    state,
                    now,
                    run_id,
                    noise_pairs,
                ),
            )
            db.execute(
                "INSERT INTO rounds (federation, round, status, noise_multiplier, sample_rate, "
                "steps, budget_epsilon, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (federation, round) DO UPDATE SET status = excluded.status, "
                "updated_at = excluded.updated_at",
                (
                    federation,
                    number,
                    RoundStatus.TRAINED.value,
                    noise_multiplier,
                    sample_rate,
                    steps,
                    budget_epsilon,
                    now,
                    now,
                ),
            )
        return Spend(
            federation=federation,
            round=number,
            attempt=int(attempt),
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            delta=delta,
            accountant=accountant,
            epsilon=epsilon,
            budget_epsilon=budget_epsilon,
            recorded_at=_time(now),
            run_id=run_id,
            noise_pairs=noise_pairs,
        )

    def spend_of_run(self, run_id: str) -> Spend | None:
        """The spend recorded for training run `run_id`, if any."""
        rows = self._select_spends(" WHERE run_id = ?", [run_id])
        return rows[0] if rows else None

    def noise_pairs(self) -> int:
        """Noise pairs drawn by every recorded training run (the sampler's slack)."""
        return self.noise_draws().pairs

    def noise_draws(self) -> NoiseDraws:
        """What every recorded training run drew from the noise sampler: pairs, steps and
        the smallest noise multiplier (`privacy.dp.noise.sampler_slack`'s input)."""
        pairs, steps, sigma = self._db.execute(
            "SELECT COALESCE(SUM(noise_pairs), 0), COALESCE(SUM(steps), 0), "
            "MIN(noise_multiplier) FROM spends WHERE noise_pairs > 0"
        ).fetchone()
        return NoiseDraws(int(pairs), int(steps), math.inf if sigma is None else float(sigma))

    def spends(self, federation: str | None = None, number: int | None = None) -> list[Spend]:
        where: list[str] = []
        args: list[object] = []
        if federation is not None:
            where.append("federation = ?")
            args.append(federation)
        if number is not None:
            where.append("round = ?")
            args.append(number)
        return self._select_spends(" WHERE " + " AND ".join(where) if where else "", args)

    def _select_spends(self, where: str, args: list[object]) -> list[Spend]:
        query = (
            "SELECT federation, round, attempt, noise_multiplier, sample_rate, steps, delta, "
            "accountant, epsilon, budget_epsilon, recorded_at, run_id, noise_pairs FROM spends"
        )
        rows = self._db.execute(query + where + " ORDER BY id", args).fetchall()
        return [
            Spend(
                federation=row[0],
                round=int(row[1]),
                attempt=int(row[2]),
                noise_multiplier=float(row[3]),
                sample_rate=float(row[4]),
                steps=int(row[5]),
                delta=float(row[6]),
                accountant=str(row[7]),
                epsilon=float(row[8]),
                budget_epsilon=float(row[9]),
                recorded_at=_time(row[10]),
                run_id=row[11],
                noise_pairs=int(row[12]),
            )
            for row in rows
        ]

    def history(self) -> list[tuple[float, float, int]]:
        """Every training so far as (σ, q, steps), oldest first: the accountant's input."""
        return [spend.history_entry for spend in self.spends()]

    def accountant_state(self, accountant: str) -> dict[str, Any] | None:
        """The state of accountant `accountant` after the last training, if it recorded one
        (None when there is no history yet, or the last training used another accountant)."""
        row = self._db.execute(
            "SELECT accountant, accountant_state FROM spends ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None or row[0] != accountant:
            return None
        state: dict[str, Any] = json.loads(row[1])
        return state

    def summary(self) -> LedgerSummary:
        counts = dict.fromkeys(RoundStatus, 0)
        for status, n in self._db.execute("SELECT status, COUNT(*) FROM rounds GROUP BY status"):
            counts[RoundStatus(status)] = int(n)
        last = self._db.execute(
            "SELECT COUNT(*), (SELECT epsilon FROM spends ORDER BY id DESC LIMIT 1) FROM spends"
        ).fetchone()
        return LedgerSummary(
            rounds=counts, trainings=int(last[0]), epsilon_spent=float(last[1] or 0.0)
        )


def _round_entry(row: tuple[Any, ...]) -> RoundEntry:
    return RoundEntry(
        federation=row[0],
        round=int(row[1]),
        status=RoundStatus(row[2]),
        reason=row[3],
        noise_multiplier=row[4],
        sample_rate=row[5],
        steps=row[6],
        projected_epsilon=row[7],
        budget_epsilon=row[8],
        created_at=_time(row[9]),
        updated_at=_time(row[10]),
    )


__all__ = [
    "SCHEMA_VERSION",
    "Ledger",
    "LedgerError",
    "LedgerSummary",
    "RoundEntry",
    "RoundStatus",
    "Spend",
]
