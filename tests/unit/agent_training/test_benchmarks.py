"""The benchmarks' reusable parts: the in-process federation and its privacy spend."""

from __future__ import annotations

import math

import pytest

from benchmarks.heart_disease import HOSPITALS, load_example, run_federated, run_inprocess


@pytest.mark.slow
def test_inprocess_federation_reports_every_hospital_and_task_within_budget() -> None:
    spec, mappings = load_example()
    run = run_federated(spec, mappings, rounds=2, epsilon=3.0, seed=0)
    assert set(run.metrics) == set(HOSPITALS)
    assert "severity" not in run.metrics["hungarian"]
    for hospital, metrics in run.metrics.items():
        assert 0.0 <= metrics["disease"]["auc"] <= 1.0 or hospital == "switzerland"
        assert metrics["max_heart_rate"]["mae"] > 0
        assert 2.9 <= run.epsilon[hospital] <= 3.0
    # Federation-wide figures of the last round's starting model, over all four hospitals.
    wide = run.federation_wide
    assert set(wide) == set(spec.task_names)
    assert wide["disease"]["auc_error_bound"] >= 0.0
    assert 0.0 <= wide["disease"]["balanced_accuracy"] <= 1.0
    plain = run_inprocess(spec, mappings, rounds=2, epsilon=None, seed=0)
    assert set(plain) == set(HOSPITALS)
    assert all(math.isfinite(m["disease"]["loss"]) for m in plain.values())
