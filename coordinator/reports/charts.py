"""Charts as inline SVG, drawn by matplotlib: the one rendering path of every page and report.

The console's pages, the auditor's privacy report and the `fmtl demo` report all draw their
charts here, with matplotlib's SVG backend (no browser script, no network: the SVG is part of
the page). Text stays text (`svg.fonttype = none`), so it is searchable, readable by screen
readers and small; each chart carries a `<title>` naming it and each series a `<title>`
naming the series (a tooltip in every browser), and the data behind every chart is also on
the page as a table for readers who cannot see it.

Rendering is serialised by a lock: matplotlib's rc settings are process-global, and the
console renders on FastAPI's thread pool.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, ParamSpec

P = ParamSpec("P")

#: Line colours (colour-blind safe, Okabe-Ito, then two dark greys for the 8th and 9th).
PALETTE: Final = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#8C7A00",
    "#555555",
    "#999999",
)
AVERAGE_COLOUR: Final = "#000000"
NEUTRAL_COLOUR: Final = "#777777"
#: Stage colours of the round timeline (Okabe-Ito, in stage order).
STAGE_COLOURS: Final = {
    "scheduled": "#BBBBBB",
    "advertise_keys": "#56B4E9",
    "share_keys": "#0072B2",
    "masked_input": "#E69F00",
    "consistency_check": "#CC79A7",
    "unmasking": "#009E73",
    "aggregating": "#D55E00",
}
#: Size of a line chart in inches at 100 dpi (the SVG scales to its box on the page).
LINE_SIZE: Final = (6.0, 3.6)
#: Legends with more entries than this are left out (the table under the chart names them).
MAX_LEGEND_ENTRIES: Final = 12
LEGEND_COLUMNS: Final = 4
#: Height a legend row adds to a chart (inches).
LEGEND_ROW_IN: Final = 0.22
SVG_NS: Final = "http://www.w3.org/2000/svg"
#: Rendered charts kept (a page reloaded with no new round draws nothing again).
CACHE_ENTRIES: Final = 128

_lock = threading.Lock()
_cache: dict[str, str] = {}
_RC: Final[dict[str, object]] = {
    "svg.fonttype": "none",  # text as <text>, not paths
    "svg.hashsalt": "fmtl",  # stable ids, so one input always gives the same bytes
    "font.family": "sans-serif",
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "axes.edgecolor": "#555555",
    "axes.labelcolor": "#222222",
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "path.simplify": True,  # 1,000 rounds x 100 institutions stay a small file
}


@dataclass(frozen=True)
class Series:
    """One line: (x, y) points, drawn solid with markers or dashed (a reference line)."""

    label: str
    points: Sequence[tuple[float, float]]
    colour: str | None = None
    width: float = 1.6
    dashed: bool = False


@dataclass(frozen=True)
class StageBar:
    """One stage of one round on the timeline: start and end in seconds since `origin`."""

    stage: str
    start_s: float
    end_s: float
    tip: str


@dataclass(frozen=True)
class TimelineRow:
    label: str
    bars: Sequence[StageBar]
    note: str = ""
    failed: bool = False


def _cached(render: Callable[P, str]) -> Callable[P, str]:
    """Memoise a chart by the repr of its inputs (frozen dataclasses and numbers)."""

    @functools.wraps(render)
    def cached(*args: P.args, **kwargs: P.kwargs) -> str:
        key = hashlib.sha256(repr((render.__name__, args, kwargs)).encode()).hexdigest()
        with _lock:
            hit = _cache.get(key)
        if hit is not None:
            return hit
        svg = render(*args, **kwargs)
        with _lock:
            if len(_cache) >= CACHE_ENTRIES:
                _cache.pop(next(iter(_cache)))
            _cache[key] = svg
        return svg

    return cached


def colours(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per name, in the order given."""
    return {name: PALETTE[index % len(PALETTE)] for index, name in enumerate(names)}


