"""Validation metrics as masked sums: what the coordinator computes equals the pooled metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from agent import evaluation
from agent.evaluation import auc
from federation import metrics
from federation.errors import AggregationError
from federation.layout import ParameterLayout, SegmentKind
from federation.round_api import update_codec
from federation.spec import FederationSpec, TaskKind, TaskSpec
from tests.unit.secagg.roundsim import make_federation, no_dropouts, run_round

SPEC = FederationSpec.model_validate(
    {
        "name": "pooled",
        "tasks": [
            {"name": "disease", "kind": "binary"},
            {"name": "severity", "kind": "multiclass", "n_classes": 4},
            {"name": "level", "kind": "regression"},
        ],
        "model": {"encoder": {"kind": "mlp", "input_dim": 3, "hidden": [4]}},
    }
)
#: Validation samples per institution and task (0: the institution does not hold the task).
SIZES = {"a": (40, 25, 0), "b": (7, 0, 31), "c": (120, 60, 12)}


def _split(task: TaskSpec, n: int, rng: np.random.Generator) -> tuple[NDArray, NDArray, NDArray]:
    """Outputs of a half-good model, labels and per-sample losses of one task."""
    if task.kind is TaskKind.BINARY:
        y = rng.integers(0, 2, n).astype(np.float64)
        out = (rng.normal(0, 2.0, n) + 1.5 * (2 * y - 1))[:, None]
        loss = np.logaddexp(0.0, -out[:, 0] * (2 * y - 1))
    elif task.kind is TaskKind.MULTICLASS:
        y = rng.integers(0, task.output_dim, n)
        out = rng.normal(0, 1.5, (n, task.output_dim))
        out[np.arange(n), y] += 1.0
        log_p = out - np.log(np.exp(out).sum(axis=1, keepdims=True))
        loss = -log_p[np.arange(n), y]
    else:
        y = rng.normal(0, 1, n)
        out = (y + rng.normal(0, 0.7, n))[:, None]
        out[0, 0] = 50.0  # an outlier beyond the error clip
        loss = (out[:, 0] - y) ** 2
    return out, y, loss


def _pooled_exact(
    task: TaskSpec, parts: list[tuple[NDArray, NDArray, NDArray]]
) -> dict[str, float]:
    """The metrics over the pooled validation sets, computed directly from the samples by
    the agent's own exact evaluation (`agent.evaluation`), not from statistics."""
    out = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    loss = np.concatenate([p[2] for p in parts])
    result = {"loss": float(np.mean(np.minimum(loss, metrics.LOSS_CLIP)))}
    if task.kind is TaskKind.REGRESSION:
        error = np.clip(out[:, 0] - y, -metrics.ERROR_CLIP, metrics.ERROR_CLIP)
        result["mae"] = float(np.mean(np.abs(error)))
        result["rmse"] = math.sqrt(float(np.mean(error**2)))
        return result
    spec = SPEC.model_copy(update={"tasks": (task,)})
    labels = torch.from_numpy(y if task.kind is TaskKind.BINARY else y.astype(np.int64))
    exact = evaluation.task_metrics(spec, task.name, torch.from_numpy(out), labels, None)
    return result | exact


def _segments(per_task: dict[str, metrics.Statistics]) -> dict[str, NDArray[np.generic]]:
    """One institution's whole update-layout input: zero update, its statistics."""
    layout = ParameterLayout.update(SPEC)
    parts: dict[str, NDArray[np.generic]] = {
        s.name: np.zeros(s.length) for s in layout.float_segments
    }
    parts |= {s.name: np.zeros(1, dtype=np.int64) for s in layout.counter_segments}
    return parts | metrics.to_segments(SPEC, per_task)


def test_update_layout_ends_with_every_tasks_statistics_with_public_bounds() -> None:
    layout = ParameterLayout.update(SPEC)
    tail = layout.statistic_segments
    assert tail[0].name == "metric.disease.n"
    assert tail[-1].end == layout.length
    assert {s.name.split(".")[1] for s in tail} == set(SPEC.task_names)
    counts = [s for s in tail if s.kind is SegmentKind.STATISTIC_COUNT]
    assert all(s.bound <= metrics.VALIDATION_SAMPLES_MAX for s in counts)
    # 32-bit sums of the largest round the spec allows never wrap.
    update_codec(SPEC, SPEC.schedule.max_participants)


