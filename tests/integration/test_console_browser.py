"""The console in a real browser (Playwright driving the system's Chromium) against a real
`fmtl coordinator serve` whose federation has run rounds with signed, secure-aggregated
agents: each role signs in and sees exactly its pages, a round advances on screen without a
reload, an admin uses the forms, an auditor exports the privacy report and `fmtl admin
verify-report` checks it, and a tampered audit row is named as the first bad entry.

One coordinator and one browser serve the whole module (CI time). Each page is saved as a
1280x800 screenshot into $FMTL_CONSOLE_SCREENSHOTS (default build/console-screenshots/),
which docs/console.md refers to.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from typer.testing import CliRunner

from agent.local_work import LocalResult
from coordinator.ledger.accountant import MechanismStep, recompute_epsilon
from federation.round_api import RoundAssignment
from federation.spec import Accountant
from fmtl.admin.cli import app as admin_app
from tests.conftest import REPO_ROOT
from tests.round_support import FixedDeltaWork

from .conftest import CoordinatorEnv, CoordinatorServer, _stop, wait_until
from .test_rounds import (
    Federation,
    completed,
    drive,
    make_federation,
    participants,
    read_round,
    spec_document,
    start_round,
    start_server,
)

playwright = pytest.importorskip("playwright.sync_api", reason="pip install 'fmtl[dev]'")

CHROMIUM: Final = Path(os.environ.get("FMTL_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT: Final = {"width": 1280, "height": 800}
SCREENSHOTS: Final = Path(
    os.environ.get("FMTL_CONSOLE_SCREENSHOTS", REPO_ROOT / "build" / "console-screenshots")
)
FEDERATION: Final = "clinics"
ROUNDS_BEFORE: Final = 2
#: How long the browser waits for something to appear (ms).
EXPECT_MS: Final = 30_000

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("console-browser")]


class HonestWork(FixedDeltaWork):
    """Reports the ε its (σ, q, steps) history really costs (RDP), like a real agent."""

    history: list[MechanismStep]

    def train(self, assignment: RoundAssignment, global_vector: NDArray[np.float64]) -> LocalResult:
        result = super().train(assignment, global_vector)
        spend = result.spend
        assert spend is not None
        steps = getattr(self, "history", [])
        steps.append(MechanismStep(spend.noise_multiplier, spend.sample_rate, spend.steps))
        self.history = steps
        epsilon = recompute_epsilon(Accountant.RDP, steps, spend.delta)
        honest = spend.model_copy(update={"epsilon": epsilon, "budget_epsilon": 8.0})
        return dataclasses.replace(result, spend=honest)


@dataclass
class Site:
    url: str
    env: CoordinatorEnv
    federation: Federation
    tokens: dict[str, str]
    key_id: str


def _run_round(site: Site) -> int:
    parts = participants(site.url, site.federation)
    number = int(start_round(site.url, site.federation)["number"])
    done = drive(site.url, site.federation, parts, number, completed, f"round {number}")
    assert done["stage"] == "completed", done["failure_reason"]
    return number


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    home = tmp_path_factory.mktemp("console")
    state_dir = home / "state"
    env = CoordinatorEnv(
        variables={
            "FMTL_STATE_DIR": str(state_dir),
            "FMTL_TOKEN_PEPPER": secrets.token_urlsafe(32),
            "FMTL_LOG_LEVEL": "warning",
            "FMTL_UNMASK_SLICE_COORDINATES": "1024",
            "FMTL_WORK_POLL_INTERVAL_S": "0.2",
            "FMTL_TICK_INTERVAL_S": "1",
        },
        state_dir=state_dir,
    )
    url, process = start_server(env, home / "serve.log")
    try:
        tokens = {}
        for role in ("admin", "operator", "auditor"):
            made = env.cli("create-token", "--role", role, "--name", f"{role} in the browser")
            assert made.returncode == 0, made.stderr
            tokens[role] = made.stdout.strip()
        server = CoordinatorServer(url=url, env=env, process=process, log=home / "serve.log")
        federation = make_federation(server, tokens["admin"], spec_document(FEDERATION), 3)
        for index, work in enumerate(federation.works[:2]):  # the third reports ε = 0.5 always
            federation.works[index] = HonestWork(work.spec, work.delta, work.labelled)
        shown = env.cli("signing-key")
        assert shown.returncode == 0, shown.stderr
        key = re.search(r"key id:\s+([0-9a-f]{64})", shown.stdout)
        assert key is not None
        found = Site(url, env, federation, tokens, key.group(1))
        for _ in range(ROUNDS_BEFORE):
            _run_round(found)
        yield found
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def chromium(site: Site) -> Iterator[Any]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        yield browser
        browser.close()


def _signed_in(chromium: Any, site: Site, role: str) -> Any:
    """A fresh browser context signed in as `role`, by keyboard only."""
    context = chromium.new_context(viewport=VIEWPORT, base_url=site.url, accept_downloads=True)
    page = context.new_page()
    page.goto("/console/federations")
    assert "/console/sign-in" in page.url  # not signed in: sent to the form
    page.get_by_label("API token").fill(site.tokens[role])
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/federations")
    assert page.get_by_test_id("role").inner_text() == role
    return page


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


PAGES: Final = {
    "federations": "/console/federations",
    "federation": f"/console/federations/{FEDERATION}",
    "institutions": f"/console/federations/{FEDERATION}/institutions",
    "rounds": f"/console/federations/{FEDERATION}/rounds",
    "round": f"/console/federations/{FEDERATION}/rounds/1",
    "results": f"/console/federations/{FEDERATION}/results",
    "ledger": f"/console/federations/{FEDERATION}/ledger",
    "report": f"/console/federations/{FEDERATION}/report",
    "audit": "/console/audit",
    "tokens": "/console/tokens",
}
ALLOWED: Final = {
    "admin": set(PAGES),
    "auditor": set(PAGES) - {"tokens"},
    "operator": set(PAGES) - {"tokens", "ledger", "report", "audit"},
}


@pytest.mark.parametrize("role", ["operator", "auditor", "admin"])
def test_each_role_sees_exactly_its_pages(chromium: Any, site: Site, role: str) -> None:
    page = _signed_in(chromium, site, role)
    page.keyboard.press("Tab")  # the first stop is the skip link, and it works from the keyboard
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "content"
    nav = {link.inner_text() for link in page.locator("nav[aria-label=Main] a").all()}
    expected_nav = {"Federations"} | ({"Audit log"} if "audit" in ALLOWED[role] else set())
    assert nav == expected_nav | ({"Tokens"} if role == "admin" else set())
    for name, path in PAGES.items():
        answer = page.goto(path)
        assert answer is not None
        if name not in ALLOWED[role]:
            assert answer.status == 403, (role, name)
            continue
        assert answer.status == 200, (role, name)
        body = page.content()
        assert "fmtl_api_" not in body
        assert "fmtl_enroll_" not in body
        if role == "admin" or (role == "auditor" and name in ("ledger", "report", "audit")):
            _shot(page, name)
    page.context.close()


def test_a_running_round_advances_on_screen_without_a_reload(chromium: Any, site: Site) -> None:
    page = _signed_in(chromium, site, "admin")
    page.goto(PAGES["rounds"])
    page.get_by_role("button", name="Start the next round").click()
    page.wait_for_url(re.compile(r".*/rounds/\d+$"))
    number = int(page.url.rsplit("/", 1)[1])
    assert number == ROUNDS_BEFORE + 1
    page.evaluate("window.__stillTheSamePage = true")
    stage = page.locator(".live-round [data-field=stage]")
    seen = [stage.inner_text()]
    parts = participants(site.url, site.federation)

    def step() -> bool:
        for part in parts:
            part.step()
        current = stage.inner_text()
        if current != seen[-1]:
            seen.append(current)
            if len(seen) == 2:  # the first change seen on screen
                _shot(page, "round-live")
        return current in ("completed", "failed")

    wait_until(step, 60, f"round {number} to finish on screen")
    assert seen[-1] == "completed", seen
    assert len(seen) >= 3, seen  # it moved through stages while we watched
    assert page.evaluate("window.__stillTheSamePage") is True  # never reloaded
    assert read_round(site.url, site.federation, number)["stage"] == "completed"
    rows = page.locator(".live-round [data-field=stages] tr")
    assert rows.count() >= 7  # scheduled, five protocol stages, aggregating, completed
    page.context.close()


def test_admin_forms_create_invite_and_revoke(chromium: Any, site: Site, tmp_path: Path) -> None:
    page = _signed_in(chromium, site, "admin")
    spec = tmp_path / "federation.json"
    spec.write_text(json.dumps(spec_document("browser_made")))
    page.goto("/console/federations-new")
    page.get_by_label(re.compile("Federation spec")).set_input_files(str(spec))
    page.get_by_role("button", name="Create the federation").click()
    page.wait_for_url("**/console/federations/browser_made")
    _shot(page, "federation-created")
    page.goto("/console/federations/browser_made/institutions")
    page.get_by_label("Institution name").fill("newcomer")
    page.get_by_label("disease").check()
    page.get_by_role("button", name=re.compile("Invite")).click()
    token = page.get_by_test_id("enrollment-token").inner_text()
    assert token.startswith("fmtl_enroll_")
    _shot(page, "invited")
    page.goto("/console/federations/browser_made/institutions")
    assert token not in page.content()  # shown once
    operator_id = next(
        t["id"]
        for t in httpx.get(
            f"{site.url}/api/v1/tokens",
            headers={"Authorization": f"Bearer {site.tokens['admin']}"},
            timeout=10,
        ).json()
        if t["role"] == "operator"
    )
    spare = httpx.post(
        f"{site.url}/api/v1/tokens",
        json={"name": "to revoke", "role": "auditor"},
        headers={"Authorization": f"Bearer {site.tokens['admin']}"},
        timeout=10,
    ).json()
    assert spare["id"] != operator_id
    page.goto("/console/tokens")
    page.get_by_role("button", name=f"Revoke token {spare['id']} (to revoke)").click()
    page.wait_for_url("**/console/tokens")
    gone = httpx.get(
        f"{site.url}/api/v1/me",
        headers={"Authorization": f"Bearer {spare['token']}"},
        timeout=10,
    )
    assert gone.status_code == 401
    page.context.close()


def test_the_auditor_exports_a_report_that_verifies_offline(
    chromium: Any, site: Site, tmp_path: Path
) -> None:
    page = _signed_in(chromium, site, "auditor")
    page.goto(PAGES["ledger"])
    assert "disagree" in page.get_by_role("alert").inner_text()  # site_2 reports ε = 0.5
    flagged = page.locator("#mismatches ~ table tr.flagged td.text").all_inner_texts()
    assert flagged
    assert set(flagged) == {"site_2"}
    _shot(page, "ledger")
    page.goto(PAGES["report"])
    with page.expect_download() as download:
        page.get_by_role("button", name="Export the report").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.suffix == ".html"
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmtl",
            "admin",
            "verify-report",
            str(saved),
            "--key-id",
            site.key_id,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ε recomputed with the rdp accountant: 3 institutions' totals agree" in checked.stdout
    report = page.context.new_page()
    report.goto(saved.as_uri())
    assert report.get_by_role("heading", name=f"Privacy report: {FEDERATION}").is_visible()
    _shot(report, "privacy-report")
    changed = tmp_path / "changed.html"
    changed.write_text(saved.read_text().replace("<b>", "<b>9", 1))
    refused = CliRunner().invoke(admin_app, ["verify-report", str(changed), "--no-recompute"])
    assert refused.exit_code == 1
    assert "not the one that was signed" in refused.output
    page.context.close()


def test_a_tampered_audit_row_is_shown_as_the_first_bad_entry(chromium: Any, site: Site) -> None:
    database = site.env.state_dir / "coordinator.sqlite3"
    with sqlite3.connect(database) as db:
        seq, details = db.execute(
            "SELECT seq, details FROM audit_log WHERE action = 'spend.recorded' "
            "ORDER BY seq LIMIT 1"
        ).fetchone()
        db.execute(
            "UPDATE audit_log SET details = ? WHERE seq = ?",
            (details.replace('"mismatch":false', '"mismatch":true'), seq),
        )
    try:
        page = _signed_in(chromium, site, "auditor")
        page.goto("/console/audit")
        page.get_by_role("link", name="Verify the whole chain").click()
        alert = page.get_by_test_id("chain-status")
        assert "Chain broken" in alert.inner_text()
        assert page.get_by_test_id("first-bad").inner_text() == f"#{seq}"
        bad = page.get_by_test_id("bad-entry")
        assert bad.get_attribute("id") == f"entry-{seq}"
        bad.scroll_into_view_if_needed()
        _shot(page, "audit-broken")
        page.context.close()
    finally:
        with sqlite3.connect(database) as db:
            db.execute("UPDATE audit_log SET details = ? WHERE seq = ?", (details, seq))
