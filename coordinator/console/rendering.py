"""Pages of the console: the Jinja2 environment, the navigation, security headers, errors.

Every console response is `no-store` (it shows what only signed-in people may read) and
carries a Content-Security-Policy that admits scripts and styles from the console itself
only (charts are inline SVG; matplotlib styles them with attributes, hence inline styles),
no framing, and forms posting back to the console only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment

from coordinator.auth.models import Role
from coordinator.console.session import AUDITORS, CSRF_FIELD, Viewer
from coordinator.reports.pages import environment, style_sheet

PREFIX: Final = "/console"
SIGN_IN_PATH: Final = PREFIX + "/sign-in"
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
STATIC_TYPES: Final = {"style.css": "text/css; charset=utf-8", "console.js": "text/javascript"}


@dataclass(frozen=True)
class Link:
    label: str
    href: str
    current: bool = False


@cache
def templates() -> Environment:
    return environment("coordinator.console")


def top_links(request: Request, viewer: Viewer | None) -> list[Link]:
    """The top navigation: only the pages the viewer's role may read."""
    if viewer is None:
        return []
    links = [Link("Federations", f"{PREFIX}/federations")]
    if viewer.role in AUDITORS:
        links.append(Link("Audit log", f"{PREFIX}/audit"))
    if viewer.role is Role.ADMIN:
        links.append(Link("Tokens", f"{PREFIX}/tokens"))
    path = request.url.path
    return [
        Link(link.label, link.href, path == link.href or path.startswith(link.href + "/"))
        for link in links
    ]


def federation_links(request: Request, viewer: Viewer, federation: str) -> list[Link]:
    """The federation's sub-navigation, by role."""
    base = f"{PREFIX}/federations/{quote(federation)}"
    links = [
        Link("Overview", base),
        Link("Institutions", base + "/institutions"),
        Link("Rounds", base + "/rounds"),
        Link("Results", base + "/results"),
    ]
    if viewer.role in AUDITORS:
        links.append(Link("Privacy ledger", base + "/ledger"))
        links.append(Link("Auditor's report", base + "/report"))
    path = request.url.path
    return [
        Link(
            link.label,
            link.href,
            path == link.href or (link.href != base and path.startswith(link.href + "/")),
        )
        for link in links
    ]


def render(
    request: Request,
    viewer: Viewer | None,
    template: str,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    federation = context.get("federation_name")
    page = (
        templates()
        .get_template(template)
        .render(
            request=request,
            viewer=viewer,
            nav=top_links(request, viewer),
            subnav=(
                federation_links(request, viewer, federation)
                if viewer is not None and federation
                else []
            ),
            csrf_field=CSRF_FIELD,
            prefix=PREFIX,
            **context,
        )
    )
    return HTMLResponse(page, status_code=status_code, headers=SECURITY_HEADERS)


def redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303, headers=SECURITY_HEADERS)


def static_file(name: str) -> Response:
    body = style_sheet() if name == "style.css" else _console_file(name)
    return Response(
        body,
        media_type=STATIC_TYPES[name],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@cache
def _console_file(name: str) -> str:
    return (resources.files("coordinator.console") / "static" / name).read_text("utf-8")


def handles(request: Request) -> bool:
    """Whether an error on this request is answered with a console page."""
    path = request.url.path
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_page(request: Request, status: int, detail: str) -> Response:
    """A console error: sign in (a GET is sent to the sign-in page), or a page saying why."""
    if status == 401 and request.method in ("GET", "HEAD"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return redirect(f"{SIGN_IN_PATH}?next={quote(target, safe='')}")
    titles: Mapping[int, str] = {
        401: "Please sign in",
        403: "Not for your role",
        404: "Not found",
        409: "That cannot be done now",
        413: "Too large",
        422: "Invalid input",
    }
    return render(
        request,
        None,
        "error.html.j2",
        status_code=status,
        title=titles.get(status, "Something went wrong"),
        detail=detail,
        status=status,
    )


class ConsolePages:
    """The console's answer to errors on its own paths (see `api.problems.ErrorPages`)."""

    def handles(self, request: Request) -> bool:
        return handles(request)

    def page(self, request: Request, status: int, detail: str) -> Response:
        return error_page(request, status, detail)