def test_federation_wide_metrics_from_a_masked_round_equal_the_pooled_metrics() -> None:
    rng = np.random.default_rng(7)
    raw: dict[str, dict[str, tuple[NDArray, NDArray, NDArray]]] = {}
    inputs = {}
    codec = update_codec(SPEC, len(SIZES))
    for pid, (name, sizes) in enumerate(SIZES.items(), start=1):
        raw[name] = {}
        per_task = {}
        for task, n in zip(SPEC.tasks, sizes, strict=True):
            if n:
                raw[name][task.name] = _split(task, n, rng)
                per_task[task.name] = metrics.evaluate(task, *raw[name][task.name])
        inputs[pid] = codec.encode(_segments(per_task)).vector
    federation = make_federation(len(SIZES), 2, codec.length)
    outcome = run_round(federation, inputs, no_dropouts())
    assert outcome.total is not None
    found = metrics.federation_metrics(SPEC, codec.decode_sum(outcome.total).segments)

    for task in SPEC.tasks:
        parts = [raw[name][task.name] for name in SIZES if task.name in raw[name]]
        expected = _pooled_exact(task, parts)
        got = found[task.name]
        assert got.n == sum(len(p[1]) for p in parts)  # counts: exact
        assert got.institutions == len(parts)
        assert set(got.values) == set(expected)
        # Sums carry at most the codec's fixed-point error, spread over n samples.
        sum_error = max(
            codec.max_sum_error(s.segment, len(SIZES))
            for s in metrics.task_statistics(task)
            if s.kind is metrics.StatisticKind.SUM
        )
        for name in ("loss", "mae", "ece"):
            if name in expected:
                assert got.values[name] == pytest.approx(expected[name], abs=sum_error / got.n)
        if "rmse" in expected:
            assert got.values["rmse"] ** 2 == pytest.approx(
                expected["rmse"] ** 2, abs=sum_error / got.n
            )
        if "accuracy" in expected:  # from counts: exact
            assert got.values["accuracy"] == expected["accuracy"]
            assert got.values["balanced_accuracy"] == pytest.approx(
                expected["balanced_accuracy"], abs=1e-12
            )
            assert got.auc_error_bound is not None
            assert abs(got.values["auc"] - expected["auc"]) <= got.auc_error_bound + 1e-12
            # ... and the binned AUC of the sum is exactly that of the pooled statistics.
            pooled = metrics.pooled(task, [metrics.evaluate(task, *p) for p in parts])
            assert metrics.task_metrics(task, pooled).values["auc"] == got.values["auc"]


def test_binned_auc_is_exact_when_no_positive_shares_a_bin_with_a_negative() -> None:
    task = SPEC.tasks[0]
    logits = np.array([-6.0, -2.0, -1.0, 0.9, 2.0, 7.0])[:, None]
    labels = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    stats = metrics.evaluate(task, logits, labels, np.zeros(6))
    found = metrics.task_metrics(task, stats)
    assert found.auc_error_bound == 0.0
    assert found.values["auc"] == auc(logits[:, 0], labels > 0.5)


def test_a_crafted_model_cannot_push_the_statistics_out_of_range() -> None:
    """NaN, inf and huge outputs or losses are clipped: the update still encodes."""
    task = SPEC.tasks[1]
    outputs = np.array([[np.nan, 1.0, 0.0, 0.0], [np.inf, -np.inf, 0.0, 1e300]])
    stats = metrics.evaluate(task, outputs, np.array([0, 3]), np.array([np.inf, np.nan]))
    assert stats["loss"][0] == 2 * metrics.LOSS_CLIP
    codec = update_codec(SPEC, 3)
    codec.encode(_segments({task.name: stats}))
    n = metrics.VALIDATION_SAMPLES_MAX + 1
    with pytest.raises(AggregationError, match="at most"):
        metrics.evaluate(task, np.zeros((n, 4)), np.zeros(n), np.zeros(n))


def test_no_samples_no_metrics() -> None:
    found = metrics.task_metrics(SPEC.tasks[2], metrics.zero_statistics(SPEC.tasks[2]))
    assert (found.n, found.institutions, found.values) == (0, 0, {})
