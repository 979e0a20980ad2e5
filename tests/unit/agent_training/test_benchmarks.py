"""The benchmarks' reusable parts: the in-process federation, its privacy spend, the
personalised models, single-task federations, inner validation splits and the intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from agent.personal import PersonalSettings
from benchmarks.heart_disease import GUARANTEES, METHODS, Estimate, headline, paired
from benchmarks.heart_disease_runs import (
    HOSPITALS,
    datasets,
    inner_split,
    load_example,
    restrict_tasks,
    run_federated,
    run_inprocess,
)


@pytest.mark.slow
def test_inprocess_federation_reports_every_hospital_and_task_within_budget() -> None:
    spec, mappings = load_example()
    run = run_federated(
        spec, mappings, rounds=2, epsilon=3.0, seed=0, personal=PersonalSettings(private_model=True)
    )
    assert set(run.metrics) == set(run.personal) == set(HOSPITALS)
    assert "severity" not in run.metrics["hungarian"]
    for hospital, metrics in run.metrics.items():
        assert 0.0 <= metrics["disease"]["auc"] <= 1.0 or hospital == "switzerland"
        assert metrics["max_heart_rate"]["mae"] > 0
        assert 2.9 <= run.epsilon[hospital] <= 3.0
        # The personalised model is another model (its private half trained locally).
        assert run.personal[hospital]["disease"]["loss"] != metrics["disease"]["loss"]
    # Federation-wide figures of the last round's starting model, over all four hospitals.
    wide = run.federation_wide
    assert set(wide) == set(spec.task_names)
    assert wide["disease"]["auc_error_bound"] >= 0.0
    assert 0.0 <= wide["disease"]["balanced_accuracy"] <= 1.0
    plain = run_inprocess(spec, mappings, rounds=2, epsilon=None, seed=0)
    assert set(plain) == set(HOSPITALS)
    assert all(math.isfinite(m["disease"]["loss"]) for m in plain.values())


def test_a_single_task_federation_leaves_out_hospitals_without_the_task() -> None:
    spec, mappings = load_example()
    narrow, kept = restrict_tasks(spec, mappings, ["severity"])
    assert narrow.task_names == ("severity",)
    assert set(kept) == {"cleveland", "switzerland", "va"}  # Hungarian records no severity
    assert all(list(m.labels) == ["severity"] for m in kept.values())
    with pytest.raises(ValueError, match="unknown tasks"):
        restrict_tasks(spec, mappings, ["blood_type"])


def test_inner_validation_comes_from_the_training_split_only() -> None:
    spec, mappings = load_example()
    outer = datasets(spec, {"va": mappings["va"]}, seed=3)["va"]
    inner = inner_split(outer, spec, seed=3)
    assert len(inner.train) + len(inner.validation) == len(outer.train)
    held_out = {tuple(row) for row in outer.validation.features.numpy().tolist()}
    seen = {tuple(row) for row in inner.validation.features.numpy().tolist()}
    seen |= {tuple(row) for row in inner.train.features.numpy().tolist()}
    assert held_out.isdisjoint(seen)
    rate = inner.validation.labels["disease"].float().mean().item()
    assert abs(rate - outer.train.labels["disease"].float().mean().item()) < 0.1  # stratified


def test_interval_is_the_t_interval_of_the_paired_differences() -> None:
    values = [0.01, 0.03, -0.02, 0.04, 0.02]
    estimate = Estimate.of(values)
    half = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert estimate.mean == pytest.approx(0.016)
    assert (estimate.low, estimate.high) == pytest.approx((0.016 - half, 0.016 + half))
    results = {
        "local": [{"cleveland": {"disease": {"auc": 0.7}}, "va": {"disease": {"auc": 0.8}}}] * 2,
        "personal_dp": [{"cleveland": {"disease": {"auc": 0.75}}, "va": {"disease": {"auc": 0.79}}}]
        * 2,
        "fmtl_dp": [{"cleveland": {"disease": {"auc": 0.7}}}] * 2,
        "pooled": [{"cleveland": {"disease": {"auc": 0.7}}}] * 2,
    }
    assert paired(results, "personal_dp", "local", ["cleveland", "va"], "disease", "auc") == (
        pytest.approx([0.02, 0.02])
    )
    line = headline(results)
    assert line.startswith("heart_disease: fmtl_dp_auc=")
    assert "worst_gain=-0.010" in line


def test_every_figure_says_what_its_model_guarantees() -> None:
    assert set(GUARANTEES) == set(METHODS)
    # The personalised DP figure is DP only in its federated part: said, not implied.
    assert "not DP" in GUARANTEES["personal_dp"]
    assert "never leaves" in GUARANTEES["personal_dp"]
    assert "(epsilon, delta)-DP" in GUARANTEES["fmtl_dp"]
