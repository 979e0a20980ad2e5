"""The demo's HTML report shows what a reader relies on, from the recorded run alone."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fmtl.admin.client import (
    AuditVerification,
    LedgerEntry,
    ParticipantInfo,
    ResultInfo,
    RoundInfo,
    StageInfo,
)
from fmtl.demo.record import DemoEvent, DemoRecord, HospitalRecord, LocalModels
from fmtl.demo.report import main, render_report, round_lines

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
HOSPITALS = {"cleveland": 1, "hungarian": 2, "switzerland": 3, "va": 4}
STAGES = (
    "advertise_keys",
    "share_keys",
    "masked_input",
    "consistency_check",
    "unmasking",
    "aggregating",
)


def _round(number: int, dropped: str | None = None) -> RoundInfo:
    start = T0 + timedelta(seconds=20 * (number - 1))
    stages = [
        StageInfo(
            stage=stage,
            opened_at=start + timedelta(seconds=2 * i),
            closed_at=start + timedelta(seconds=2 * i + 2),
            responders=4 if dropped is None else 3,
        )
        for i, stage in enumerate(STAGES)
    ]
    stages.append(StageInfo(stage="completed", opened_at=start + timedelta(seconds=12)))
    participants = [
        ParticipantInfo(
            institution_id=iid,
            secagg_id=iid,
            status="dropped" if name == dropped else "completed",
            dropped_at_stage="share_keys" if name == dropped else None,
        )
        for name, iid in HOSPITALS.items()
    ]
    return RoundInfo(
        number=number,
        stage="completed",
        threshold=3,
        participants=4,
        started_at=start,
        finished_at=start + timedelta(seconds=12),
        stages=stages,
        participant_list=participants,
    )


#: The hospitals that opted in to send their own metrics in clear.
OPTED_IN = ("cleveland", "va")


def _record(rounds: int = 3) -> DemoRecord:
    results = []
    ledger = []
    for r in range(1, rounds + 1):
        wide = {"n_samples": 185, "institutions": 4}
        results += [
            ResultInfo(round=r, task="disease", institution=None, metric="auc", value=0.6, **wide),
            ResultInfo(
                round=r,
                task="disease",
                institution=None,
                metric="auc_error_bound",
                value=0.01 / r,
                **wide,
            ),
            ResultInfo(
                round=r, task="max_heart_rate", institution=None, metric="mae", value=0.9, **wide
            ),
        ]
        for name in HOSPITALS:
            if name in OPTED_IN:
                results.append(
                    ResultInfo(
                        round=r, task="disease", institution=name, metric="auc", value=0.5 + 0.1 * r
                    )
                )
                results.append(
                    ResultInfo(
                        round=r,
                        task="max_heart_rate",
                        institution=name,
                        metric="mae",
                        value=1.0 / r,
                    )
                )
            ledger.append(
                LedgerEntry(
                    federation="heart_disease",
                    institution=name,
                    round=r,
                    accountant="rdp",
                    noise_multiplier=1.1,
                    sample_rate=0.25,
                    steps=4,
                    delta=1e-5,
                    reported_epsilon=0.8 * r,
                    recomputed_epsilon=0.8 * r,
                    budget_epsilon=8.0,
                    mismatch=False,
                    recorded_at=T0,
                )
            )
    return DemoRecord(
        federation="heart_disease",
        stack="embedded (SQLite, in-process worker)",
        started_at=T0,
        finished_at=T0 + timedelta(seconds=95),
        settings={"rounds": rounds, "epsilon": 8.0},
        tasks={"disease": "binary", "max_heart_rate": "regression"},
        hospitals=[
            HospitalRecord(
                name=n, tasks=["disease", "max_heart_rate"], institution_id=i, budget_epsilon=8.0
            )
            for n, i in HOSPITALS.items()
        ],
        rounds=[_round(r, dropped="va" if r == 2 else None) for r in range(1, rounds + 1)],
        results=results,
        ledger=ledger,
        events=[DemoEvent(at=T0, round=2, what="killed the agent of va at share_keys")],
        audit=AuditVerification(ok=True, entries=120, head_hash="ab" * 32),
    )


def test_report_is_self_contained_html_with_no_network_reference() -> None:
    page = render_report(_record())
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page)
    assert "@import" not in page


def test_report_holds_a_learning_curve_per_task_and_metric_federation_wide() -> None:
    page = render_report(_record())
    for title in ("disease: auc (higher is better)", "max_heart_rate: mae (lower is better)"):
        assert f'aria-label="{title}"' in page
    curves = page[page.index('<h2 id="curves">') : page.index('<h2 id="privacy">')]
    assert "<title>federation-wide</title>" in curves
    for name in HOSPITALS:  # a hospital's own curve only where it opted in
        assert (f"<title>{name}</title>" in curves) is (name in OPTED_IN)
    assert "auc_error_bound" not in page


def test_the_results_table_says_which_figures_are_federation_wide_sums() -> None:
    page = render_report(_record())
    table = page[page.index("<h2>Task-wise results</h2>") : page.index('<h2 id="curves">')]
    assert "secure-aggregation sum" in table
    assert "opted in" in table
    heads = re.findall(r'<th scope="col">(.*?)</th>', table)
    assert heads == ["task", "metric", "federation-wide", *OPTED_IN]
    assert "0.600 ±0.003" in table  # the last round's AUC with its error bound


def test_every_svg_in_the_report_is_well_formed_xml() -> None:
    page = render_report(_record())
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert len(svgs) >= 4  # two curves, the privacy chart, the timeline
    for svg in svgs:
        ET.fromstring(svg)


def test_report_shows_privacy_budget_and_dropout_in_the_timeline() -> None:
    page = render_report(_record())
    assert 'aria-label="Cumulative ε per hospital' in page
    assert "budget (every hospital)" in page  # equal budgets: one line
    assert "va dropped at share_keys" in page
    assert "killed the agent of va at share_keys" in page
    assert "Audit log intact: 120" in page


def test_curves_show_the_recorded_federation_wide_figure_never_an_average_of_hospitals() -> None:
    record = _record(1)
    for name, value in (("cleveland", 0.2), ("va", 0.8)):
        record.results.append(
            ResultInfo(round=1, task="severity", institution=name, metric="accuracy", value=value)
        )
    assert "federation-wide" not in record.curve("severity", "accuracy")
    record.results.append(
        ResultInfo(
            round=1,
            task="severity",
            institution=None,
            metric="accuracy",
            value=0.41,
            n_samples=126,
            institutions=3,
        )
    )
    assert record.curve("severity", "accuracy")["federation-wide"] == [(1, 0.41)]


def test_report_of_a_run_with_no_round_still_renders() -> None:
    record = _record(0)
    page = render_report(record)
    assert "No round ran." in page
    assert "No task-wise results were recorded." in page


def test_report_rerenders_from_saved_record(tmp_path: Path) -> None:
    record = _record()
    record.save(tmp_path / "record.json")
    assert main([str(tmp_path / "record.json"), str(tmp_path / "report.html")]) == 0
    assert (tmp_path / "report.html").read_text() == render_report(record)


def test_hospitals_with_different_budgets_each_get_their_budget_line() -> None:
    record = _record()
    record.hospitals[3] = record.hospitals[3].model_copy(update={"budget_epsilon": 3.0})
    record.ledger[:] = [e.model_copy(update={"budget_epsilon": None}) for e in record.ledger]
    page = render_report(record)
    assert "<title>va budget</title>" in page
    assert "<title>cleveland budget</title>" in page


def test_report_puts_each_hospitals_personalised_figures_beside_the_federated_ones() -> None:
    record = _record()
    plain = render_report(record)
    assert "kept no personalised model" in plain
    for number, name in enumerate(HOSPITALS):
        record.local_models[name] = [
            LocalModels(
                round=r,
                federated={"disease": {"auc": 0.7, "accuracy": 0.60 + 0.01 * number, "n": 50}},
                personalised={"disease": {"auc": 0.8, "accuracy": 0.80, "n": 50}},
            )
            for r in (1, 2, 3)
        ]
    page = render_report(record)
    section = page[page.index('id="personalised"') : page.index('id="curves"')]
    assert "never leaves the hospital" in section
    # Every hospital's last round, federated -> personalised, and the mean over hospitals.
    assert section.count("0.700 → <b>0.800</b>") == len(HOSPITALS) + 1
    assert "0.615 → <b>0.800</b>" in section  # the mean of 0.60, 0.61, 0.62, 0.63
    # The learning curve of disease AUC gains the personalised models' average.
    assert "personalised (average)" in page
    assert record.local_curve("disease", "accuracy", "federated")[-1] == (3, pytest.approx(0.615))


def test_the_stage_table_splits_each_round_into_training_and_service_time() -> None:
    record = _record(2)
    record.training_s = {1: 1.25}
    lines = {line.number: line for line in round_lines(record)}
    assert lines[1].training_s == 1.25
    assert lines[1].wall_s is not None
    assert lines[1].service_s is not None
    assert lines[1].service_s == pytest.approx(max(lines[1].wall_s - 1.25, 0.0))
    assert lines[2].training_s is None
    assert lines[2].service_s is None
    page = render_report(record)
    assert "training s (slowest hospital)" in page
    assert "service s" in page
