"""`fmtl admin` and its client drive the real coordinator app; failures are one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

from coordinator.auth.models import Role
from coordinator.settings import Settings
from fmtl.admin import tables
from fmtl.admin.cli import app as admin_app
from fmtl.admin.cli import load_spec
from fmtl.admin.client import AdminClient, AdminError, LedgerEntry, ResultInfo
from tests.unit.coordinator.conftest import bearer

SPEC = {
    "name": "heart",
    "tasks": [
        {"name": "disease", "kind": "binary"},
        {"name": "severity", "kind": "multiclass", "n_classes": 5},
    ],
    "model": {"encoder": {"kind": "mlp", "input_dim": 13}},
}


def _render(table: object) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


@pytest.fixture
def admin_client(client: TestClient, admin: dict[str, str]) -> AdminClient:
    token = admin["Authorization"].removeprefix("Bearer ")
    return AdminClient("http://testserver", token, http=client)


def test_admin_creates_a_federation_and_invites_an_institution(admin_client: AdminClient) -> None:
    created = admin_client.create_federation(SPEC)
    assert created.name == "heart"
    assert created.tasks == ["disease", "severity"]
    invitation = admin_client.invite("heart", "cleveland", ["disease"])
    assert invitation.enrollment_token.startswith("fmtl_enroll_")
    listed = admin_client.institutions("heart")
    assert [(i.name, i.state, i.tasks) for i in listed] == [("cleveland", "invited", ["disease"])]
    assert "cleveland" in _render(tables.institutions_table(listed))


def test_a_refused_call_is_one_line_with_the_coordinators_reason(
    admin_client: AdminClient,
) -> None:
    admin_client.create_federation(SPEC)
    with pytest.raises(AdminError) as raised:
        admin_client.create_federation(SPEC)
    assert raised.value.status == 409
    assert "\n" not in str(raised.value)
    assert "heart" in str(raised.value)
    with pytest.raises(AdminError) as missing:
        admin_client.invite("nowhere", "cleveland", ["disease"])
    assert missing.value.status == 404


def test_a_token_without_the_admin_role_is_refused_with_a_hint(
    client: TestClient, session: object, settings: Settings
) -> None:
    auditor = bearer(session, settings, Role.AUDITOR)  # type: ignore[arg-type]
    reader = AdminClient(
        "http://testserver", auditor["Authorization"].removeprefix("Bearer "), http=client
    )
    with pytest.raises(AdminError) as raised:
        reader.create_federation(SPEC)
    assert raised.value.status == 403
    garbage = AdminClient("http://testserver", "fmtl_api_nonsense", http=client)
    with pytest.raises(AdminError, match="FMTL_ADMIN_TOKEN"):
        garbage.federations()


def test_no_token_is_refused_before_any_request() -> None:
    with pytest.raises(AdminError, match="FMTL_ADMIN_TOKEN"):
        AdminClient("http://127.0.0.1:9", "")


def test_cli_names_an_unreachable_coordinator_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FMTL_ADMIN_TOKEN", "fmtl_api_whatever")
    result = CliRunner().invoke(admin_app, ["--url", "http://127.0.0.1:9", "rounds", "heart"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot reach the coordinator at http://127.0.0.1:9")


def test_cli_without_a_token_says_which_variable_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FMTL_ADMIN_TOKEN", raising=False)
    result = CliRunner().invoke(admin_app, ["federation", "list"])
    assert result.exit_code == 1
    assert "set FMTL_ADMIN_TOKEN" in result.output


def test_spec_files_in_json_and_toml_read_alike(tmp_path: Path) -> None:
    as_json = tmp_path / "spec.json"
    as_json.write_text(json.dumps(SPEC))
    as_toml = tmp_path / "spec.toml"
    as_toml.write_text(
        'name = "heart"\n'
        '[[tasks]]\nname = "disease"\nkind = "binary"\n'
        '[[tasks]]\nname = "severity"\nkind = "multiclass"\nn_classes = 5\n'
        '[model.encoder]\nkind = "mlp"\ninput_dim = 13\n'
    )
    assert load_spec(as_json) == load_spec(as_toml) == SPEC
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(AdminError, match="not valid json"):
        load_spec(broken)
    with pytest.raises(AdminError, match="cannot read"):
        load_spec(tmp_path / "absent.json")


def test_results_table_shows_the_federation_wide_figures_and_opted_in_institutions() -> None:
    rows = [
        ResultInfo(round=3, task="disease", institution="cleveland", metric="auc", value=0.81),
        ResultInfo(
            round=3,
            task="disease",
            institution=None,
            metric="auc",
            value=0.77,
            n_samples=185,
            institutions=4,
        ),
        ResultInfo(
            round=3,
            task="disease",
            institution=None,
            metric="auc_error_bound",
            value=0.004,
            n_samples=185,
            institutions=4,
        ),
        ResultInfo(round=2, task="disease", institution="va", metric="auc", value=0.1),
    ]
    text = _render(tables.results_table(rows, 3))
    for shown in ("federation", "cleveland", "0.810", "0.770 ±0.004", "185 / 4"):
        assert shown in text
    assert "opted in" in text  # the caption says where each figure comes from
    assert "0.100" not in text
    assert "auc_error_bound" not in text


def test_spend_table_shows_the_latest_cumulative_epsilon_and_mismatches() -> None:
    from datetime import UTC, datetime

    def entry(round_: int, epsilon: float, mismatch: bool = False) -> LedgerEntry:
        return LedgerEntry(
            federation="heart",
            institution="va",
            round=round_,
            accountant="rdp",
            noise_multiplier=1.0,
            sample_rate=0.1,
            steps=5,
            delta=1e-5,
            reported_epsilon=epsilon,
            recomputed_epsilon=epsilon,
            budget_epsilon=8.0,
            mismatch=mismatch,
            recorded_at=datetime.now(UTC),
        )

    text = _render(tables.spend_table([entry(1, 0.5), entry(2, 0.9, mismatch=True)], 2))
    assert "0.900" in text
    assert "MISMATCH" in text
    assert "0.500" not in text
    assert "0.500" in _render(tables.spend_table([entry(1, 0.5), entry(2, 0.9)], 1))


def test_start_next_round_follows_a_round_the_scheduler_opened_first(
    admin_client: AdminClient, session: object
) -> None:
    from coordinator.audit.service import Actor, ActorKind
    from coordinator.federations.service import get_federation
    from coordinator.rounds.service import open_round

    admin_client.create_federation(SPEC)
    # The scheduler opened round 1 a moment before the admin asked for the next one.
    open_round(
        session,  # type: ignore[arg-type]
        get_federation(session, "heart"),  # type: ignore[arg-type]
        actor=Actor(ActorKind.SYSTEM, "scheduler"),
    )
    started = admin_client.start_next_round("heart", after=0, timeout_s=0.0)
    assert started.number == 1
    # With nothing newer than round 1, the conflict is reported, not waited out forever.
    with pytest.raises(AdminError) as raised:
        admin_client.start_next_round("heart", after=1, timeout_s=0.0)
    assert raised.value.status == 409


def test_audit_verify_checks_an_expected_head_and_a_round_fail_is_refused_readably(
    admin_client: AdminClient,
) -> None:
    admin_client.create_federation(SPEC)
    intact = admin_client.audit_verify()
    assert intact.ok
    assert admin_client.audit_verify(expect_head=intact.head_hash).ok
    gone = admin_client.audit_verify(expect_head="f" * 64)
    assert not gone.ok
    assert gone.reason is not None
    assert "not in the audit log" in gone.reason
    with pytest.raises(AdminError) as missing:
        admin_client.fail_round("heart", 7, "no such round")
    assert missing.value.status == 404
    assert "\n" not in str(missing.value)
