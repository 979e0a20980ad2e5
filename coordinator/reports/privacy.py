"""The auditor's privacy report: one self-contained, signed HTML file and its JSON.

For a federation and a date range it holds every institution's history of (σ, q, steps),
ε as reported and as the coordinator recomputed it (the accountant named), the mismatches,
the audit chain's head and its verification, charts of ε over rounds, and a signature by
the coordinator's signing key over all of that (`federation.privacy_report`). The HTML
embeds the signed JSON, so the one file is what an auditor archives and hands on;
`fmtl admin verify-report FILE` checks it offline.
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict
from datetime import datetime
from typing import Final

from markupsafe import Markup
from sqlalchemy.orm import Session

from coordinator.audit import checkpoints
from coordinator.console import graphs
from coordinator.console.queries import LedgerPoint, institution_lines, ledger_points
from coordinator.db import utcnow
from coordinator.federations.models import Federation
from coordinator.ledger.service import unreported_spends
from coordinator.reports.pages import environment, svg
from coordinator.signing import SigningKey
from federation.privacy_report import (
    BODY_END,
    BODY_START,
    EMBEDDED_JSON_ID,
    PRIVACY_REPORT_DOMAIN,
    AuditHead,
    InstitutionHistory,
    ReportDocument,
    ReportEnvelope,
    SignedReport,
    SpendLine,
    UnreportedSpend,
)

ACCOUNTANTS: Final = {
    "rdp": "RDP (Opacus RDPAccountant at integer orders 2 to 1024: Mironov 2017; subsampled "
    "Gaussian, Mironov, Talwar & Zhang 2019), replaying each institution's whole reported "
    "history",
    "prv": "PRV (Opacus PRVAccountant: Gopi, Lee & Wutschitz 2021, eps_error 0.01), replaying "
    "each institution's whole reported history",
}
#: Institutions drawn per chart in the report (a chart of 100 lines is unreadable).
INSTITUTIONS_PER_CHART: Final = 10


def build_document(
    session: Session,
    federation: Federation,
    *,
    since: datetime | None,
    until: datetime | None,
    version: str,
    public_key: bytes,
) -> ReportDocument:
    """Everything the report states, read from the ledger and the audit log (checked
    against its signed checkpoints with `public_key`)."""
    _, lines = institution_lines(session, federation, 1, with_spend=False, size=1_000_000)
    points = ledger_points(session, federation, since=since, until=until, times=True)
    per: dict[str, list[LedgerPoint]] = defaultdict(list)
    for point in points:
        per[point.institution].append(point)
    institutions = []
    for line in lines:
        rows = per.get(line.name, [])
        budget = next((p.budget_epsilon for p in reversed(rows) if p.budget_epsilon), None)
        institutions.append(
            InstitutionHistory(
                name=line.name,
                state=line.state,
                tasks=line.tasks,
                budget_epsilon=budget,
                history=[
                    SpendLine(
                        round=p.round_number,
                        recorded_at=_recorded(p),
                        noise_multiplier=p.noise_multiplier,
                        sample_rate=p.sample_rate,
                        steps=p.steps,
                        delta=p.delta,
                        reported_epsilon=p.reported_epsilon,
                        recomputed_epsilon=p.recomputed_epsilon,
                        mismatch=p.mismatch,
                    )
                    for p in rows
                ],
            )
        )
    anchored = checkpoints.verify_anchored(session, public_key)
    chain = anchored.chain
    latest = anchored.latest_checkpoint
    missing = [
        UnreportedSpend(institution=row.institution, round=row.round_number, stage=row.stage)
        for row in unreported_spends(session, federation=federation.name)
        if (since is None or row.finished_at is None or row.finished_at >= since)
        and (until is None or row.finished_at is None or row.finished_at <= until)
    ]
    accountant = federation.spec.dp.accountant.value
    return ReportDocument(
        federation=federation.name,
        spec_fingerprint=federation.fingerprint,
        accountant=accountant,
        accountant_detail=ACCOUNTANTS.get(accountant, accountant),
        since=since,
        until=until,
        generated_at=utcnow(),
        coordinator_version=version,
        institutions=institutions,
        mismatches=sum(1 for p in points if p.mismatch),
        audit=AuditHead(
            ok=anchored.ok,
            entries=chain.entries,
            head_hash=chain.head_hash,
            first_broken_seq=chain.first_broken_seq,
            reason=chain.reason or anchored.problem,
            checkpoints=anchored.checkpoints,
            latest_checkpoint=None if latest is None else latest.number,
            latest_checkpoint_seq=None if latest is None else latest.audit_seq,
        ),
        unreported=missing,
    )


def _recorded(point: LedgerPoint) -> datetime:
    assert point.recorded_at is not None  # read with times=True
    return point.recorded_at


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _points(document: ReportDocument) -> list[LedgerPoint]:
    return [
        LedgerPoint(
            institution=item.name,
            round_number=line.round,
            accountant=document.accountant,
            noise_multiplier=line.noise_multiplier,
            sample_rate=line.sample_rate,
            steps=line.steps,
            delta=line.delta,
            reported_epsilon=line.reported_epsilon,
            recomputed_epsilon=line.recomputed_epsilon,
            budget_epsilon=item.budget_epsilon,
            mismatch=line.mismatch,
            recorded_at=line.recorded_at,
        )
        for item in document.institutions
        for line in item.history
    ]


def render_body(document: ReportDocument) -> str:
    """The report's visible body (its SHA-256 is signed)."""
    points = _points(document)
    names = [item.name for item in document.institutions if item.history]
    charts = []
    for start in range(0, len(names), INSTITUTIONS_PER_CHART):
        group = set(names[start : start + INSTITUTIONS_PER_CHART])
        title = "Cumulative ε per institution (recomputed) and budget"
        if len(names) > INSTITUTIONS_PER_CHART:
            title += f" — {start + 1}–{start + len(group)} of {len(names)}"
        charts.append(
            svg(graphs.epsilon_chart([p for p in points if p.institution in group], title=title))
        )
    body = (
        environment()
        .get_template("privacy_report_body.html.j2")
        .render(document=document, charts=charts, gap=svg(graphs.epsilon_gap_chart(points)))
    )
    return BODY_START + body + BODY_END


