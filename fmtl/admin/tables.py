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
#: The column of the figures computed from the secure sum of every survivor's statistics.
FEDERATION_WIDE = "federation"
#: Not metrics to show in their own row: the binned AUC's error bound goes beside the AUC.
AUC_ERROR_BOUND = "auc_error_bound"
NOT_METRICS = frozenset({"n", AUC_ERROR_BOUND})
#: What the per-round results table leaves out by default (the report shows it).
TERMINAL_HIDDEN = frozenset({"loss"})
#: Says where each figure comes from, under every results table.
RESULTS_CAPTION = (
    "federation: federation-wide, over the union of the participants' validation splits, "
    "from the secure sum of their statistics (n samples / institutions; AUC binned, ± its "
    "largest error). Other columns: institutions that opted in to send their own in clear."
)


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
    """Task x metric rows: the federation-wide figure, then one column per institution that
    sent its own (opted in), and what the federation-wide figure rests on."""
    chosen = [item for item in results if item.round == round_number]
    bounds = {
        item.task: item.value
        for item in chosen
        if item.federation_wide and item.metric == AUC_ERROR_BOUND
    }
    rows = [item for item in chosen if item.metric not in NOT_METRICS | hide]
    institutions = sorted({item.institution for item in rows if item.institution is not None})
    cells: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    behind: dict[str, str] = {}
    for item in rows:
        key = (item.task, item.metric)
        if item.institution is None:
            text = _format(item.value)
            if item.metric == "auc" and item.task in bounds:
                text += f" ±{bounds[item.task]:.3f}"
            cells[key][FEDERATION_WIDE] = text
            if item.n_samples is not None and item.institutions is not None:
                behind[item.task] = f"{item.n_samples} / {item.institutions}"
        else:
            cells[key][item.institution] = _format(item.value)
    table = Table(
        title=title or f"Round {round_number}: task-wise results (validation)",
        caption=RESULTS_CAPTION,
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("task", no_wrap=True)
    table.add_column("metric", no_wrap=True)
    table.add_column(FEDERATION_WIDE, justify="right", style="bold", no_wrap=True)
    for name in institutions:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("n / inst.", justify="right", no_wrap=True)
    for (task, metric), values in sorted(cells.items()):
        table.add_row(
            task,
            metric,
            values.get(FEDERATION_WIDE, "-"),
            *(values.get(name, "-") for name in institutions),
            behind.get(task, ""),
        )
    return table


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
            _ledger_check(entry),
        ]
        if len(federations) > 1:
            row.insert(0, entry.federation)
        table.add_row(*row)
    return table


def _ledger_check(entry: LedgerEntry) -> str:
    problems = [
        *(["MISMATCH"] if entry.mismatch else []),
        *([f"δ ≠ spec {entry.spec_delta:g}"] if entry.delta_mismatch and entry.spec_delta else []),
    ]
    return f"[red]{'; '.join(problems)}[/red]" if problems else "ok"


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
