"""Rich tables of what the coordinator reports: rounds, task-wise results, privacy spend.

Shared by `fmtl admin` and `fmtl demo`, so an admin sees the same views the demo prints.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from rich import box
from rich.table import Table

from fmtl.admin.client import (
    FederationInfo,
    InstitutionInfo,
    LedgerEntry,
    ModelVersionInfo,
    ResultInfo,
    RoundInfo,
)

#: Metrics where lower is better; the others (AUC, accuracy) are better higher.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "loss", "mse"})
AVERAGE = "average"
#: Not metrics: counts the agents report beside them (validation samples).
NOT_METRICS = frozenset({"n"})
#: What the per-round results table leaves out by default (the report shows it).
TERMINAL_HIDDEN = frozenset({"loss"})


def _compact(title: str) -> Table:
    """A table that fits a terminal: a rule under the header, no vertical borders."""
    return Table(title=title, box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f"{(end - start).total_seconds():.1f}"


def federations_table(items: Sequence[FederationInfo]) -> Table:
    table = Table(title="Federations")
    for column in ("name", "status", "tasks", "fingerprint", "created"):
        table.add_column(column)
    for item in items:
        table.add_row(
            item.name,
            item.status,
            ", ".join(item.tasks),
            item.fingerprint[:16],
            _when(item.created_at),
        )
    return table


def institutions_table(items: Sequence[InstitutionInfo]) -> Table:
    table = Table(title="Institutions")
    for column in ("name", "state", "tasks", "key fingerprint", "enrolled"):
        table.add_column(column)
    for item in items:
        table.add_row(
            item.name,
            item.state,
            ", ".join(item.tasks),
            (item.key_fingerprint or "")[:16],
            _when(item.enrolled_at),
        )
    return table


def rounds_table(items: Sequence[RoundInfo]) -> Table:
    table = _compact("Rounds")
    for column in ("round", "stage", "participants", "t", "base model", "started", "seconds"):
        table.add_column(column, justify="right" if column != "stage" else "left", no_wrap=True)
    for item in items:
        stage = (
            item.stage if item.failure_reason is None else f"{item.stage}: {item.failure_reason}"
        )
        table.add_row(
            str(item.number),
            stage,
            str(item.participants),
            "" if item.threshold is None else str(item.threshold),
            "" if item.base_version is None else str(item.base_version),
            _when(item.started_at),
            _seconds(item.started_at, item.finished_at),
        )
    return table


def round_table(item: RoundInfo, names: dict[int, str] | None = None) -> Table:
    """One round's stages (with durations) and participants."""
    table = Table(title=f"Round {item.number}: {item.stage}")
    for column in ("stage", "opened", "seconds", "responders"):
        table.add_column(column)
    for stage in item.stages:
        table.add_row(
            stage.stage,
            _when(stage.opened_at),
            _seconds(stage.opened_at, stage.closed_at),
            "" if stage.responders is None else str(stage.responders),
        )
    for participant in item.participant_list:
        who = (names or {}).get(
            participant.institution_id, f"institution {participant.institution_id}"
        )
        dropped = f" at {participant.dropped_at_stage}" if participant.dropped_at_stage else ""
        table.add_row(f"  {who}", "", "", f"{participant.status}{dropped}")
    return table


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def results_table(
    results: Iterable[ResultInfo],
    round_number: int,
    title: str | None = None,
    *,
    hide: frozenset[str] = TERMINAL_HIDDEN,
) -> Table:
    """Task x metric rows; one column per institution, then their sample-weighted average.

    Rows recorded federation-wide (institution = null) are shown as the average column when
    present; otherwise the average is computed here, weighted by validation samples.
    """
    rows = [
        item
        for item in results
        if item.round == round_number and item.metric not in NOT_METRICS | hide
    ]
    institutions = sorted({item.institution for item in rows if item.institution is not None})
    cells: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    weights: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for item in rows:
        key = (item.task, item.metric)
        who = AVERAGE if item.institution is None else item.institution
        cells[key][who] = item.value
        weights[key][who] = item.n_samples or 1
    table = Table(
        title=title or f"Round {round_number}: task-wise results (validation)",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("task", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    for name in institutions:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column(AVERAGE, justify="right", style="bold", no_wrap=True)
    for (task, metric), values in sorted(cells.items()):
        average = values.get(AVERAGE)
        if average is None:
            average = weighted_average(
                {who: value for who, value in values.items() if who != AVERAGE},
                weights[(task, metric)],
            )
        table.add_row(
            task, metric, *(_format(values.get(name)) for name in institutions), _format(average)
        )
    return table


def weighted_average(values: dict[str, float], weights: dict[str, int]) -> float | None:
    if not values:
        return None
    total = sum(weights.get(who, 1) for who in values)
    return sum(value * weights.get(who, 1) for who, value in values.items()) / total


def spend_table(entries: Sequence[LedgerEntry], round_number: int | None = None) -> Table:
    """Each institution's cumulative ε after a round (or its latest), and its budget."""
    latest: dict[str, LedgerEntry] = {}
    for entry in sorted(entries, key=lambda e: e.round):
        if round_number is None or entry.round <= round_number:
            latest[entry.institution] = entry
    table = Table(
        title="Privacy spend: cumulative ε as reported, and as the coordinator recomputed it",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    for column in ("institution", "round", "σ", "q", "steps", "ε", "ε check", "budget", ""):
        table.add_column(
            column, justify="left" if column == "institution" else "right", no_wrap=True
        )
    for name, entry in sorted(latest.items()):
        table.add_row(
            name,
            str(entry.round),
            f"{entry.noise_multiplier:.3f}",
            f"{entry.sample_rate:.3f}",
            str(entry.steps),
            f"{entry.reported_epsilon:.3f}",
            f"{entry.recomputed_epsilon:.3f}",
            "" if entry.budget_epsilon is None else f"{entry.budget_epsilon:.2f}",
            "[red]MISMATCH[/red]" if entry.mismatch else "[green]ok[/green]",
        )
    return table


def ledger_table(entries: Sequence[LedgerEntry]) -> Table:
    federations = sorted({entry.federation for entry in entries})
    deltas = sorted({f"{entry.delta:g}" for entry in entries})
    accountants = sorted({entry.accountant for entry in entries})
    table = _compact(
        f"Privacy ledger ({', '.join(accountants) or 'no entries'}; δ = {', '.join(deltas) or '-'})"
    )
    columns = ["institution", "round", "σ", "q", "steps", "ε", "ε recomputed"]
    columns += ["budget", "check"]
    if len(federations) > 1:
        columns.insert(0, "federation")
    for column in columns:
        table.add_column(
            column,
            no_wrap=True,
            justify="left" if column in ("federation", "institution") else "right",
        )
    for entry in entries:
        row = [
            entry.institution,
            str(entry.round),
            f"{entry.noise_multiplier:.3f}",
            f"{entry.sample_rate:.3f}",
            str(entry.steps),
            f"{entry.reported_epsilon:.3f}",
            f"{entry.recomputed_epsilon:.3f}",
            "" if entry.budget_epsilon is None else f"{entry.budget_epsilon:.2f}",
            "[red]MISMATCH[/red]" if entry.mismatch else "ok",
        ]
        if len(federations) > 1:
            row.insert(0, entry.federation)
        table.add_row(*row)
    return table


def models_table(items: Sequence[ModelVersionInfo]) -> Table:
    table = Table(title="Model versions")
    for column in ("version", "round id", "bytes", "sha256", "created"):
        table.add_column(column)
    for item in items:
        table.add_row(
            str(item.version),
            "" if item.round_id is None else str(item.round_id),
            str(item.size_bytes),
            item.sha256[:16],
            _when(item.created_at),
        )
    return table