@_cached
def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str = "round",
    y_label: str = "",
    y_from_zero: bool = False,
    integer_x: bool = True,
    size: tuple[float, float] = LINE_SIZE,
) -> str:
    """An SVG line chart (axes, grid, legend) or a short note when there is nothing to draw."""
    drawn = [item for item in series if item.points]
    if not drawn:
        return f'<p class="empty">{_escape(title)}: nothing recorded.</p>'
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    legend = len(drawn) <= MAX_LEGEND_ENTRIES
    legend_rows = math.ceil(len(drawn) / LEGEND_COLUMNS) if legend else 0
    width, height = size[0], size[1] + LEGEND_ROW_IN * legend_rows
    with _lock, _rc():
        figure = Figure(figsize=(width, height), dpi=100)
        figure.subplots_adjust(
            left=0.75 / width,
            right=1 - 0.15 / width,
            top=1 - 0.35 / height,
            bottom=(0.5 + LEGEND_ROW_IN * legend_rows + (0.1 if legend else 0)) / height,
        )
        axes = figure.add_subplot()
        dense = max(len(item.points) for item in drawn) > 40
        for index, item in enumerate(drawn):
            xs = [x for x, _ in item.points]
            ys = [y for _, y in item.points]
            (line,) = axes.plot(
                xs,
                ys,
                color=item.colour or PALETTE[index % len(PALETTE)],
                linewidth=item.width,
                linestyle=(0, (5, 4)) if item.dashed else "-",
                marker=None if item.dashed or dense else "o",
                markersize=3,
                label=item.label,
            )
            line.set_gid(f"series-{index}")
        axes.set_title(title, fontsize=10, fontweight="bold")
        axes.set_xlabel(x_label)
        if y_label:
            axes.set_ylabel(y_label)
        if integer_x:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
        if y_from_zero:
            low, high = axes.get_ylim()
            axes.set_ylim(bottom=min(0.0, low), top=max(high, 1e-9))
        if legend:
            figure.legend(
                loc="lower center",
                bbox_to_anchor=(0.5, 0.0),
                ncol=min(LEGEND_COLUMNS, len(drawn)),
                frameon=False,
                fontsize=8,
            )
        svg = _svg(figure)
    return _accessible(svg, title, {f"series-{i}": item.label for i, item in enumerate(drawn)})


@_cached
def timeline_chart(
    title: str, rows: Sequence[TimelineRow], *, x_label: str = "seconds since the first round"
) -> str:
    """Horizontal bars, one row per round and one coloured bar per stage; notes on the right."""
    if not rows:
        return '<p class="empty">No round ran.</p>'
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    with _lock, _rc():
        width, height = 9.0, 1.3 + 0.26 * len(rows)
        figure = Figure(figsize=(width, height), dpi=100)
        figure.subplots_adjust(
            left=0.9 / width, right=1 - 0.15 / width, top=1 - 0.35 / height, bottom=0.85 / height
        )
        axes = figure.add_subplot()
        tips: dict[str, str] = {}
        end = max((bar.end_s for row in rows for bar in row.bars), default=1.0) or 1.0
        for position, row in enumerate(rows):
            y = len(rows) - 1 - position
            for index, bar in enumerate(row.bars):
                patches = axes.broken_barh(
                    [(bar.start_s, max(bar.end_s - bar.start_s, end * 1e-3))],
                    (y - 0.35, 0.7),
                    facecolors=STAGE_COLOURS.get(bar.stage, "#999999"),
                )
                gid = f"bar-{position}-{index}"
                patches.set_gid(gid)
                tips[gid] = bar.tip
            if row.note:
                last = max((bar.end_s for bar in row.bars), default=0.0)
                axes.text(last + end * 0.01, y, row.note, va="center", fontsize=7, color="#A04000")
        axes.set_yticks(
            range(len(rows)), [row.label + (" ✗" if row.failed else "") for row in reversed(rows)]
        )
        axes.set_xlabel(x_label)
        axes.set_xlim(0, end * 1.35)
        axes.grid(axis="y", visible=False)
        axes.set_title(title, fontsize=10, fontweight="bold")
        figure.legend(
            handles=[Patch(color=colour, label=stage) for stage, colour in STAGE_COLOURS.items()],
            loc="lower center",
            ncol=len(STAGE_COLOURS),
            frameon=False,
            fontsize=7,
        )
        svg = _svg(figure)
    return _accessible(svg, title, tips)


def _rc() -> contextlib.AbstractContextManager[None]:
    import matplotlib

    return matplotlib.rc_context(_RC)  # type: ignore[arg-type]  # keys typed as literals


def _svg(figure: object) -> str:
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    assert isinstance(figure, Figure)
    FigureCanvasSVG(figure)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()


ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")


def _accessible(svg: str, title: str, titles: Mapping[str, str]) -> str:
    """The bare <svg> element: scalable, role=img, a <title>, and a <title> per series/bar."""
    root = ET.fromstring(svg[svg.index("<svg") :])  # noqa: S314 - matplotlib's own output
    width, height = root.get("width", ""), root.get("height", "")
    for attribute in ("width", "height"):
        root.attrib.pop(attribute, None)
    root.set("class", "chart")
    root.set("role", "img")
    root.set("aria-label", title)
    if width and height:
        root.set("data-size", f"{_points(width):.0f}x{_points(height):.0f}")
    heading = ET.Element(f"{{{SVG_NS}}}title")
    heading.text = title
    root.insert(0, heading)
    for group in root.iter(f"{{{SVG_NS}}}g"):
        label = titles.get(group.get("id", ""))
        if label is not None:
            tip = ET.Element(f"{{{SVG_NS}}}title")
            tip.text = label
            group.insert(0, tip)
    for metadata in root.findall(f"{{{SVG_NS}}}metadata"):
        root.remove(metadata)
    return ET.tostring(root, encoding="unicode")


def _points(value: str) -> float:
    match = re.match(r"[\d.]+", value)
    return float(match.group()) if match else math.nan


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)
