"""Per-task metrics: AUC with ties, undefined AUC, regression errors in original units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.data import LabelScale, SplitTensors
from agent.evaluation import auc, evaluate_split
from federation.model import build_model
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
