"""The console, as a signed-in person uses it: sessions, pages per role, forms, safety."""

from __future__ import annotations

import re
from collections.abc import Callable

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from coordinator.audit.models import AuditEntry
from coordinator.auth.models import Role
from coordinator.institutions.models import Institution
from tests.console_seed import Seeded

from .conftest import Browser

PAGES = (
    "/console/federations",
    "/console/federations/heart",
    "/console/federations/heart/institutions",
    "/console/federations/heart/rounds",
    "/console/federations/heart/rounds/2",
    "/console/federations/heart/results",
    "/console/federations/heart/ledger",
    "/console/audit?verify=1",
    "/console/tokens",
)
AUDITOR_PAGES = {"/console/federations/heart/ledger", "/console/audit?verify=1"}
ADMIN_PAGES = {"/console/tokens"}


def _allowed(role: Role, page: str) -> bool:
    if page in ADMIN_PAGES:
        return role is Role.ADMIN
    if page in AUDITOR_PAGES:
        return role in (Role.ADMIN, Role.AUDITOR)
    return True


def test_signing_in_sets_a_strict_http_only_cookie_that_holds_no_token(
    app: FastAPI, issue: Callable[[Role], tuple[int, str]]
) -> None:
    _, token = issue(Role.AUDITOR)
    client = TestClient(app, base_url="http://testserver")
    answer = client.post("/console/sign-in", data={"token": token}, follow_redirects=False)
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert token not in cookie
    assert token.removeprefix("fmtl_api_") not in cookie


def test_over_https_the_cookie_is_secure_and_host_only(
    app: FastAPI, issue: Callable[[Role], tuple[int, str]]
) -> None:
    _, token = issue(Role.OPERATOR)
    client = TestClient(app, base_url="https://testserver")
    answer = client.post("/console/sign-in", data={"token": token}, follow_redirects=False)
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("__Host-fmtl_console=")
    assert "Secure" in cookie
    assert "Path=/" in cookie


def test_a_wrong_token_is_refused_with_the_form_again(app: FastAPI) -> None:
    client = TestClient(app, base_url="http://testserver")
    answer = client.post("/console/sign-in", data={"token": "fmtl_api_" + "x" * 43})
    assert answer.status_code == 401
    assert 'id="token"' in answer.text
    assert "set-cookie" not in answer.headers


def test_each_role_sees_exactly_its_pages_and_links(
    seeded: Seeded, browser: Callable[[Role], Browser]
) -> None:
    for role in Role:
        signed_in = browser(role)
        nav = signed_in.client.get("/console/federations/heart").text
        assert ('href="/console/audit"' in nav) == (role is not Role.OPERATOR)
        assert ('href="/console/tokens"' in nav) == (role is Role.ADMIN)
        assert ('/heart/ledger"' in nav) == (role is not Role.OPERATOR)
        for page in PAGES:
            status = signed_in.client.get(page).status_code
            assert status == (200 if _allowed(role, page) else 403), (role, page, status)


def test_operators_do_not_see_privacy_spend_on_the_institutions_page(
    seeded: Seeded, browser: Callable[[Role], Browser]
) -> None:
    operator = browser(Role.OPERATOR).client.get("/console/federations/heart/institutions").text
    auditor = browser(Role.AUDITOR).client.get("/console/federations/heart/institutions").text
    assert "ε left" not in operator
    assert "ε left" in auditor
    assert "hospital_000" in operator


def test_no_page_shows_a_token_or_a_key(
    seeded: Seeded, session: Session, browser: Callable[[Role], Browser]
) -> None:
    keys = session.scalars(sa.select(Institution.public_key)).all()
    admin = browser(Role.ADMIN)
    for page in PAGES:
        text = admin.client.get(page).text
        assert "fmtl_api_" not in text
        assert "fmtl_enroll_" not in text
        for key in keys:
            assert key is not None
            assert key.hex() not in text


