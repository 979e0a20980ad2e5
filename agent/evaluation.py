"""Per-task evaluation on the local validation split.

Two products, for two audiences:

- `evaluate_split`: the institution's own metrics, exact, for its logs and the benchmarks
  (they never leave the institution by themselves). Binary: AUC (ties averaged; left out
  when the split holds a single class), accuracy at 0.5, balanced accuracy (the mean of the
  recalls of the two classes, so that predicting the majority class scores 0.5 whatever the
  prevalence) and the expected calibration error (ECE). Multiclass: accuracy, balanced
  accuracy (mean recall over the classes present), macro one-vs-rest AUC over the classes
  present and ECE. Regression: MAE and RMSE in the label's original units (the scaling is
  undone). Every task also reports its loss and `n`, the number of labelled validation
  samples.
- `split_statistics`: the task-wise statistics of `federation.metrics` that go into the
  masked update, from which the coordinator learns only federation-wide metrics (and,
  where the institution opts in, the metrics it sends in clear). The same metrics but
  AUC (binned there) and regression errors (scaled units there) come out equal.

ECE is the top-label expected calibration error over `CALIBRATION_BINS` equal-width bins
of the predicted class's probability (Guo et al. 2017, "On Calibration of Modern Neural
Networks", eq. 3): Σ_b (n_b / n) |accuracy_b − confidence_b|. 0 is perfectly calibrated.

`evaluate_split` takes any module that maps a feature batch to one output per task (the
global `MultiTaskModel`, or an institution's personalised model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from agent.data import LabelScale, SplitTensors
from agent.loss import task_losses
from federation import metrics as sums
from federation.spec import FederationSpec, TaskKind

Metrics = dict[str, dict[str, float]]
#: Equal-width confidence bins of the ECE (15, as Guo et al. 2017), the same on both sides.
CALIBRATION_BINS: Final = sums.CALIBRATION_BINS
#: Samples per forward pass when evaluating a split.
EVAL_CHUNK: Final = 1024
#: Seed of the fixed subsample of a task's validation samples when there are more than
#: `federation.metrics.VALIDATION_SAMPLES_MAX` (the same samples every round).
SUBSAMPLE_SEED: Final = 0


def auc(scores: NDArray[np.float64], positives: NDArray[np.bool_]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks); None if undefined."""
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(average, counts)
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def balanced_accuracy(predicted: NDArray[np.int64], classes: NDArray[np.int64]) -> float:
    """Mean over the classes present in `classes` of the fraction predicted correctly."""
    recalls = [float(np.mean(predicted[classes == c] == c)) for c in np.unique(classes)]
    return float(np.mean(recalls))


def expected_calibration_error(
    probabilities: NDArray[np.float64], classes: NDArray[np.int64], bins: int = CALIBRATION_BINS
) -> float:
    """Top-label ECE of `probabilities` (n, classes) against the true `classes`."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == classes
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 joins bin 0.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(total / len(classes))


def _classification(
    probabilities: NDArray[np.float64], classes: NDArray[np.int64]
) -> dict[str, float]:
    predicted = probabilities.argmax(axis=1)
    return {
        "accuracy": float(np.mean(predicted == classes)),
        "balanced_accuracy": balanced_accuracy(predicted, classes),
        "ece": expected_calibration_error(probabilities, classes),
    }


def task_metrics(
    spec: FederationSpec,
    task: str,
    outputs: torch.Tensor,
    labels: torch.Tensor,
    scale: LabelScale | None,
) -> dict[str, float]:
    """The metrics of one task from its labelled samples' outputs (without `n` and loss)."""
    out = outputs.double().cpu()
    y = labels.cpu()
    kind = spec.task(task).kind
    result: dict[str, float] = {}
    if kind is TaskKind.BINARY:
        logits = out[:, 0].numpy()
        positives = y.numpy() > 0.5
        p = 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))
        result.update(_classification(np.stack([1.0 - p, p], axis=1), positives.astype(np.int64)))
        # Accuracy at 0.5 from the logit itself (a probability of exactly 0.5 counts as 0).
        result["accuracy"] = float(np.mean((logits > 0.0) == positives))
        value = auc(logits, positives)
        if value is not None:
            result["auc"] = value
    elif kind is TaskKind.MULTICLASS:
        probs = torch.softmax(out, dim=1).numpy()
        classes = y.numpy().astype(np.int64)
        result.update(_classification(probs, classes))
        per_class = [auc(probs[:, c], classes == c) for c in range(probs.shape[1])]
        defined = [v for v in per_class if v is not None]
        if defined:
            result["auc"] = float(np.mean(defined))
    else:
        factor = scale.scale if scale is not None else 1.0
        error = (out[:, 0] - y.double()).numpy() * factor
        result["mae"] = float(np.mean(np.abs(error)))
        result["rmse"] = float(np.sqrt(np.mean(error**2)))
    return result


