"""The demo's HTML report: one self-contained file (inline SVG and CSS, no script, no network).

Sections: the run's settings, the final task-wise results, learning curves per task (each
hospital and the average), each hospital's privacy budget over rounds, the round timeline
with stage durations, the privacy ledger and the audit-log verification. Everything comes
from a `DemoRecord`, so a report can be re-rendered from `record.json` at any time:

    python -m fmtl.demo.report RUN/record.json RUN/report.html
"""

from __future__ import annotations

import html
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fmtl.demo.record import DemoRecord

#: Line colours of hospitals (colour-blind safe, Okabe-Ito); the average is drawn in black.
PALETTE: Final = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
AVERAGE_COLOUR: Final = "#000000"
STAGE_COLOURS: Final = {
    "scheduled": "#BBBBBB",
    "advertise_keys": "#56B4E9",
    "share_keys": "#0072B2",
    "masked_input": "#E69F00",
    "consistency_check": "#CC79A7",
    "unmasking": "#009E73",
    "aggregating": "#D55E00",
}
LOWER_IS_BETTER: Final = frozenset({"mae", "rmse", "mse", "loss"})

WIDTH: Final = 440
HEIGHT: Final = 260
MARGIN_LEFT: Final = 52
MARGIN_RIGHT: Final = 12
MARGIN_TOP: Final = 28
MARGIN_BOTTOM: Final = 40


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _el(tag: str, body: str = "", **attrs: object) -> str:
    """An SVG element; attribute names use `_` for `-` (`stroke_width`) and `cls` for class."""
    rendered = " ".join(
        f'{"class" if key == "cls" else key.replace("_", "-")}="{_e(value)}"'
        for key, value in attrs.items()
    )
    return f"<{tag} {rendered}>{body}</{tag}>" if body else f"<{tag} {rendered}/>"


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high - low < 1e-12:
        return [low]
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        if value >= low - step * 1e-9:
            ticks.append(round(value, 10))
        value += step
    return ticks or [low]


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    colour: str
    width: float = 2.0
    dashed: bool = False


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str = "round",
    y_label: str = "",
    integer_x: bool = True,
    y_from_zero: bool = False,
) -> str:
    """An SVG line chart with axes, ticks, markers and a legend."""
    points = [p for s in series for p in s.points]
    if not points:
        return f'<p class="empty">{_e(title)}: nothing recorded.</p>'
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 1e-12:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or max(abs(y0) * 0.1, 0.05)
    y0, y1 = (0.0 if y_from_zero and y0 >= 0 else y0 - pad), y1 + pad
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return MARGIN_LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return MARGIN_TOP + (1 - (y - y0) / (y1 - y0)) * plot_h

    total_h = HEIGHT + 18 * (len(series) // 3) + 18
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {total_h}" '
        f'class="chart" role="img" aria-label="{_e(title)}">',
        _el("text", _e(title), x=WIDTH / 2, y=16, cls="title"),
        _el("rect", x=MARGIN_LEFT, y=MARGIN_TOP, width=plot_w, height=plot_h, cls="plot"),
    ]
    for tick in _nice_ticks(y0, y1):
        level = f"{sy(tick):.1f}"
        out.append(
            _el("line", x1=MARGIN_LEFT, x2=WIDTH - MARGIN_RIGHT, y1=level, y2=level, cls="grid")
        )
        out.append(
            _el("text", f"{tick:g}", x=MARGIN_LEFT - 4, y=f"{sy(tick) + 4:.1f}", cls="ytick")
        )
    x_ticks = (
        sorted({int(x) for x in xs})
        if integer_x and len({int(x) for x in xs}) <= 12
        else _nice_ticks(x0, x1)
    )
    for tick in x_ticks:
        x = sx(tick)
        out.append(_el("text", f"{tick:g}", x=f"{x:.1f}", y=MARGIN_TOP + plot_h + 14, cls="xtick"))
    centre = MARGIN_LEFT + plot_w / 2
    out.append(_el("text", _e(x_label), x=centre, y=MARGIN_TOP + plot_h + 30, cls="axis"))
    if y_label:
        out.append(
            f'<text x="12" y="{MARGIN_TOP + plot_h / 2}" class="axis" '
            f'transform="rotate(-90 12 {MARGIN_TOP + plot_h / 2})">{_e(y_label)}</text>'
        )
    for item in series:
        if not item.points:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in item.points)
        dash = ' stroke-dasharray="5 4"' if item.dashed else ""
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{item.colour}" '
            f'stroke-width="{item.width}"{dash}><title>{_e(item.label)}</title></polyline>'
        )
        if not item.dashed:
            for x, y in item.points:
                out.append(
                    f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{item.colour}">'
                    f"<title>{_e(item.label)}: {y:.4g} at {x:g}</title></circle>"
                )
    legend_y = HEIGHT + 4
    for index, item in enumerate(series):
        lx = MARGIN_LEFT + (index % 3) * 130
        ly = legend_y + (index // 3) * 18
        dash = ' stroke-dasharray="5 4"' if item.dashed else ""
        out.append(
            f'<line x1="{lx}" x2="{lx + 18}" y1="{ly}" y2="{ly}" stroke="{item.colour}" '
            f'stroke-width="{item.width}"{dash}/>'
            f'<text x="{lx + 22}" y="{ly + 4}" class="legend">{_e(item.label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def learning_curves(record: DemoRecord) -> str:
    hospitals = [h.name for h in record.hospitals]
    colours = _colours(hospitals)
    charts = []
    for task in record.tasks or sorted({r.task for r in record.results}):
        for metric in record.metrics_of(task):
            curves = record.curve(task, metric)
            series = [
                Series(
                    name,
                    [(float(x), y) for x, y in points],
                    AVERAGE_COLOUR if name == "average" else colours.get(name, "#777777"),
                    3.0 if name == "average" else 1.6,
                )
                for name, points in curves.items()
            ]
            better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
            charts.append(line_chart(f"{task}: {metric} ({better})", series, y_label=metric))
    if not charts:
        return '<p class="empty">No task-wise results were recorded.</p>'
    return '<div class="grid">' + "".join(f"<figure>{c}</figure>" for c in charts) + "</div>"


def privacy_chart(record: DemoRecord) -> str:
    curves = record.epsilon_curves()
    names = [h.name for h in record.hospitals] or list(curves)
    colours = _colours(names)
    last_round = max((r.number for r in record.rounds), default=1)
    series = [
        Series(name, [(float(x), y) for x, y in points], colours.get(name, "#777777"))
        for name, points in curves.items()
    ]
    budgets = record.budgets()
    ends = (1.0, float(last_round))
    if budgets and len(set(budgets.values())) == 1:
        budget = next(iter(budgets.values()))
        series.append(
            Series("budget (every hospital)", [(x, budget) for x in ends], "#777777", 1.2, True)
        )
    else:
        for name, budget in sorted(budgets.items()):
            colour = colours.get(name, "#777777")
            series.append(Series(f"{name} budget", [(x, budget) for x in ends], colour, 1.0, True))
    return line_chart(
        "Cumulative ε per hospital (coordinator's recomputation)",
        series,
        y_label="ε",
        y_from_zero=True,
    )


def timeline_chart(record: DemoRecord) -> str:
    """One bar per round: its stages side by side, widths in seconds; dropouts named."""
    rounds = [r for r in record.rounds if r.stages]
    if not rounds:
        return '<p class="empty">No round ran.</p>'
    origin = min(stage.opened_at for r in rounds for stage in r.stages)
    end = max((stage.closed_at or stage.opened_at) for r in rounds for stage in r.stages)
    total = max((end - origin).total_seconds(), 1e-3)
    bar_h, gap, left, right = 18, 8, 70, 16
    width = 900
    plot_w = width - left - right
    height = len(rounds) * (bar_h + gap) + 60
    names = record.institution_names()
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="timeline" '
        'role="img" aria-label="Round timeline">'
    ]
    for tick in _nice_ticks(0.0, total, 8):
        x = left + tick / total * plot_w
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="4" y2="{height - 44}" class="grid"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 30}" class="xtick">{tick:g}</text>')
    axis = "seconds since the first round opened"
    out.append(_el("text", axis, x=left + plot_w / 2, y=height - 14, cls="axis"))
    for row, item in enumerate(rounds):
        y = 6 + row * (bar_h + gap)
        label = f"round {item.number}" + (" ✗" if item.stage == "failed" else "")
        out.append(f'<text x="{left - 6}" y="{y + 13}" class="ytick">{_e(label)}</text>')
        for stage in item.stages:
            if stage.stage in ("completed", "failed"):
                continue
            start = (stage.opened_at - origin).total_seconds()
            stop = ((stage.closed_at or end) - origin).total_seconds()
            x = left + start / total * plot_w
            w = max(0.8, (stop - start) / total * plot_w)
            colour = STAGE_COLOURS.get(stage.stage, "#999999")
            responders = "" if stage.responders is None else f", {stage.responders} answered"
            tip = f"round {item.number} {stage.stage}: {stop - start:.2f} s{responders}"
            out.append(
                _el(
                    "rect",
                    f"<title>{_e(tip)}</title>",
                    x=f"{x:.1f}",
                    y=y,
                    width=f"{w:.1f}",
                    height=bar_h,
                    fill=colour,
                )
            )
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
        note = "; ".join(dropped + declined)
        if note:
            finish = ((item.finished_at or end) - origin).total_seconds()
            begin = (item.stages[0].opened_at - origin).total_seconds()
            if finish / total < 0.6:  # room on the right of the bar
                at, anchor = left + finish / total * plot_w + 4, "start"
            else:  # late rounds: on the left of the bar, inside the picture
                at, anchor = left + begin / total * plot_w - 4, "end"
            out.append(
                _el("text", _e(note), x=f"{at:.1f}", y=y + 13, cls="note", text_anchor=anchor)
            )
    out.append("</svg>")
    legend = "".join(
        f'<span class="key"><span class="swatch" style="background:{colour}"></span>'
        f"{_e(stage)}</span>"
        for stage, colour in STAGE_COLOURS.items()
    )
    return "".join(out) + f'<p class="legend">{legend}</p>'


