"""Per-task evaluation on the local validation split.

Binary: AUC (ties averaged; left out when the split holds a single class) and accuracy at
0.5. Multiclass: accuracy and macro one-vs-rest AUC over the classes present. Regression:
MAE and RMSE in the label's original units (the scaling is undone). Every task also
reports its loss and `n`, the number of labelled validation samples.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from numpy.typing import NDArray

from agent.data import LabelScale, SplitTensors
from agent.loss import task_losses
from federation.model import MultiTaskModel
from federation.spec import FederationSpec, TaskKind

Metrics = dict[str, dict[str, float]]


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


@torch.no_grad()
def evaluate_split(
    spec: FederationSpec,
    model: MultiTaskModel,
    split: SplitTensors,
    tasks: tuple[str, ...],
    label_scales: Mapping[str, LabelScale],
) -> Metrics:
    """Metrics of every task in `tasks` that has labelled samples in `split`."""
    model.eval()
    if len(split) == 0:
        return {}
    outputs = model(split.features)
    losses = task_losses(spec, outputs, split.labels, split.masks)
    metrics: Metrics = {}
    for task in tasks:
        mask = split.masks[task]
        n = int(mask.sum().item())
        if n == 0:
            continue
        out = outputs[task][mask].double().cpu()
        y = split.labels[task][mask].cpu()
        result: dict[str, float] = {"n": float(n), "loss": float(losses[task].sum() / n)}
        kind = spec.task(task).kind
        if kind is TaskKind.BINARY:
            logits = out[:, 0].numpy()
            positives = y.numpy() > 0.5
            result["accuracy"] = float(np.mean((logits > 0.0) == positives))
            value = auc(logits, positives)
            if value is not None:
                result["auc"] = value
        elif kind is TaskKind.MULTICLASS:
            probs = torch.softmax(out, dim=1).numpy()
            classes = y.numpy().astype(np.int64)
            result["accuracy"] = float(np.mean(probs.argmax(axis=1) == classes))
            per_class = [auc(probs[:, c], classes == c) for c in range(probs.shape[1])]
            defined = [v for v in per_class if v is not None]
            if defined:
                result["auc"] = float(np.mean(defined))
        else:
            scale = label_scales[task].scale
            error = (out[:, 0] - y.double()).numpy() * scale
            result["mae"] = float(np.mean(np.abs(error)))
            result["rmse"] = float(np.sqrt(np.mean(error**2)))
        metrics[task] = result
    return metrics


__all__ = ["Metrics", "auc", "evaluate_split"]
