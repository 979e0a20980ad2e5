"""From the console's query results to charts and to the live view of a running round."""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from coordinator.console.queries import LedgerPoint, ResultPoint, RoundLine
from coordinator.reports import charts

#: Counts reported beside the metrics (validation samples), not metrics to plot.
NOT_METRICS: Final = frozenset({"n", "auc_error_bound"})
#: The metric each task's curve leads with, by preference.
PRIMARY_METRICS: Final = ("auc", "accuracy", "mae", "rmse")
LOWER_IS_BETTER: Final = frozenset({"mae", "rmse", "mse", "loss"})
FEDERATION_WIDE: Final = "federation-wide"
#: Drawn page fragments kept, keyed by what they show and the version of the data behind it.
FRAGMENTS_KEPT: Final = 64

T = TypeVar("T")
_fragments: OrderedDict[Hashable, object] = OrderedDict()
_fragments_lock = threading.Lock()


def memo(key: Hashable, build: Callable[[], T]) -> T:
    """`build()` once per `key` (which must name the data's version): a page whose data did
    not change since it was last drawn reads nothing more and draws nothing again."""
    with _fragments_lock:
        if key in _fragments:
            _fragments.move_to_end(key)
            return _fragments[key]  # type: ignore[return-value]  # stored by this key's build
    value = build()
    with _fragments_lock:
        _fragments[key] = value
        while len(_fragments) > FRAGMENTS_KEPT:
            _fragments.popitem(last=False)
    return value


def round_timeline(lines: Sequence[RoundLine]) -> str:
    """Each round's stages on its own clock (seconds since it started), dropouts noted."""
    rows = []
    for line in lines:
        if not line.stages:
            continue
        origin = line.stages[0].opened_at
        last = max((s.closed_at or s.opened_at) for s in line.stages)
        bars = []
        for stage in line.stages:
            if stage.stage in ("completed", "failed"):
                continue
            start = (stage.opened_at - origin).total_seconds()
            stop = ((stage.closed_at or last) - origin).total_seconds()
            answered = "" if stage.responders is None else f", {stage.responders} answered"
            tip = f"round {line.number} {stage.stage}: {stop - start:.2f} s{answered}"
            bars.append(charts.StageBar(stage.stage, start, stop, tip))
        rows.append(
            charts.TimelineRow(
                f"round {line.number}", bars, "; ".join(line.dropouts), line.stage == "failed"
            )
        )
    return charts.timeline_chart(
        "Stages of each round", rows, x_label="seconds since the round started"
    )


def live_state(line: RoundLine) -> dict[str, object]:
    """What the round page's poller shows: JSON of plain values, nothing secret."""
    return {
        "number": line.number,
        "stage": line.stage,
        "finished": line.finished,
        "failure_reason": line.failure_reason,
        "participants": line.participants,
        "counts": line.counts,
        "dropouts": line.dropouts,
        "wall_s": line.wall_s,
        "stages": [
            {
                "stage": s.stage,
                "opened_at": s.opened_at.isoformat(),
                "closed_at": None if s.closed_at is None else s.closed_at.isoformat(),
                "deadline": None if s.deadline is None else s.deadline.isoformat(),
                "duration_s": s.duration_s,
                "responders": s.responders,
            }
            for s in line.stages
        ],
    }


@dataclass(frozen=True)
class Curve:
    """One task's metric over rounds: per institution where recorded, and federation-wide."""

    task: str
    metric: str
    per_institution: bool
    last: dict[str, tuple[int, float]]  # who -> (round, value) of the last point

    @property
    def title(self) -> str:
        better = "lower is better" if self.metric in LOWER_IS_BETTER else "higher is better"
        return f"{self.task}: {self.metric} ({better})"


def result_curves(tasks: Sequence[str], points: Sequence[ResultPoint]) -> list[tuple[Curve, str]]:
    """A chart per task and metric, the primary metric first."""
    grouped: dict[tuple[str, str], list[ResultPoint]] = defaultdict(list)
    for point in points:
        if point.metric not in NOT_METRICS:
            grouped[(point.task, point.metric)].append(point)
    out = []
    for task in tasks:
        metrics = {metric for (t, metric) in grouped if t == task}
        ordered = [m for m in PRIMARY_METRICS if m in metrics] + sorted(
            metrics - set(PRIMARY_METRICS)
        )
        for metric in ordered:
            out.append(_curve(task, metric, grouped[(task, metric)]))
    return out


def _curve(task: str, metric: str, points: Sequence[ResultPoint]) -> tuple[Curve, str]:
    # Federation-wide: only what the coordinator recorded from the secure sums (an average of
    # the institutions that opted in would be neither federation-wide nor weighted right).
    per: dict[str, list[tuple[float, float]]] = defaultdict(list)
    wide: dict[int, float] = {}
    for p in points:
        if p.institution is None:
            wide[p.round_number] = p.value
        else:
            per[p.institution].append((float(p.round_number), p.value))
    palette = charts.colours(sorted(per))
    series = [
        charts.Series(name, sorted(values), palette[name]) for name, values in sorted(per.items())
    ]
    if wide:
        series.append(
            charts.Series(
                FEDERATION_WIDE,
                sorted((float(n), v) for n, v in wide.items()),
                charts.AVERAGE_COLOUR,
                2.6,
            )
        )
    last = {s.label: (int(s.points[-1][0]), s.points[-1][1]) for s in series if s.points}
    curve = Curve(task, metric, bool(per), last)
    return curve, charts.line_chart(curve.title, series, y_label=metric)


def _by_institution(points: Sequence[LedgerPoint]) -> dict[str, list[LedgerPoint]]:
    per: dict[str, list[LedgerPoint]] = defaultdict(list)
    for point in points:
        per[point.institution].append(point)
    return dict(sorted(per.items()))


def epsilon_chart(points: Sequence[LedgerPoint], *, title: str | None = None) -> str:
    """Cumulative ε per institution as recomputed (solid) and its budget (dashed)."""
    per = _by_institution(points)
    palette = charts.colours(list(per))
    series = [
        charts.Series(
            name, [(float(p.round_number), p.recomputed_epsilon) for p in rows], palette[name]
        )
        for name, rows in per.items()
    ]
    budgets = {
        name: rows[-1].budget_epsilon for name, rows in per.items() if rows[-1].budget_epsilon
    }
    last_round = max((p.round_number for p in points), default=1)
    first_round = min((p.round_number for p in points), default=1)
    ends = (float(first_round), float(last_round))
    if budgets and len(set(budgets.values())) == 1:
        budget = next(iter(budgets.values()))
        assert budget is not None
        series.append(
            charts.Series(
                "budget (every institution)",
                [(x, budget) for x in ends],
                charts.NEUTRAL_COLOUR,
                1.2,
                True,
            )
        )
    else:
        for name, value in budgets.items():
            assert value is not None
            series.append(
                charts.Series(
                    f"{name} budget", [(x, value) for x in ends], palette[name], 1.0, True
                )
            )
    return charts.line_chart(
        title or "Cumulative ε per institution (recomputed) and budget",
        series,
        y_label="ε",
        y_from_zero=True,
    )


def epsilon_gap_chart(points: Sequence[LedgerPoint]) -> str:
    """Reported minus recomputed ε per institution: zero where they agree."""
    per = _by_institution(points)
    palette = charts.colours(list(per))
    series = [
        charts.Series(
            name,
            [(float(p.round_number), p.reported_epsilon - p.recomputed_epsilon) for p in rows],
            palette[name],
        )
        for name, rows in per.items()
    ]
    return charts.line_chart("Reported minus recomputed ε (0: they agree)", series, y_label="Δε")