def sign_report(document: ReportDocument, body: str, key: SigningKey) -> ReportEnvelope:
    signed = SignedReport(
        document=document, html_body_sha256=hashlib.sha256(body.encode("utf-8")).hexdigest()
    )
    return ReportEnvelope(
        signed=signed,
        key_id=key.key_id,
        public_key=_b64(key.public_key),
        signature=_b64(key.sign(PRIVACY_REPORT_DOMAIN, signed.payload())),
    )


def render_file(envelope: ReportEnvelope, body: str) -> str:
    """The archived HTML: the signed body, the signature, and the signed JSON embedded."""
    embedded = envelope.model_dump_json(indent=1).replace("</", "<\\/")
    return (
        environment()
        .get_template("privacy_report.html.j2")
        .render(
            document=envelope.signed.document,
            envelope=envelope,
            body=Markup(body),  # noqa: S704 - rendered by our autoescaping template
            embedded=Markup(embedded),  # noqa: S704 - JSON, "</" escaped
            json_id=EMBEDDED_JSON_ID,
        )
    )


def privacy_report(
    session: Session,
    federation: Federation,
    key: SigningKey,
    *,
    since: datetime | None,
    until: datetime | None,
    version: str,
) -> tuple[str, ReportEnvelope]:
    """The signed report: (the HTML file, the JSON envelope it embeds)."""
    document = build_document(
        session, federation, since=since, until=until, version=version, public_key=key.public_key
    )
    body = render_body(document)
    envelope = sign_report(document, body, key)
    return render_file(envelope, body), envelope
