"""The multi-task objective: sum over tasks of weight x mean loss over labelled samples.

    L = sum_t  w_t * (1 / n_t) * sum_{i labelled for t} l_t(i)

where `w_t` is the task's weight from the federation spec, `n_t` the number of samples in
the batch labelled for t, and `l_t` the task's loss: binary cross-entropy on the logit,
cross-entropy over the classes, or squared error on the (scaled) regression label. A
sample without a label for t adds nothing to t's term, and no gradient: its placeholder
label is replaced by 0 before any arithmetic and the loss masked with `torch.where`
(a multiplication by 0 would let a NaN through as NaN * 0).

Under DP-SGD each sample's loss must depend on that sample alone (see
`privacy.dp.engine`), and so must every factor in it: `per_sample_loss` replaces the
batch's `1 / n_t` by a fixed, public factor (the trainer uses 1: each labelled sample's
loss counts its task's weight `w_t`). Summed over a Poisson batch and divided by the
federation's batch size B, that estimates `sum_t w_t (N_t / N) mean_t l_t`: the objective
above with each task weighted by its labelled fraction. A factor `N / N_t` would restore
the exact weights, but N and N_t are the local data's own counts, so adding one record
would rescale every other record's gradient, which the clipping bound does not cover.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.nn import functional as F  # noqa: N812 (PyTorch's own convention)

from federation.spec import FederationSpec, TaskKind


def task_losses(
    spec: FederationSpec,
    outputs: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Per-sample loss of every task in `labels`, 0 where a sample is unlabelled."""
    losses: dict[str, torch.Tensor] = {}
    for task, raw_labels in labels.items():
        kind = spec.task(task).kind
        out = outputs[task]
        mask = masks[task]
        # The placeholder of an unlabelled sample is replaced before any arithmetic: a NaN
        # (or an out-of-range class) there would otherwise reach the gradient as NaN * 0.
        y = torch.where(mask, raw_labels, torch.zeros_like(raw_labels))
        if kind is TaskKind.MULTICLASS:
            raw = F.cross_entropy(out, y, reduction="none")
        elif kind is TaskKind.BINARY:
            raw = F.binary_cross_entropy_with_logits(out[:, 0], y, reduction="none")
        else:
            raw = (out[:, 0] - y) ** 2
        losses[task] = torch.where(mask, raw, torch.zeros_like(raw))
    return losses


def multitask_loss(
    spec: FederationSpec,
    outputs: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, dict[str, float]]:
    """The batch objective (exact per-task means) and each task's mean loss.

    A task with no labelled sample in the batch contributes nothing (and is left out of
    the returned means).
    """
    per_task = task_losses(spec, outputs, labels, masks)
    first = next(iter(outputs.values()))
    total = torch.zeros((), device=first.device, dtype=first.dtype)
    means: dict[str, float] = {}
    for task, losses in per_task.items():
        count = int(masks[task].sum().item())
        if count == 0:
            continue
        mean = losses.sum() / count
        means[task] = float(mean.detach().item())
        total = total + spec.task(task).weight * mean
    return total, means


def per_sample_loss(
    spec: FederationSpec,
    outputs: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    normalisers: Mapping[str, float],
) -> torch.Tensor:
    """One loss per sample, `sum_t w_t * normalisers[t] * l_t(i)` (labelled tasks only).

    `normalisers` must not depend on the data (under DP they are fixed; see the module
    docstring): then one sample's loss depends on that sample alone.
    """
    per_task = task_losses(spec, outputs, labels, masks)
    first = next(iter(outputs.values()))
    total = torch.zeros(first.shape[0], device=first.device, dtype=first.dtype)
    for task, losses in per_task.items():
        scale = normalisers.get(task, 0.0)
        if scale > 0.0:
            total = total + (spec.task(task).weight * scale) * losses
    return total


__all__ = ["multitask_loss", "per_sample_loss", "task_losses"]
