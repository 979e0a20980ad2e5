"""The demo's HTML report: one self-contained file (inline SVG and CSS, no script, no network).

Sections: the run's settings, the final task-wise results, learning curves per task (the
federation-wide figure from the secure sums, and each hospital that opted in to send its
own), each hospital's privacy budget over rounds, the round timeline
with stage durations, the privacy ledger and the audit-log verification. Everything comes
from a `DemoRecord`, so a report can be re-rendered from `record.json` at any time:

    python -m fmtl.demo.report RUN/record.json RUN/report.html

Charts are drawn by `coordinator.reports.charts` and the page by a Jinja2 template, the same
rendering path as the coordinator's console and the auditor's privacy report.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from coordinator.reports import charts
from coordinator.reports.pages import environment, svg
from fmtl.admin.client import RoundInfo
from fmtl.demo.record import FEDERATION_WIDE, DemoRecord

LOWER_IS_BETTER: Final = frozenset({"mae", "rmse", "mse", "loss", "ece"})
#: The personalised models' average in the learning curves (hospitals' own figures).
PERSONALISED_COLOUR: Final = "#1a9850"
#: Metrics of the table comparing each hospital's federated and personalised model.
LOCAL_METRICS: Final = ("auc", "accuracy", "balanced_accuracy", "ece", "mae")
#: Stage columns of the round table (the timeline's stages less `scheduled`).
STAGES: Final = tuple(stage for stage in charts.STAGE_COLOURS if stage != "scheduled")


def _better(metric: str) -> str:
    return "lower is better" if metric in LOWER_IS_BETTER else "higher is better"


def learning_curves(record: DemoRecord) -> list[str]:
    """One chart per task and metric: federation-wide in black, each hospital that opted in."""
    palette = charts.colours([h.name for h in record.hospitals])
    out = []
    for task in record.tasks or sorted({r.task for r in record.results}):
        for metric in record.metrics_of(task):
            series = [
                charts.Series(
                    name,
                    [(float(x), y) for x, y in points],
                    charts.AVERAGE_COLOUR
                    if name == FEDERATION_WIDE
                    else palette.get(name, charts.NEUTRAL_COLOUR),
                    3.0 if name == FEDERATION_WIDE else 1.6,
                )
                for name, points in record.curve(task, metric).items()
            ]
            personalised = record.local_curve(task, metric, "personalised")
            if personalised:
                series.append(
                    charts.Series(
                        "personalised (average)",
                        [(float(x), y) for x, y in personalised],
                        PERSONALISED_COLOUR,
                        3.0,
                    )
                )
            out.append(
                charts.line_chart(f"{task}: {metric} ({_better(metric)})", series, y_label=metric)
            )
    return out


def privacy_chart(record: DemoRecord) -> str:
    """Cumulative ε per hospital, with each budget (one line when they are all equal)."""
    curves = record.epsilon_curves()
    palette = charts.colours([h.name for h in record.hospitals] or list(curves))
    last_round = max((r.number for r in record.rounds), default=1)
    series = [
        charts.Series(name, [(float(x), y) for x, y in points], palette.get(name))
        for name, points in curves.items()
    ]
    budgets = record.budgets()
    ends = (1.0, float(last_round))
    if budgets and len(set(budgets.values())) == 1:
        budget = next(iter(budgets.values()))
        series.append(
            charts.Series(
                "budget (every hospital)",
                [(x, budget) for x in ends],
                charts.NEUTRAL_COLOUR,
                1.2,
                dashed=True,
            )
        )
    else:
        for name, budget in sorted(budgets.items()):
            series.append(
                charts.Series(
                    f"{name} budget", [(x, budget) for x in ends], palette.get(name), 1.0, True
                )
            )
    return charts.line_chart(
        "Cumulative ε per hospital (coordinator's recomputation)",
        series,
        y_label="ε",
        y_from_zero=True,
    )


def timeline_rows(record: DemoRecord) -> list[charts.TimelineRow]:
    """One row per round that ran: its stages on one clock (since the first round opened)."""
    rounds = [r for r in record.rounds if r.stages]
    if not rounds:
        return []
    origin = min(stage.opened_at for r in rounds for stage in r.stages)
    end = max((stage.closed_at or stage.opened_at) for r in rounds for stage in r.stages)
    names = record.institution_names()
    rows = []
    for item in rounds:
        bars = []
        for stage in item.stages:
            if stage.stage in ("completed", "failed"):
                continue
            start = (stage.opened_at - origin).total_seconds()
            stop = ((stage.closed_at or end) - origin).total_seconds()
            responders = "" if stage.responders is None else f", {stage.responders} answered"
            tip = f"round {item.number} {stage.stage}: {stop - start:.2f} s{responders}"
            bars.append(charts.StageBar(stage.stage, start, stop, tip))
        rows.append(
            charts.TimelineRow(
                f"round {item.number}", bars, _dropouts(item, names), item.stage == "failed"
            )
        )
    return rows


def _dropouts(item: RoundInfo, names: dict[int, str]) -> str:
    dropped = [
        f"{names.get(p.institution_id, p.institution_id)} dropped at {p.dropped_at_stage}"
        for p in item.participant_list
        if p.status == "dropped"
    ]
    declined = [
        f"{names.get(p.institution_id, p.institution_id)} declined"
        for p in item.participant_list
        if p.status == "declined"
    ]
    return "; ".join(dropped + declined)


@dataclass(frozen=True)
class RoundLine:
    number: int
    outcome: str
    in_sum: str
    threshold: str
    durations: list[float | None]
    wall_s: float | None
    #: The slowest hospital's local work, and the rest of the round (the service).
    training_s: float | None = None
    service_s: float | None = None


def service_seconds(wall_s: float | None, training_s: float | None) -> float | None:
    """The part of a round that is not the slowest hospital's local work."""
    if wall_s is None or training_s is None:
        return None
    return max(wall_s - training_s, 0.0)


