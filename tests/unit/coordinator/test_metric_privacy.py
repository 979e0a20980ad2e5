"""A coordinator that crafts the global model cannot read a validation record out of what an
institution sends about its metrics (issue 10, point 5).

The attack, on the real heart-disease data of the Cleveland hospital: exactly one of its 61
validation patients has no recorded `ca` (its missing indicator is 1). The coordinator
stores as the next global model an encoder whose first unit is that indicator and a disease
head with logit `C` times it: every other patient gets logit 0, hence a binary
cross-entropy of exactly log 2, and the victim gets softplus(-C) ≈ 0 if diseased, else
≈ C. So the institution's own mean disease loss is below log 2 exactly when the victim has
the disease — one round, no sizes needed.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from sqlalchemy.orm import Session

from agent.config import AgentEnvironment, load_config
from agent.data import load_dataset
from agent.ledger import Ledger
from agent.round_state import InMemoryRoundStateStore
from agent.work import AgentWork
from coordinator.audit.service import SYSTEM
from coordinator.federations.models import Federation
from coordinator.federations.service import create_federation
from coordinator.institutions.models import Institution
from coordinator.model_versions.service import (
    latest_version_number,
    model_blob_key,
    store_model_version,
)
from coordinator.results.service import list_results
from coordinator.rounds import state
from coordinator.rounds.models import Round, RoundStage
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from federation.layout import ParameterLayout
from federation.model import build_model, model_vector
from federation.round_api import TrainingReport
from federation.spec import FederationSpec
from federation.wire import AgentProfile
from tests.round_support import FixedDeltaWork, expected_metrics, small_deltas
from tests.unit.agent.conftest import EXAMPLE, write_config

from .conftest import EnrolledAgent, enroll_agent
from .test_rounds_engine import (
    TASKS_HELD,
    agents,
    http,
    participant,
    round_app,
    run_until,
    small_slices,
    start,
    works_for,
)

__all__ = ["agents", "http", "round_app", "small_slices"]  # fixtures used here

FEATURES = 11
CA = 9  # position of `ca` among the features
LOGIT = 20.0


def heart_spec() -> FederationSpec:
    spec = FederationSpec.model_validate_json((EXAMPLE / "federation.json").read_text())
    return spec.model_copy(update={"dp": spec.dp.model_copy(update={"planned_rounds": 3})})


def crafted_model(spec: FederationSpec) -> NDArray[np.float64]:
    """Logit LOGIT x (ca is missing) for disease, 0 for everything else."""
    model = build_model(spec)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        linears = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
        linears[0].weight[0, FEATURES + CA] = 1.0
        for layer in linears[1:]:
            layer.weight[0, 0] = 1.0
        head = [m for m in model.heads["disease"].modules() if isinstance(m, torch.nn.Linear)]
        for layer in head[:-1]:
            layer.weight[0, 0] = 1.0
        head[-1].weight[0, 0] = LOGIT
    return model_vector(model, ParameterLayout.model(spec))


def read_victim_label(report: TrainingReport) -> int | None:
    """What the coordinator reads out of one institution's report: the victim's label."""
    task = report.tasks.get("disease")
    if task is None or "loss" not in task.metrics:
        return None
    return 1 if task.metrics["loss"] < math.log(2.0) else 0


def victim_label(dataset_features: torch.Tensor, labels: torch.Tensor) -> int:
    rows = torch.nonzero(dataset_features[:, FEATURES + CA] == 1.0).flatten()
    assert len(rows) == 1, "the attack needs exactly one validation patient without ca"
    return int(labels[rows[0]].item())


def _store_crafted(runtime: Runtime, federation: Federation) -> int:
    """The malicious coordinator's move: the crafted model as the next version."""
    vector = crafted_model(federation.spec)
    content = vector.astype("<f4").tobytes()
    with runtime.db.scope() as session:
        row = session.get_one(Federation, federation.id)
        latest = latest_version_number(session, row)
        version = 0 if latest is None else latest + 1
        blob = runtime.blobs.write(
            model_blob_key(row, version),
            [content],
            max_size=len(content),
            expected_size=len(content),
        )
        store_model_version(
            session,
            row,
            version=version,
            blob=blob,
            layout_fingerprint=ParameterLayout.model(federation.spec).fingerprint,
            actor=SYSTEM,
        )
        session.commit()
    return version


