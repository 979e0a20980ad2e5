"""Per-task metrics: AUC with ties, undefined AUC, regression errors in original units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.data import LabelScale, SplitTensors
from agent.evaluation import auc, balanced_accuracy, evaluate_split, expected_calibration_error
from federation.model import build_model
from federation.spec import FederationSpec
from tests.unit.agent_training.conftest import small_spec


def test_auc_counts_ties_as_half() -> None:
    scores = np.array([0.1, 0.4, 0.4, 0.8])
    positives = np.array([False, True, False, True])
    # Pairs (pos, neg): (0.4, 0.1) 1, (0.4, 0.4) 0.5, (0.8, 0.1) 1, (0.8, 0.4) 1 -> 3.5 / 4
    assert auc(scores, positives) == pytest.approx(0.875)
    assert auc(scores, np.ones(4, dtype=bool)) is None


def test_metrics_per_task_in_original_units() -> None:
    spec = small_spec()
    model = build_model(spec)
    x = torch.randn(5, spec.model.encoder.input_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = model(x)["level"][:, 0]
    split = SplitTensors(
        x,
        {
            "flag": torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0]),
            "level": predicted + torch.tensor([1.0, -1.0, 0.0, 0.0, 100.0]),
        },
        {
            "flag": torch.tensor([True, True, True, True, False]),
            "level": torch.tensor([True, True, True, True, False]),  # the outlier is unlabelled
        },
    )
    metrics = evaluate_split(
        spec, model, split, ("flag", "level"), {"level": LabelScale(140.0, 25.0, local=False)}
    )
    assert metrics["level"]["mae"] == pytest.approx(0.5 * 25.0, rel=1e-5)
    assert metrics["level"]["rmse"] == pytest.approx(np.sqrt(0.5) * 25.0, rel=1e-5)
    assert metrics["flag"]["n"] == 4.0
    assert 0.0 <= metrics["flag"]["auc"] <= 1.0
    assert set(metrics) == {"flag", "level"}


def test_balanced_accuracy_scores_the_majority_guess_at_one_half() -> None:
    classes = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    always_one = np.ones(10, dtype=np.int64)
    assert balanced_accuracy(always_one, classes) == pytest.approx(0.5)
    assert np.mean(always_one == classes) == pytest.approx(0.8)  # plain accuracy flatters it
    one_negative_found = always_one.copy()
    one_negative_found[8] = 0
    assert balanced_accuracy(one_negative_found, classes) == pytest.approx((1.0 + 0.5) / 2)


def test_ece_is_zero_when_confidence_matches_accuracy_and_grows_with_overconfidence() -> None:
    # Ten predictions at confidence 0.8, eight of them right: calibrated.
    probabilities = np.tile([0.2, 0.8], (10, 1))
    classes = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(probabilities, classes) == pytest.approx(0.0)
    # The same predictions at confidence 0.99: |0.8 - 0.99| in the one occupied bin.
    overconfident = np.tile([0.01, 0.99], (10, 1))
    assert expected_calibration_error(overconfident, classes) == pytest.approx(0.19)


def test_binary_and_multiclass_tasks_report_balanced_accuracy_and_ece() -> None:
    spec = FederationSpec.model_validate(
        {
            "name": "fed",
            "tasks": [
                {"name": "flag", "kind": "binary"},
                {"name": "grade", "kind": "multiclass", "n_classes": 3},
            ],
            "model": {"encoder": {"kind": "mlp", "input_dim": 4, "hidden": [8]}},
        }
    )
    model = build_model(spec)
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    split = SplitTensors(
        x,
        {"flag": torch.tensor([1.0, 0.0] * 6), "grade": torch.tensor([0, 1, 2] * 4)},
        {"flag": torch.ones(12, dtype=torch.bool), "grade": torch.ones(12, dtype=torch.bool)},
    )
    metrics = evaluate_split(spec, model, split, ("flag", "grade"), {})
    for task in ("flag", "grade"):
        assert 0.0 <= metrics[task]["balanced_accuracy"] <= 1.0
        assert 0.0 <= metrics[task]["ece"] <= 1.0
    # Balanced accuracy equals plain accuracy when every class is equally frequent.
    assert metrics["grade"]["balanced_accuracy"] == pytest.approx(metrics["grade"]["accuracy"])
