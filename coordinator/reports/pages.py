"""Jinja2 environments and the shared style sheet of the console and the reports.

Templates are package data (`*.j2`), autoescaped; the style sheet is served to the console
and inlined into the self-contained reports, so every page looks alike and no file needs
the network.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from importlib import resources
from typing import Final

from jinja2 import ChoiceLoader, Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

STYLE_SHEET: Final = "style.css"


@cache
def style_sheet() -> str:
    """The shared CSS (for the console's /static and for inlining into reports)."""
    return (resources.files("coordinator.reports") / "static" / STYLE_SHEET).read_text("utf-8")


def environment(*packages: str) -> Environment:
    """An autoescaping environment over `templates/` of each package, then of this one."""
    loaders = [PackageLoader(package, "templates") for package in (*packages, __package__)]
    env = Environment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    env.globals["inline_style"] = lambda: Markup(style_sheet())  # noqa: S704 - our own file
    return env


def _when(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return "–" if value is None else value.strftime(fmt)


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def svg(markup: str) -> Markup:
    """A chart's SVG (made by `charts`, with every text escaped by ElementTree) for a page."""
    return Markup(markup)  # noqa: S704 - built by ElementTree from our own figures
