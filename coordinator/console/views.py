"""The console's pages: each reads through `queries` and renders one template.

Who may open which page follows the REST API's matrix exactly: federations, institutions,
rounds and results for every role; the privacy ledger, the audit log and the auditor's
report for admins and auditors; tokens for admins. A page never shows a token, a key or an
individual update: institutions appear with their enrollment state (not their key), rounds
with stage timings and counts, results as the coordinator recorded them.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Final

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from coordinator.api.deps import PublicDep, SessionDep
from coordinator.audit import service as audit
from coordinator.audit.models import AuditAction
from coordinator.auth import service as tokens
from coordinator.auth.models import Role
from coordinator.console import graphs, queries
from coordinator.console.rendering import PREFIX, SECURITY_HEADERS, redirect, render, static_file
from coordinator.console.session import AUDITORS, AdminView, AuditorView, ReaderView
from coordinator.errors import InvalidInput, NotFound
from coordinator.federations.service import get_federation
from coordinator.reports.pages import svg
from federation.spec import NAME_PATTERN

router = APIRouter(prefix=PREFIX, include_in_schema=False)

FederationName = Annotated[str, Path(pattern=NAME_PATTERN)]
RoundNumber = Annotated[int, Path(ge=1, le=2**31 - 1)]
PageNumber = Annotated[int, Query(ge=1, le=1_000_000)]
#: How often a running round's page asks for its state (milliseconds).
LIVE_POLL_MS: Final = 1000


@router.get("/static/{name}", dependencies=[PublicDep])
def static(name: str) -> Response:
    if name not in ("style.css", "console.js"):
        raise NotFound(f"no static file {name!r}")
    return static_file(name)


@router.get("", dependencies=[PublicDep])
def home() -> Response:
    return redirect(f"{PREFIX}/federations")


@router.get("/federations")
def federations(request: Request, viewer: ReaderView, session: SessionDep) -> HTMLResponse:
    return render(
        request,
        viewer,
        "federations.html.j2",
        title="Federations",
        federations=queries.federation_lines(session),
    )


@router.get("/federations/{federation}")
def federation_overview(
    request: Request,
    federation: FederationName,
    viewer: ReaderView,
    session: SessionDep,
    page: PageNumber = 1,
) -> HTMLResponse:
    found = get_federation(session, federation)
    paging, holders = queries.holdings(session, found, page)
    return render(
        request,
        viewer,
        "federation.html.j2",
        title=f"Federation {found.name}",
        federation_name=found.name,
        federation=found,
        spec=json.dumps(json.loads(found.spec_json), indent=2, sort_keys=True),
        tasks=found.tasks,
        paging=paging,
        holders=holders,
    )


@router.get("/federations/{federation}/institutions")
def institutions(
    request: Request,
    federation: FederationName,
    viewer: ReaderView,
    session: SessionDep,
    page: PageNumber = 1,
) -> HTMLResponse:
    found = get_federation(session, federation)
    with_spend = viewer.role in AUDITORS  # the ledger is for admins and auditors
    paging, lines = queries.institution_lines(session, found, page, with_spend=with_spend)
    return render(
        request,
        viewer,
        "institutions.html.j2",
        title=f"Institutions of {found.name}",
        federation_name=found.name,
        federation=found,
        paging=paging,
        institutions=lines,
        with_spend=with_spend,
    )


@router.get("/federations/{federation}/rounds")
def rounds(
    request: Request,
    federation: FederationName,
    viewer: ReaderView,
    session: SessionDep,
    page: PageNumber = 1,
) -> HTMLResponse:
    found = get_federation(session, federation)
    paging, lines = queries.round_lines(session, found, page)
    running = next((line for line in lines if not line.finished), None)
    return render(
        request,
        viewer,
        "rounds.html.j2",
        title=f"Rounds of {found.name}",
        federation_name=found.name,
        paging=paging,
        rounds=lines,
        running=running,
        timeline=svg(graphs.round_timeline(lines)) if lines else None,
        poll_ms=LIVE_POLL_MS,
    )


@router.get("/federations/{federation}/rounds/{number}")
def round_page(
    request: Request,
    federation: FederationName,
    number: RoundNumber,
    viewer: ReaderView,
    session: SessionDep,
) -> HTMLResponse:
    found = get_federation(session, federation)
    line = queries.round_line(session, found, number)
    if line is None:
        raise NotFound(f"federation '{found.name}' has no round {number}")
    return render(
        request,
        viewer,
        "round.html.j2",
        title=f"Round {number} of {found.name}",
        federation_name=found.name,
        round=line,
        participants=queries.participant_lines(session, found, number),
        timeline=svg(graphs.round_timeline([line])) if line.stages else None,
        poll_ms=LIVE_POLL_MS,
    )


@router.get("/federations/{federation}/rounds/{number}/live")
def round_live(
    federation: FederationName, number: RoundNumber, viewer: ReaderView, session: SessionDep
) -> JSONResponse:
    """A round's state for the page's poller: stage, timings, counts, dropouts."""
    found = get_federation(session, federation)
    line = queries.round_line(session, found, number)
    if line is None:
        raise NotFound(f"federation '{found.name}' has no round {number}")
    return JSONResponse(graphs.live_state(line), headers={"Cache-Control": "no-store"})


@router.get("/federations/{federation}/results")
def results(
    request: Request, federation: FederationName, viewer: ReaderView, session: SessionDep
) -> HTMLResponse:
    found = get_federation(session, federation)
    tasks = [task.name for task in found.tasks]
    curves = graphs.memo(
        ("results", found.id, queries.results_version(session)),
        lambda: graphs.result_curves(tasks, queries.result_points(session, found)),
    )
    return render(
        request,
        viewer,
        "results.html.j2",
        title=f"Task-wise results of {found.name}",
        federation_name=found.name,
        curves=[(curve, svg(chart)) for curve, chart in curves],
    )


@router.get("/federations/{federation}/ledger")
def ledger(
    request: Request,
    federation: FederationName,
    viewer: AuditorView,
    session: SessionDep,
    page: PageNumber = 1,
) -> HTMLResponse:
    found = get_federation(session, federation)
    paging, lines = queries.institution_lines(
        session, found, page, with_spend=True, size=queries.LEDGER_INSTITUTIONS_PER_CHART
    )
    ids = tuple(line.id for line in lines)

    def draw() -> tuple[str, str]:
        points = queries.ledger_points(session, found, ids)
        return graphs.epsilon_chart(points), graphs.epsilon_gap_chart(points)

    chart, gap = graphs.memo(("ledger", found.id, ids, queries.ledger_version(session)), draw)
    return render(
        request,
        viewer,
        "ledger.html.j2",
        title=f"Privacy ledger of {found.name}",
        federation_name=found.name,
        accountant=found.spec.dp.accountant.value,
        paging=paging,
        institutions=lines,
        chart=svg(chart),
        gap_chart=svg(gap),
        mismatches=queries.ledger_mismatches(session, found),
    )


DayField = Annotated[str | None, Query(max_length=10, description="A UTC day, YYYY-MM-DD.")]


def _date(text: str | None) -> date | None:
    """A day from a form's date field; an empty field means none."""
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a day (YYYY-MM-DD)") from None