def round_lines(record: DemoRecord) -> list[RoundLine]:
    lines = []
    for item in record.rounds:
        durations = {
            s.stage: (s.closed_at - s.opened_at).total_seconds()
            for s in item.stages
            if s.closed_at is not None
        }
        survivors = sum(1 for p in item.participant_list if p.status == "completed")
        wall = (
            (item.finished_at - item.started_at).total_seconds()
            if item.finished_at and item.started_at
            else None
        )
        lines.append(
            RoundLine(
                number=item.number,
                outcome=item.stage,
                in_sum=f"{survivors}/{item.participants}",
                threshold=str(item.threshold or "–"),
                durations=[durations.get(s) for s in STAGES],
                wall_s=wall,
                training_s=record.training_s.get(item.number),
                service_s=service_seconds(wall, record.training_s.get(item.number)),
            )
        )
    return lines


@dataclass(frozen=True)
class ResultLine:
    task: str
    metric: str
    cells: list[tuple[float, int, float] | None]  # (last, first round, first value)
    #: The largest error of the last federation-wide AUC (binned scores), for AUC lines.
    bound: float | None = None


def result_lines(record: DemoRecord) -> tuple[list[str], list[ResultLine]]:
    """First and last round's value of every task and metric: federation-wide, then each
    hospital that opted in to send its own."""
    sent = {r.institution for r in record.results if r.institution is not None}
    columns = [FEDERATION_WIDE, *(h.name for h in record.hospitals if h.name in sent)]
    lines = []
    for task in record.tasks or sorted({r.task for r in record.results}):
        for metric in record.metrics_of(task):
            curves = record.curve(task, metric)
            cells: list[tuple[float, int, float] | None] = []
            for name in columns:
                points = curves.get(name)
                cells.append(None if not points else (points[-1][1], points[0][0], points[0][1]))
            bound = None
            wide = curves.get(FEDERATION_WIDE)
            if metric == "auc" and wide:
                bound = record.auc_error_bound(task, wide[-1][0])
            lines.append(ResultLine(task, metric, cells, bound))
    return columns, lines


@dataclass(frozen=True)
class LocalLine:
    task: str
    metric: str
    cells: list[tuple[float | None, float | None]]  # (federated, personalised) per column


def local_lines(record: DemoRecord) -> tuple[list[str], list[LocalLine]]:
    """Each hospital's federated and personalised model at its last round (its own
    figures), and their mean over hospitals weighted by validation samples."""
    columns = [h.name for h in record.hospitals if record.local_models.get(h.name)]
    if not columns:
        return [], []
    lines = []
    for task in record.tasks:
        for metric in LOCAL_METRICS:
            cells: list[tuple[float | None, float | None]] = []
            for name in columns:
                last = record.local_models[name][-1]
                fed = last.federated.get(task, {}).get(metric)
                own = (last.personalised or {}).get(task, {}).get(metric)
                cells.append((fed, own))
            fed_curve = record.local_curve(task, metric, "federated")
            own_curve = record.local_curve(task, metric, "personalised")
            cells.append(
                (
                    fed_curve[-1][1] if fed_curve else None,
                    own_curve[-1][1] if own_curve else None,
                )
            )
            if any(a is not None for a, _ in cells):
                lines.append(LocalLine(task, metric, cells))
    return [*columns, "mean"], lines


def render_report(record: DemoRecord) -> str:
    """The whole report as one HTML document."""
    columns, results = result_lines(record)
    local_columns, local = local_lines(record)
    rows = timeline_rows(record)
    template = environment("fmtl.demo").get_template("demo_report.html.j2")
    return template.render(
        record=record,
        completed=sum(1 for r in record.rounds if r.stage == "completed"),
        mismatches=sum(1 for e in record.ledger if e.mismatch),
        result_columns=columns,
        results=results,
        local_columns=local_columns,
        local=local,
        curves=[svg(chart) for chart in learning_curves(record)],
        privacy=svg(privacy_chart(record)),
        timeline=svg(charts.timeline_chart("Round timeline", rows)) if rows else None,
        stages=STAGES,
        stage_colours=charts.STAGE_COLOURS,
        rounds=round_lines(record),
        ledger=sorted(record.ledger, key=lambda e: (e.round, e.institution)),
    )


def write_report(record: DemoRecord, path: Path) -> Path:
    path.write_text(render_report(record), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m fmtl.demo.report RECORD.json REPORT.html", file=sys.stderr)
        return 2
    write_report(DemoRecord.load(Path(args[0])), Path(args[1]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