def _round_with_victim(
    runtime: Runtime,
    session: Session,
    settings: Settings,
    http: TestClient,
    tmp_path: Path,
    *,
    share_own_metrics: bool = False,
) -> tuple[dict[str, TrainingReport], int, str]:
    """One round on the crafted model: Cleveland (real agent work) and two others.

    Returns the reports the coordinator holds by institution, the victim's true label and
    the federation's name."""
    spec = heart_spec()
    federation = create_federation(session, spec, actor=SYSTEM)
    session.commit()
    crafted = _store_crafted(runtime, federation)
    agents: list[EnrolledAgent] = [
        enroll_agent(session, settings, spec.name, name, spec.task_names)
        for name in ("cleveland", "hungarian", "va")
    ]
    session.commit()
    path = write_config(tmp_path)
    if share_own_metrics:
        text = path.read_text()
        path.write_text(text.replace("[privacy]\n", "[privacy]\nshare_own_metrics = true\n"))
    config = load_config(path, environment=AgentEnvironment(key_passphrase=None))
    assert config.privacy.share_own_metrics is share_own_metrics
    dataset = load_dataset(config.data, spec)
    truth = victim_label(dataset.validation.features, dataset.validation.labels["disease"])
    profile = AgentProfile(
        institution_id=agents[0].institution.id,
        key_id=agents[0].institution.key_id,
        institution="cleveland",
        federation=spec.name,
        tasks_held=spec.task_names,
        enrolled_at=datetime.now(UTC),
        spec=spec,
        spec_fingerprint=spec.fingerprint(),
    )
    deltas = small_deltas(spec, 2)
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        victim = AgentWork(config, profile, dataset, ledger, InMemoryRoundStateStore())
        others = [
            FixedDeltaWork(spec, deltas[i], dict.fromkeys(spec.task_names, 10)) for i in (0, 1)
        ]
        parts = [participant(http, a, w) for a, w in zip(agents, [victim, *others], strict=True)]
        round_id = start(runtime, spec.name)
        done = run_until(runtime, parts, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED, done.failure_reason
    assert done.base_version == crafted  # the round evaluated the crafted model
    with runtime.db.scope() as check:
        reports = state.training_reports(check, check.get_one(Round, round_id))
        names = {
            p.id: check.get_one(Institution, p.institution_id).name
            for p in check.get_one(Round, round_id).participants
        }
    return {names[pid]: report for pid, report in reports.items()}, truth, spec.name


def test_a_crafted_model_reads_no_record_from_what_an_institution_sends_by_default(
    runtime: Runtime, session: Session, settings: Settings, http: TestClient, tmp_path: Path
) -> None:
    reports, truth, federation = _round_with_victim(runtime, session, settings, http, tmp_path)
    sent = reports["cleveland"]
    assert read_victim_label(sent) is None, (
        f"the coordinator read the victim's disease label ({truth}) out of the report"
    )
    assert sent.tasks == {}  # no metric of its own, hence no size either
    assert "n_validation" not in sent.model_dump_json()
    assert "train_samples" not in sent.model_dump_json()
    with runtime.db.scope() as check:
        rows = list_results(check, federation)
    assert not [row for row in rows if row.institution == "cleveland"]


def test_an_institution_that_opts_in_sends_its_own_metrics_and_only_those(
    runtime: Runtime, session: Session, settings: Settings, http: TestClient, tmp_path: Path
) -> None:
    reports, truth, federation = _round_with_victim(
        runtime, session, settings, http, tmp_path, share_own_metrics=True
    )
    sent = reports["cleveland"]
    assert set(sent.tasks) == set(heart_spec().task_names)
    assert "n_validation" not in sent.model_dump_json()
    # The institution accepted what this means: a crafted model reads the record.
    assert read_victim_label(sent) == truth
    with runtime.db.scope() as check:
        rows = list_results(check, federation)
    own = {(r.task, r.metric): r for r in rows if r.institution == "cleveland"}
    assert own[("disease", "loss")].value == pytest.approx(sent.tasks["disease"].metrics["loss"])
    assert all(r.n_samples is None and r.institutions is None for r in own.values())
    # The others did not opt in: nothing of theirs is shown, but every figure is also
    # there federation-wide, from the three institutions' summed statistics.
    assert {r.institution for r in rows} == {"cleveland", None}
    wide = {(r.task, r.metric): r for r in rows if r.institution is None}
    assert wide[("disease", "loss")].institutions == 3
    assert wide[("disease", "loss")].n_samples == 61 + 20 + 20


def test_the_coordinator_records_the_metrics_of_the_pooled_statistics_of_the_survivors(
    runtime: Runtime, http: TestClient, federation: Federation, agents: list[EnrolledAgent]
) -> None:
    works = works_for(federation, 3)
    for seed, work in enumerate(works):
        work.seed = seed
    parts = [participant(http, a, w) for a, w in zip(agents, works, strict=True)]
    round_id = start(runtime, federation.name)
    done = run_until(runtime, parts, RoundStage.COMPLETED, round_id)
    assert done.stage is RoundStage.COMPLETED, done.failure_reason
    with runtime.db.scope() as check:
        rows = list_results(check, federation.name, done.number)
    assert all(row.institution is None for row in rows)  # nobody opted in
    found = {(row.task, row.metric): row for row in rows}
    expected = expected_metrics(federation.spec, works)
    held = {task: sum(task in h for h in TASKS_HELD) for task in federation.spec.task_names}
    for task, result in expected.items():
        if held[task] < 2:  # one institution's own figure: withheld
            assert not [key for key in found if key[0] == task]
            continue
        for metric, value in result.values.items():
            row = found[(task, metric)]
            assert (row.n_samples, row.institutions) == (result.n, held[task])
            if metric in ("accuracy", "balanced_accuracy", "auc"):  # from exact counts
                assert row.value == value
            else:  # fixed-point sums
                assert row.value == pytest.approx(value, abs=1e-4)
        if result.auc_error_bound is not None:
            assert found[(task, "auc_error_bound")].value == result.auc_error_bound