def test_the_ledger_flags_the_mismatch(seeded: Seeded, browser: Callable[[Role], Browser]) -> None:
    assert seeded.mismatch is not None
    page = browser(Role.AUDITOR).client.get("/console/federations/heart/ledger").text
    assert "1 reported ε disagrees with the recomputation" in page
    institution, number = seeded.mismatch
    row = re.search(
        rf'<tr class="flagged"><td>{number}</td><td class="text">{institution}</td>', page
    )
    assert row is not None


def test_forms_without_this_sessions_csrf_token_change_nothing(
    seeded: Seeded, session: Session, browser: Callable[[Role], Browser]
) -> None:
    admin, other = browser(Role.ADMIN), browser(Role.ADMIN)
    url = "/console/federations/heart/institutions"
    before = session.scalar(sa.select(sa.func.count()).select_from(Institution))
    session.rollback()  # SQLite: let the app write
    for form in ({}, {"csrf": "0" * 64}, {"csrf": other.csrf}):
        answer = admin.client.post(url, data={"name": "newcomer", "tasks": ["disease"], **form})
        assert answer.status_code == 403, form
    cross = admin.client.post(
        url,
        data={"name": "newcomer", "tasks": ["disease"], "csrf": admin.csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    session.expire_all()
    assert session.scalar(sa.select(sa.func.count()).select_from(Institution)) == before


def test_an_invitation_shows_its_one_time_token_once_and_never_again(
    seeded: Seeded, browser: Callable[[Role], Browser]
) -> None:
    admin = browser(Role.ADMIN)
    answer = admin.client.post(
        "/console/federations/heart/institutions",
        data={"name": "newcomer", "tasks": ["disease", "severity"], "csrf": admin.csrf},
    )
    assert answer.status_code == 201
    assert answer.headers["cache-control"] == "no-store"
    token = re.search(r'data-testid="enrollment-token">(fmtl_enroll_[^<]+)<', answer.text)
    assert token is not None
    for page in (*PAGES, "/console/audit"):
        assert token.group(1) not in admin.client.get(page).text
    again = admin.client.post(
        "/console/federations/heart/institutions",
        data={"name": "newcomer", "tasks": ["disease"], "csrf": admin.csrf},
    )
    assert again.status_code == 409
    assert "fmtl_enroll_" not in again.text


def test_revoking_a_token_ends_its_console_session(
    seeded: Seeded, app: FastAPI, issue: Callable[[Role], tuple[int, str]]
) -> None:
    admin = Browser(app, issue(Role.ADMIN)[1])
    auditor_id, auditor_token = issue(Role.AUDITOR)
    auditor = Browser(app, auditor_token)
    assert auditor.client.get("/console/audit").status_code == 200
    revoked = admin.client.post(
        f"/console/tokens/{auditor_id}/revoke", data={"csrf": admin.csrf}, follow_redirects=False
    )
    assert revoked.status_code == 303
    gone = auditor.client.get("/console/audit", follow_redirects=False)
    assert gone.status_code == 303
    assert gone.headers["location"].startswith("/console/sign-in?next=")


def test_sign_in_never_redirects_off_the_console(
    app: FastAPI, issue: Callable[[Role], tuple[int, str]]
) -> None:
    _, token = issue(Role.OPERATOR)
    client = TestClient(app, base_url="http://testserver")
    for target in ("https://evil.example/x", "//evil.example", "/api/v1/tokens"):
        answer = client.post(
            "/console/sign-in", data={"token": token, "next": target}, follow_redirects=False
        )
        assert answer.headers["location"] == "/console/federations", target


def test_a_tampered_audit_entry_is_named_as_the_first_bad_one(
    seeded: Seeded, session: Session, browser: Callable[[Role], Browser]
) -> None:
    victim = session.scalar(
        sa.select(AuditEntry.seq).where(AuditEntry.subject.like("spend:%")).order_by(AuditEntry.seq)
    )
    assert victim is not None
    session.execute(
        sa.update(AuditEntry).where(AuditEntry.seq == victim).values(details='{"mismatch":true}')
    )
    session.commit()
    page = browser(Role.AUDITOR).client.get("/console/audit?verify=1").text
    assert f'data-testid="first-bad">#{victim}</a>' in page
    assert re.search(rf'<tr id="entry-{victim}" class="bad-entry"', page)


def test_the_audit_log_pages_and_filters(
    seeded: Seeded, browser: Callable[[Role], Browser]
) -> None:
    auditor = browser(Role.AUDITOR)
    first = auditor.client.get("/console/audit").text
    seqs = [int(s) for s in re.findall(r'<tr id="entry-(\d+)"', first)]
    assert seqs == sorted(seqs, reverse=True)
    older = re.search(r'href="\?before=(\d+)[^"]*" rel="next"', first)
    assert older is not None
    second = auditor.client.get(f"/console/audit?before={older.group(1)}").text
    assert max(int(s) for s in re.findall(r'<tr id="entry-(\d+)"', second)) < min(seqs)
    empty = auditor.client.get("/console/audit?action=&subject=&actor=&since=&until=")
    assert empty.status_code == 200  # the filter form as a browser sends it, nothing filled
    assert auditor.client.get("/console/audit?since=yesterday").status_code == 422
    filtered = auditor.client.get("/console/audit?action=round.created&subject=round:heart/").text
    actions = re.findall(r'<td class="text">(round\.[a-z_]+|spend\.[a-z]+)</td>', filtered)
    assert actions
    assert set(actions) == {"round.created"}


def test_a_round_page_serves_its_live_state(
    seeded: Seeded, browser: Callable[[Role], Browser]
) -> None:
    operator = browser(Role.OPERATOR)
    state = operator.client.get("/console/federations/heart/rounds/2/live").json()
    assert state["stage"] == "completed"
    assert state["finished"] is True
    assert [s["stage"] for s in state["stages"]][:2] == ["scheduled", "advertise_keys"]
    assert state["dropouts"] == ["hospital_004 dropped at share_keys"]


def test_pages_carry_a_strict_content_security_policy(
    seeded: Seeded, browser: Callable[[Role], Browser]
) -> None:
    answer = browser(Role.OPERATOR).client.get("/console/federations/heart/rounds")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert answer.headers["cache-control"] == "no-store"
    assert not re.search(r"""(src|href)\\s*=\\s*["']?(https?:)?//""", answer.text)


def test_a_new_spend_redraws_the_ledger_chart(
    seeded: Seeded, session: Session, browser: Callable[[Role], Browser]
) -> None:
    from coordinator.ledger.models import PrivacySpend
    from coordinator.rounds.models import Round, RoundStage
    from federation.spec import Accountant

    auditor = browser(Role.AUDITOR)

    def chart() -> str:
        page = auditor.client.get("/console/federations/heart/ledger").text
        found = re.search(r'<svg[^>]*aria-label="Cumulative ε.*?</svg>', page, flags=re.S)
        assert found is not None
        return found.group(0)

    before = chart()
    assert chart() == before  # drawn once, then kept
    federation_id, last = session.execute(
        sa.select(Round.federation_id, sa.func.max(Round.number)).group_by(Round.federation_id)
    ).one()
    late = Round(federation_id=federation_id, number=last + 1, stage=RoundStage.COMPLETED)
    session.add(late)
    session.flush()
    session.add(
        PrivacySpend(
            round_id=late.id,
            institution_id=session.scalar(
                sa.select(Institution.id).where(Institution.name == seeded.institutions[0])
            ),
            accountant=Accountant.RDP,
            noise_multiplier=1.1,
            sample_rate=0.05,
            steps=20,
            delta=1e-5,
            reported_epsilon=7.5,
            recomputed_epsilon=7.5,
            budget_epsilon=8.0,
            mismatch=False,
        )
    )
    session.commit()
    assert chart() != before