def _day(value: date | None, *, end: bool = False) -> datetime | None:
    if value is None:
        return None
    moment = datetime.combine(value, time.min, tzinfo=UTC)
    return moment + timedelta(days=1) if end else moment


@router.get("/federations/{federation}/report")
def report_form(
    request: Request, federation: FederationName, viewer: AuditorView, session: SessionDep
) -> HTMLResponse:
    found = get_federation(session, federation)
    return render(
        request,
        viewer,
        "report.html.j2",
        title=f"Auditor's privacy report of {found.name}",
        federation_name=found.name,
        key_id=request.app.state.runtime.signing_key.key_id,
    )


@router.get("/federations/{federation}/report/download")
def report_download(
    request: Request,
    federation: FederationName,
    viewer: AuditorView,
    session: SessionDep,
    since: DayField = None,
    until: DayField = None,
    kind: Annotated[str, Query(pattern="^(html|json)$")] = "html",
) -> Response:
    """The signed report as one HTML file (with its JSON inside), or the JSON alone."""
    from coordinator.reports.privacy import privacy_report

    found = get_federation(session, federation)
    first, last = _date(since), _date(until)
    if first is not None and last is not None and last < first:
        raise InvalidInput("the period ends before it starts")
    page, envelope = privacy_report(
        session,
        found,
        request.app.state.runtime.signing_key,
        since=_day(first),
        until=_day(last, end=True),
        version=_version(),
    )
    stamp = envelope.signed.document.generated_at.strftime("%Y%m%dT%H%M%SZ")
    name = f"fmtl-privacy-report-{found.name}-{stamp}.{kind}"
    headers = {**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
    if kind == "json":
        return Response(
            envelope.model_dump_json(indent=1), media_type="application/json", headers=headers
        )
    return HTMLResponse(page, headers=headers)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fmtl")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


@router.get("/audit")
def audit_log(
    request: Request,
    viewer: AuditorView,
    session: SessionDep,
    action: Annotated[str | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    subject: Annotated[str | None, Query(max_length=200)] = None,
    since: DayField = None,
    until: DayField = None,
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    verify: bool = False,
) -> HTMLResponse:
    first, last = _date(since), _date(until)
    where = queries.AuditFilter(
        action=action or None,
        actor=actor or None,
        subject=subject or None,
        since=_day(first),
        until=_day(last, end=True),
    )
    verification = audit.verify(session) if verify else None
    if (
        verification is not None
        and not verification.ok
        and before is None
        and not any((action, actor, subject, since, until))
    ):
        # open the page that holds the first bad entry
        before = (verification.first_broken_seq or 0) + queries.AUDIT_PER_PAGE // 2
    page = queries.audit_page(session, where, before)
    return render(
        request,
        viewer,
        "audit.html.j2",
        title="Audit log",
        actions=[a.value for a in AuditAction],
        where=where,
        form={
            "action": action or "",
            "actor": actor or "",
            "subject": subject or "",
            "since": first.isoformat() if first else "",
            "until": last.isoformat() if last else "",
        },
        page=page,
        verification=verification,
    )


@router.get("/tokens")
def token_list(request: Request, viewer: AdminView, session: SessionDep) -> HTMLResponse:
    return render(
        request,
        viewer,
        "tokens.html.j2",
        title="API tokens",
        tokens=tokens.list_tokens(session),
        roles=[role.value for role in Role],
    )


__all__ = ["SECURITY_HEADERS", "router"]