def split_outputs(model: nn.Module, split: SplitTensors) -> dict[str, torch.Tensor]:
    """Every task's raw output on a (non-empty) split, computed in chunks: the split may be
    images streamed from disk, or simply large."""
    chunks = [
        model(split.features[torch.arange(start, min(start + EVAL_CHUNK, len(split)))])
        for start in range(0, len(split), EVAL_CHUNK)
    ]
    return {name: torch.cat([chunk[name] for chunk in chunks]) for name in chunks[0]}


@torch.no_grad()
def evaluate_split(
    spec: FederationSpec,
    model: nn.Module,
    split: SplitTensors,
    tasks: tuple[str, ...],
    label_scales: Mapping[str, LabelScale],
) -> Metrics:
    """Metrics of every task in `tasks` that has labelled samples in `split`."""
    model.eval()
    if len(split) == 0:
        return {}
    outputs = split_outputs(model, split)
    losses = task_losses(spec, outputs, split.labels, split.masks)
    metrics: Metrics = {}
    for task in tasks:
        mask = split.masks[task]
        n = int(mask.sum().item())
        if n == 0:
            continue
        result: dict[str, float] = {"n": float(n), "loss": float(losses[task].sum() / n)}
        result.update(
            task_metrics(
                spec, task, outputs[task][mask], split.labels[task][mask], label_scales.get(task)
            )
        )
        metrics[task] = result
    return metrics


def counted_samples(mask: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Indices of the labelled samples a task's statistics count: all of them, or a fixed
    subsample of `VALIDATION_SAMPLES_MAX` (chosen without looking at the data)."""
    labelled = np.flatnonzero(mask)
    cap = sums.VALIDATION_SAMPLES_MAX
    if len(labelled) <= cap:
        return labelled.astype(np.int64)
    keep = np.random.default_rng(SUBSAMPLE_SEED).permutation(len(labelled))[:cap]
    return np.sort(labelled[keep]).astype(np.int64)


@torch.no_grad()
def split_statistics(
    spec: FederationSpec,
    model: nn.Module,
    split: SplitTensors,
    tasks: tuple[str, ...],
) -> dict[str, sums.Statistics]:
    """Per task in `tasks` with labelled samples in `split`: its `federation.metrics`
    statistics (labels in the model's units; regression errors stay scaled)."""
    model.eval()
    if len(split) == 0:
        return {}
    outputs = split_outputs(model, split)
    losses = task_losses(spec, outputs, split.labels, split.masks)
    out: dict[str, sums.Statistics] = {}
    for task in tasks:
        mask = split.masks[task].cpu().numpy().astype(bool)
        index = torch.from_numpy(counted_samples(mask)).to(outputs[task].device)
        if len(index) == 0:
            continue
        out[task] = sums.evaluate(
            spec.task(task),
            outputs[task][index].double().cpu().numpy(),
            split.labels[task][index].double().cpu().numpy(),
            losses[task][index].double().cpu().numpy(),
        )
    return out


__all__ = [
    "CALIBRATION_BINS",
    "Metrics",
    "auc",
    "balanced_accuracy",
    "counted_samples",
    "evaluate_split",
    "expected_calibration_error",
    "split_outputs",
    "split_statistics",
    "task_metrics",
]