def stage_table(record: DemoRecord) -> str:
    stages = [s for s in STAGE_COLOURS if s != "scheduled"]
    head = "".join(f"<th>{_e(s)}</th>" for s in stages)
    rows = []
    for item in record.rounds:
        durations = {
            s.stage: (s.closed_at - s.opened_at).total_seconds()
            for s in item.stages
            if s.closed_at is not None
        }
        cells = "".join(
            f"<td>{durations[s]:.2f}</td>" if s in durations else "<td>–</td>" for s in stages
        )
        wall = (
            f"{(item.finished_at - item.started_at).total_seconds():.2f}"
            if item.finished_at and item.started_at
            else "–"
        )
        survivors = sum(1 for p in item.participant_list if p.status == "completed")
        rows.append(
            f"<tr><td>{item.number}</td><td>{_e(item.stage)}</td><td>{survivors}/{item.participants}</td>"
            f"<td>{item.threshold or '–'}</td>{cells}<td>{wall}</td></tr>"
        )
    return (
        "<table><thead><tr><th>round</th><th>outcome</th><th>in sum</th><th>t</th>"
        f"{head}<th>total s</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def results_summary(record: DemoRecord) -> str:
    """First and last round's value of every task and metric, per hospital and averaged."""
    if not record.results:
        return '<p class="empty">No task-wise results were recorded.</p>'
    hospitals = [h.name for h in record.hospitals]
    head = "".join(f"<th>{_e(h)}</th>" for h in [*hospitals, "average"])
    rows = []
    for task in record.tasks or sorted({r.task for r in record.results}):
        for metric in record.metrics_of(task):
            curves = record.curve(task, metric)
            cells = []
            for name in [*hospitals, "average"]:
                points = curves.get(name)
                if not points:
                    cells.append("<td>–</td>")
                    continue
                first, last = points[0][1], points[-1][1]
                cells.append(
                    f"<td>{last:.3f} <small>(round {points[0][0]}: {first:.3f})</small></td>"
                )
            rows.append(f"<tr><td>{_e(task)}</td><td>{_e(metric)}</td>{''.join(cells)}</tr>")
    return (
        f"<table><thead><tr><th>task</th><th>metric</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def ledger_table(record: DemoRecord) -> str:
    if not record.ledger:
        return '<p class="empty">No privacy spend was recorded.</p>'
    rows = "".join(
        f"<tr><td>{e.round}</td><td>{_e(e.institution)}</td><td>{e.noise_multiplier:.3f}</td>"
        f"<td>{e.sample_rate:.4f}</td><td>{e.steps}</td><td>{e.delta:.0e}</td>"
        f"<td>{e.reported_epsilon:.4f}</td><td>{e.recomputed_epsilon:.4f}</td>"
        f"<td>{'' if e.budget_epsilon is None else f'{e.budget_epsilon:.2f}'}</td>"
        + ('<td class="bad">mismatch</td>' if e.mismatch else '<td class="good">ok</td>')
        + "</tr>"
        for e in sorted(record.ledger, key=lambda e: (e.round, e.institution))
    )
    return (
        "<table><thead><tr><th>round</th><th>hospital</th><th>σ</th><th>q</th><th>steps</th>"
        "<th>δ</th><th>ε reported</th><th>ε recomputed</th><th>budget</th><th>check</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


CSS: Final = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto}
body{max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}
h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.6rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left}
small{color:#777}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:1rem}
figure{margin:0}
svg.chart{width:100%;height:auto}
svg.timeline{width:100%;height:auto}
.title{font-size:13px;font-weight:600;text-anchor:middle}
.axis{font-size:11px;text-anchor:middle;fill:#555}
.xtick{font-size:10px;text-anchor:middle;fill:#555}
.ytick{font-size:10px;text-anchor:end;fill:#555}
.legend{font-size:10px}
.note{font-size:10px;fill:#D55E00}
.plot{fill:none;stroke:#ccc}
.grid line,line.grid{stroke:#eee}
.key{margin-right:1rem;font-size:.8rem}
.swatch{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}
.good{color:#007a3d}
.bad{color:#b00020;font-weight:600}
.empty{color:#777;font-style:italic}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem;font-size:.9rem}
dt{font-weight:600}
"""


def render_report(record: DemoRecord) -> str:
    """The whole report as one HTML document."""
    wall = record.wall_s
    completed = sum(1 for r in record.rounds if r.stage == "completed")
    settings = "".join(
        f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>" for key, value in record.settings.items()
    )
    hospitals = "".join(
        f"<li><b>{_e(h.name)}</b>: {_e(', '.join(h.tasks))}"
        + ("" if h.budget_epsilon is None else f" — budget ε = {h.budget_epsilon:g}")
        + "</li>"
        for h in record.hospitals
    )
    events = "".join(
        f"<li>{e.at:%H:%M:%S}{'' if e.round is None else f' (round {e.round})'}: {_e(e.what)}</li>"
        for e in record.events
    )
    if record.audit is None:
        audit = '<p class="empty">The audit log was not verified.</p>'
    elif record.audit.ok:
        audit = (
            f'<p class="good">Audit log intact: {record.audit.entries} hash-chained entries, '
            f"head <code>{_e(record.audit.head_hash)}</code>.</p>"
        )
    else:
        audit = (
            f'<p class="bad">Audit log broken at entry {record.audit.first_broken_seq}: '
            f"{_e(record.audit.reason)}</p>"
        )
    mismatches = sum(1 for e in record.ledger if e.mismatch)
    took = "" if wall is None else f", in {wall:.0f} s"
    started = f"{record.started_at:%Y-%m-%d %H:%M:%S}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fmtl demo — {_e(record.federation)}</title>
<style>{CSS}</style></head><body>
<h1>Federated multi-task learning: {_e(record.federation)}</h1>
<p>{completed} of {len(record.rounds)} rounds completed with secure aggregation and
differential privacy on {_e(record.stack)}{took}; started {started} UTC.
Each hospital's agent ran as its own process and talked to the coordinator over HTTP
with signed requests; the coordinator only ever saw masked updates and their sum.</p>
<h2>Hospitals and their tasks</h2><ul>{hospitals}</ul>
<h2>Task-wise results</h2>
<p>Metrics of the global model on each hospital's own validation split, evaluated by the
hospital at the start of each round (round r evaluates the model that rounds 1..r-1
produced); the average is weighted by validation samples. Last round, with the first in
brackets:</p>
{results_summary(record)}
<h2 id="curves">Learning curves</h2>
{learning_curves(record)}
<h2 id="privacy">Privacy budget</h2>
<p>Cumulative ε (δ as in the federation's DP spec) that each hospital reported after each
round, as the coordinator recomputed it from the reported noise multiplier, sampling rate
and steps ({mismatches} mismatch{"es" if mismatches != 1 else ""}). Dashed: each hospital's
own budget, which its agent enforces by declining a round that would exceed it.</p>
<figure>{privacy_chart(record)}</figure>
<h2 id="timeline">Round timeline</h2>
{timeline_chart(record)}
{stage_table(record)}
<h2>What happened</h2><ul>{events or "<li>Nothing unusual.</li>"}</ul>
<h2>Privacy ledger</h2>{ledger_table(record)}
<h2>Audit log</h2>{audit}
<h2>Settings</h2><dl>{settings}</dl>
</body></html>
"""


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
