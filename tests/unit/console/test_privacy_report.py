"""The auditor's privacy report: exported from the console, checked offline by the CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session
from typer.testing import CliRunner

from coordinator.auth.models import Role
from coordinator.federations.models import Federation
from coordinator.ledger.service import SpendReport, record_spend
from coordinator.rounds.models import Round, RoundStage
from coordinator.runtime import Runtime
from fmtl.admin.cli import app as admin_app
from fmtl.admin.report_check import verify_report
from tests.console_seed import seed

from .conftest import TEST_ACTOR, Browser


def _real_ledger(session: Session, federation: Federation) -> None:
    """Two institutions, three rounds, spend recorded by the ledger service itself."""
    seed(session, federation, institutions=2, rounds=3, mismatch=False)
    from coordinator.institutions.models import Institution
    from coordinator.ledger.models import PrivacySpend

    session.query(PrivacySpend).delete()
    session.commit()
    institutions = session.query(Institution).order_by(Institution.name).all()
    for number in (1, 2, 3):
        round_ = session.query(Round).filter_by(number=number).one()
        assert round_.stage is RoundStage.COMPLETED
        for index, institution in enumerate(institutions):
            sigma = 1.0 + 0.1 * index
            record_spend(
                session,
                round_,
                institution,
                SpendReport(sigma, 0.05, 20, 1e-5, epsilon=0.0, budget_epsilon=8.0),
                actor=TEST_ACTOR,
            )
    session.commit()


def _export(signed_in: Browser, kind: str, tmp_path: Path, query: str = "") -> Path:
    answer = signed_in.client.get(f"/console/federations/heart/report/download?kind={kind}{query}")
    assert answer.status_code == 200, answer.text
    assert "attachment" in answer.headers["content-disposition"]
    path = tmp_path / f"report.{kind}"
    path.write_bytes(answer.content)
    return path


def test_an_exported_report_verifies_offline_with_the_coordinators_key(
    session: Session,
    federation: Federation,
    runtime: Runtime,
    browser: Callable[[Role], Browser],
    tmp_path: Path,
) -> None:
    _real_ledger(session, federation)
    auditor = browser(Role.AUDITOR)
    page = _export(auditor, "html", tmp_path)
    text = page.read_text()
    assert "<script src" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    for name in ("hospital_000", "hospital_001"):
        assert f'id="institution-{name}"' in text
    assert "rdp: RDP (Opacus RDPAccountant" in text
    key = runtime.signing_key.key_id
    result = CliRunner().invoke(admin_app, ["verify-report", str(page), "--key-id", key])
    assert result.exit_code == 0, result.output
    assert "signature valid" in result.output
    assert "the page's body is the signed one" in result.output
    assert "ε recomputed with the rdp accountant: 2 institutions' totals agree" in result.output
    every = verify_report(page, expected_key_id=key, every_line=True)
    assert every.ok, every.problems
    assert "6 lines agree" in " ".join(every.checks)
    document = _export(auditor, "json", tmp_path)
    assert verify_report(document, expected_key_id=key).ok


def test_any_change_to_a_report_is_caught(
    session: Session,
    federation: Federation,
    runtime: Runtime,
    browser: Callable[[Role], Browser],
    tmp_path: Path,
) -> None:
    _real_ledger(session, federation)
    auditor = browser(Role.AUDITOR)
    key = runtime.signing_key.key_id
    original = _export(auditor, "html", tmp_path).read_text()

    def check(text: str, pinned: str | None = key) -> list[str]:
        path = tmp_path / "changed.html"
        path.write_text(text)
        verdict = verify_report(path, expected_key_id=pinned)
        assert not verdict.ok
        return verdict.problems

    # a figure on the page
    shown = re.search(r"<b>(\d\.\d{4})</b>", original)
    assert shown is not None
    problems = check(original.replace(shown.group(0), "<b>0.0001</b>", 1))
    assert problems == ["the page's body is not the one that was signed"]
    # a figure in the signed JSON
    embedded = re.search(r'"recomputed_epsilon": ([0-9.e-]+)', original)
    assert embedded is not None
    problems = check(original.replace(embedded.group(0), '"recomputed_epsilon": 0.5', 1))
    assert "the signature does not verify" in problems[0]
    # another key
    assert "not by the pinned key" in check(original, pinned="0" * 64)[0]


def test_the_period_limits_the_histories_and_skips_the_replay(
    session: Session, federation: Federation, browser: Callable[[Role], Browser], tmp_path: Path
) -> None:
    seeded = seed(session, federation, institutions=3, rounds=4)
    auditor = browser(Role.AUDITOR)
    path = _export(auditor, "json", tmp_path, "&since=2026-11-01&until=2026-11-01")
    envelope = json.loads(path.read_text())
    document = envelope["signed"]["document"]
    assert document["since"].startswith("2026-11-01T00:00:00")
    assert document["until"].startswith("2026-11-02T00:00:00")
    assert document["mismatches"] == 1
    assert [i["name"] for i in document["institutions"]] == seeded.institutions
    verdict = verify_report(path, expected_key_id=None)
    assert verdict.ok, verdict.problems
    assert any("not recomputed" in line for line in verdict.checks)
    assert any("key not pinned" in line for line in verdict.checks)


def test_operators_cannot_export_and_bad_files_are_one_line(
    session: Session, federation: Federation, browser: Callable[[Role], Browser], tmp_path: Path
) -> None:
    seed(session, federation, institutions=2, rounds=2)
    operator = browser(Role.OPERATOR)
    assert operator.client.get("/console/federations/heart/report/download").status_code == 403
    junk = tmp_path / "junk.html"
    junk.write_text("<html>hello</html>")
    result = CliRunner().invoke(admin_app, ["verify-report", str(junk)])
    assert result.exit_code == 2
    assert "holds no signed privacy report" in result.output
    assert "Traceback" not in result.output
