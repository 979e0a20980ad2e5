"""Task-wise validation metrics as sums: what an agent adds to secure aggregation each round.

The coordinator chooses the global model every agent evaluates, so an institution's own
metrics of that model, sent in clear, would let a crafted model read single validation
records out of them (docs/rounds.md, "What leaves an institution"). Instead each agent puts,
per task, *sufficient statistics* of its validation split into its update vector — segments
`metric.<task>.<statistic>` at the end of the update layout, masked like everything else —
and an agent without the task puts zeros. Secure aggregation yields only their sum over
the round's survivors, from which `task_metrics` computes the **federation-wide** metrics:
those of the global model on the union of the survivors' validation splits.

Statistics of one task (segment order):

| statistic | kind | tasks | gives |
|---|---|---|---|
| `n` | count | all | samples behind the figures |
| `institutions` | count (0/1) | all | institutions behind the figures |
| `loss` | sum | all | `loss` = mean per-sample loss (clipped at `LOSS_CLIP`) |
| `class_count[k]`, `class_correct[k]` | counts | classification | `accuracy`, `balanced_accuracy` |
| `score_hist[c][neg/pos][b]` | counts | classification | `auc` (binned, see below) |
| `confidence_count[b]`, `confidence_correct[b]` | counts | classification | `ece` |
| `confidence_sum[b]` | sum | classification | `ece` |
| `abs_error`, `sq_error` | sums | regression | `mae`, `rmse` (scaled label units) |

Counts are exact integers (`IntSegment`s); sums are fixed point (`FloatSegment`s), exact
up to the codec's `max_sum_error` with zero-mean error. Every per-agent value is bounded by
a public constant (`VALIDATION_SAMPLES_MAX` samples per task, per-sample clips below), never
by the agent's own size: the bounds reveal nothing, the sums reveal only federation-wide
totals (the labelled validation samples per task and per class).

AUC comes from histograms of the score over `SCORE_BINS` fixed bins of the logit, equal in
asinh(logit / `SCORE_SCALE`) up to |logit| = `SCORE_LOGIT_MAX` (the end bins are open): 0.0013
wide near 0 and 13 % of the logit beyond 0.01, so the resolution follows the
scale of the scores — a model early in training has logits within ±0.2, a trained one
within ±10, and both keep most positive/negative pairs in different bins (on the
heart-disease federation the bound below stays under 0.03 from round 0 on, and the binned
AUC within 0.003 of the exact one). Pairs in different bins are ordered exactly;
a positive and a negative in the same bin count 1/2, so the binned AUC is within
`auc_error_bound` = ½ Σ_b pos_b·neg_b / (P·N) of the exact (Mann-Whitney) AUC of the
pooled scores — a bound the coordinator computes from the same sums and reports.
Multiclass AUC is the macro mean of one-vs-rest AUCs over the classes with both positives
and negatives, as on the agent (`agent.evaluation`). ECE is the top-label expected
calibration error over `CALIBRATION_BINS` equal-width confidence bins (Guo et al. 2017).
Regression errors are in the label's scaled units, `(value - center) / scale`, the units the
model predicts: the coordinator does not know an institution's scale (multiply by the
mapping's fixed scale for original units).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from federation.errors import AggregationError
from federation.spec import FederationSpec, TaskKind, TaskSpec

#: Segment names of the statistics: `metric.<task>.<statistic>`.
STATISTIC_PREFIX: Final = "metric."
#: Most labelled validation samples per task one agent counts: an agent with more evaluates
#: a fixed subsample. It bounds every count, so that n·bound fits 32-bit sums for up to
#: 214 748 participants (more than `ScheduleSpec.max_participants` allows).
VALIDATION_SAMPLES_MAX: Final = 10_000
#: Per-sample loss is clipped to [0, LOSS_CLIP] (BCE of 64 means p(true class) ≈ e^-64):
#: a crafted model cannot push the sum out of range, a sane one is never clipped.
LOSS_CLIP: Final = 64
#: Per-sample regression error (scaled units) is clipped to [-ERROR_CLIP, ERROR_CLIP], so
#: that the squared error is clipped exactly where the loss is.
ERROR_CLIP: Final = 8
#: AUC histograms: bins of equal width in asinh(logit / SCALE) over |logit| <= MAX.
SCORE_BINS: Final = 128
SCORE_SCALE: Final = 0.01
SCORE_LOGIT_MAX: Final = 16.0
#: Equal-width bins of top-label confidence for the ECE (15, as Guo et al. 2017).
CALIBRATION_BINS: Final = 15
#: Logits are capped here before any arithmetic (a crafted model may send inf or NaN).
_LOGIT_CAP: Final = 1e6

Statistics = dict[str, NDArray[np.int64] | NDArray[np.float64]]


class StatisticKind(enum.StrEnum):
    COUNT = "count"  # exact non-negative integers
    SUM = "sum"  # real sums, fixed point


@dataclass(frozen=True)
class Statistic:
    """One statistic of one task: `length` values, each within [0, bound] (counts) or
    [-bound, bound] (sums) for a single agent."""

    task: str
    name: str
    kind: StatisticKind
    length: int
    bound: int

    @property
    def segment(self) -> str:
        return f"{STATISTIC_PREFIX}{self.task}.{self.name}"


def _scored_classes(task: TaskSpec) -> int:
    """Classes with a score histogram: the positive class of a binary task, every class of
    a multiclass one."""
    return 1 if task.kind is TaskKind.BINARY else task.output_dim


def _classes(task: TaskSpec) -> int:
    return 2 if task.kind is TaskKind.BINARY else task.output_dim


def task_statistics(task: TaskSpec) -> tuple[Statistic, ...]:
    """The statistics of one task, in segment order."""
    v = VALIDATION_SAMPLES_MAX
    count, total = StatisticKind.COUNT, StatisticKind.SUM
    out = [
        Statistic(task.name, "n", count, 1, v),
        Statistic(task.name, "institutions", count, 1, 1),
        Statistic(task.name, "loss", total, 1, v * LOSS_CLIP),
    ]
    if task.kind is TaskKind.REGRESSION:
        out += [
            Statistic(task.name, "abs_error", total, 1, v * ERROR_CLIP),
            Statistic(task.name, "sq_error", total, 1, v * ERROR_CLIP**2),
        ]
        return tuple(out)
    k = _classes(task)
    out += [
        Statistic(task.name, "class_count", count, k, v),
        Statistic(task.name, "class_correct", count, k, v),
        Statistic(task.name, "score_hist", count, _scored_classes(task) * 2 * SCORE_BINS, v),
        Statistic(task.name, "confidence_count", count, CALIBRATION_BINS, v),
        Statistic(task.name, "confidence_correct", count, CALIBRATION_BINS, v),
        Statistic(task.name, "confidence_sum", total, CALIBRATION_BINS, v),
    ]
    return tuple(out)


def statistics(spec: FederationSpec) -> tuple[Statistic, ...]:
    """Every task's statistics, in the spec's task order (the update layout's tail)."""
    return tuple(s for task in spec.tasks for s in task_statistics(task))


# -- agent side: statistics of one split ------------------------------------------------------


def zero_statistics(task: TaskSpec) -> Statistics:
    """What an agent without (validation labels for) the task contributes."""
    out: Statistics = {}
    for s in task_statistics(task):
        if s.kind is StatisticKind.COUNT:
            out[s.name] = np.zeros(s.length, dtype=np.int64)
        else:
            out[s.name] = np.zeros(s.length, dtype=np.float64)
    return out


def score_bins(logits: NDArray[np.float64]) -> NDArray[np.int64]:
    """The histogram bin of each logit (monotone: a higher logit never lands lower)."""
    top = np.arcsinh(SCORE_LOGIT_MAX / SCORE_SCALE)
    edges = np.linspace(-top, top, SCORE_BINS + 1)[1:-1]
    return np.searchsorted(edges, np.arcsinh(logits / SCORE_SCALE), side="right").astype(np.int64)


def calibration_bins(confidence: NDArray[np.float64]) -> NDArray[np.int64]:
    """The ECE bin of each confidence: bin b holds (b/B, (b+1)/B], and 0 joins bin 0 (as
    `agent.evaluation.expected_calibration_error`)."""
    index = np.ceil(confidence * CALIBRATION_BINS).astype(np.int64) - 1
    out: NDArray[np.int64] = np.clip(index, 0, CALIBRATION_BINS - 1)
    return out


def _log_softmax(outputs: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    out: NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def class_logits(task: TaskSpec, outputs: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per scored class, the score its one-vs-rest AUC ranks samples by: shape (samples,
    scored classes). Binary: the logit. Multiclass: log(p / (1 - p)) + log(K - 1), which
    orders samples as p does and is 0 at p = 1/K, where a model early in training puts
    every class (the histogram bins are finest around 0)."""
    if task.kind is TaskKind.BINARY:
        return outputs[:, :1]
    log_p = _log_softmax(outputs)
    columns = []
    for c in range(outputs.shape[1]):
        others = np.delete(log_p, c, axis=1)
        top = others.max(axis=1)
        log_rest = top + np.log(np.exp(others - top[:, None]).sum(axis=1))
        columns.append(log_p[:, c] - log_rest + np.log(outputs.shape[1] - 1))
    return np.stack(columns, axis=1)


def evaluate(
    task: TaskSpec,
    outputs: NDArray[np.floating],
    labels: NDArray[np.generic],
    losses: NDArray[np.floating],
) -> Statistics:
    """The statistics of one task over labelled samples only.

    `outputs` is the head's raw output `(samples, output_dim)` (logits, or the scaled
    regression value), `labels` the labels (0/1, class index, scaled value) and `losses`
    each sample's task loss (`agent.loss.task_losses`). More than `VALIDATION_SAMPLES_MAX`
    samples is refused: the caller picks its subsample.
    """
    out = np.nan_to_num(
        np.asarray(outputs, dtype=np.float64), nan=0.0, posinf=_LOGIT_CAP, neginf=-_LOGIT_CAP
    )
    out = np.clip(out, -_LOGIT_CAP, _LOGIT_CAP)
    if out.ndim != 2 or out.shape[1] != task.output_dim:
        raise AggregationError(f"task '{task.name}': outputs must be (samples, {task.output_dim})")
    n = out.shape[0]
    if n > VALIDATION_SAMPLES_MAX:
        raise AggregationError(
            f"task '{task.name}': {n} samples, at most {VALIDATION_SAMPLES_MAX} are counted"
        )
    y = np.asarray(labels)
    loss = np.clip(
        np.nan_to_num(np.asarray(losses, dtype=np.float64), nan=LOSS_CLIP), 0.0, LOSS_CLIP
    )
    if y.shape != (n,) or loss.shape != (n,):
        raise AggregationError(f"task '{task.name}': labels and losses must have {n} values")
    stats = zero_statistics(task)
    if n == 0:
        return stats
    stats["n"][0] = n
    stats["institutions"][0] = 1
    stats["loss"][0] = float(loss.sum())
    if task.kind is TaskKind.REGRESSION:
        error = np.clip(out[:, 0] - y.astype(np.float64), -ERROR_CLIP, ERROR_CLIP)
        stats["abs_error"][0] = float(np.abs(error).sum())
        stats["sq_error"][0] = float((error**2).sum())
        return stats
    k = _classes(task)
    if task.kind is TaskKind.BINARY:
        truth = (y.astype(np.float64) > 0.5).astype(np.int64)
        predicted = (out[:, 0] > 0.0).astype(np.int64)
        p_positive = 1.0 / (1.0 + np.exp(-np.clip(out[:, 0], -60.0, 60.0)))
        confidence = np.maximum(p_positive, 1.0 - p_positive)
    else:
        truth = y.astype(np.int64)
        probs = np.exp(_log_softmax(out))
        predicted = probs.argmax(axis=1)
        confidence = probs.max(axis=1)
    if truth.min() < 0 or truth.max() >= k:
        raise AggregationError(f"task '{task.name}': labels must be classes 0..{k - 1}")
    correct = predicted == truth
    stats["class_count"][:] = np.bincount(truth, minlength=k)
    stats["class_correct"][:] = np.bincount(truth[correct], minlength=k)
    logits = class_logits(task, out)
    hist = np.zeros((logits.shape[1], 2, SCORE_BINS), dtype=np.int64)
    for c in range(logits.shape[1]):
        positive = truth == (1 if task.kind is TaskKind.BINARY else c)
        bins = score_bins(logits[:, c])
        hist[c, 0] = np.bincount(bins[~positive], minlength=SCORE_BINS)
        hist[c, 1] = np.bincount(bins[positive], minlength=SCORE_BINS)
    stats["score_hist"][:] = hist.reshape(-1)
    slot = calibration_bins(confidence)
    stats["confidence_count"][:] = np.bincount(slot, minlength=CALIBRATION_BINS)
    stats["confidence_correct"][:] = np.bincount(slot[correct], minlength=CALIBRATION_BINS)
    stats["confidence_sum"][:] = np.bincount(slot, weights=confidence, minlength=CALIBRATION_BINS)
    return stats


def add(a: Statistics, b: Statistics) -> Statistics:
    """The sum of two agents' statistics of one task (what secure aggregation computes)."""
    return {name: a[name] + b[name] for name in a}


# -- the update vector's segments --------------------------------------------------------------


def to_segments(
    spec: FederationSpec, per_task: Mapping[str, Statistics]
) -> dict[str, NDArray[np.generic]]:
    """Every statistic segment of the update layout; tasks absent from `per_task` are zeros."""
    unknown = sorted(set(per_task) - set(spec.task_names))
    if unknown:
        raise AggregationError(f"statistics of unknown tasks {unknown}")
    out: dict[str, NDArray[np.generic]] = {}
    for task in spec.tasks:
        values = per_task.get(task.name) or zero_statistics(task)
        for s in task_statistics(task):
            array = np.asarray(values[s.name])
            if array.shape != (s.length,):
                raise AggregationError(f"statistic '{s.segment}' must hold {s.length} values")
            out[s.segment] = array
    return out


def from_segments(
    spec: FederationSpec, sums: Mapping[str, NDArray[np.generic]]
) -> dict[str, Statistics]:
    """Per task, the statistics held in a decoded sum (by segment name)."""
    out: dict[str, Statistics] = {}
    for task in spec.tasks:
        stats: Statistics = {}
        for s in task_statistics(task):
            if s.segment not in sums:
                raise AggregationError(f"the sum has no segment '{s.segment}'")
            values = np.asarray(sums[s.segment])
            if values.shape != (s.length,):
                raise AggregationError(f"segment '{s.segment}' must hold {s.length} values")
            if s.kind is StatisticKind.COUNT:
                stats[s.name] = values.astype(np.int64)
            else:
                stats[s.name] = values.astype(np.float64)
        out[task.name] = stats
    return out


# -- coordinator side: metrics from (summed) statistics ----------------------------------------


@dataclass(frozen=True)
class TaskMetrics:
    """A task's metrics over the samples its statistics describe."""

    n: int
    institutions: int
    values: dict[str, float] = field(default_factory=dict)
    #: |binned AUC - exact AUC| is at most this (None where AUC is undefined).
    auc_error_bound: float | None = None
    #: Why there are no metrics although samples were counted: the summed counts do not fit
    #: together (some participant sent statistics no evaluation produces).
    problem: str | None = None


def _check_counts(task: TaskSpec, stats: Statistics, n: int) -> str | None:
    """What an honest sum always satisfies; the first rule broken, or None."""
    for s in task_statistics(task):
        if s.kind is StatisticKind.COUNT and np.any(np.asarray(stats[s.name]) < 0):
            return f"negative {s.name}"
    if int(stats["institutions"][0]) < 1:
        return "samples without an institution"
    if task.kind is TaskKind.REGRESSION:
        return None
    counts = np.asarray(stats["class_count"], dtype=np.int64)
    correct = np.asarray(stats["class_correct"], dtype=np.int64)
    hist = np.asarray(stats["score_hist"], dtype=np.int64).reshape(-1, 2, SCORE_BINS)
    confidence = np.asarray(stats["confidence_count"], dtype=np.int64)
    confident = np.asarray(stats["confidence_correct"], dtype=np.int64)
    positives = counts[1:] if task.kind is TaskKind.BINARY else counts
    if int(counts.sum()) != n or np.any(correct > counts):
        return "class counts do not add up to n"
    if np.any(hist.sum(axis=(1, 2)) != n) or np.any(hist[:, 1].sum(axis=1) != positives):
        return "score histograms do not match the class counts"
    if int(confidence.sum()) != n or np.any(confident > confidence):
        return "confidence bins do not add up to n"
    if int(confident.sum()) != int(correct.sum()):
        return "confidence bins do not match the correct count"
    return None


def binned_auc(
    negatives: NDArray[np.int64], positives: NDArray[np.int64]
) -> tuple[float, float] | None:
    """AUC from score histograms (same-bin pairs count ½) and its largest possible error;
    None when a class is missing."""
    p, q = int(positives.sum()), int(negatives.sum())
    if p == 0 or q == 0:
        return None
    below = np.concatenate([[0], np.cumsum(negatives)[:-1]]).astype(np.float64)
    pos = positives.astype(np.float64)
    tied = float((pos * negatives).sum())
    wins = float((pos * below).sum()) + 0.5 * tied
    return wins / (p * q), 0.5 * tied / (p * q)


def task_metrics(task: TaskSpec, stats: Statistics) -> TaskMetrics:
    """The metrics of one task from its (summed) statistics; none when n = 0.

    Counts give accuracy, balanced accuracy, the histogram AUC and the ECE's bins exactly;
    the sums (loss, errors, confidence) carry the fixed-point error of secure aggregation.
    """
    n = int(stats["n"][0])
    institutions = int(stats["institutions"][0])
    if n == 0 and institutions == 0:
        return TaskMetrics(0, 0)
    problem = "no samples counted" if n <= 0 else _check_counts(task, stats, n)
    if problem is not None:
        return TaskMetrics(0, institutions, problem=problem)

    def mean(name: str, clip: float) -> float:
        # A sum carries fixed-point error (and a dishonest participant's skew): keep it
        # within what n samples can give.
        return min(max(float(stats[name][0]) / n, 0.0), clip)

    values = {"loss": mean("loss", LOSS_CLIP)}
    if task.kind is TaskKind.REGRESSION:
        values["mae"] = mean("abs_error", ERROR_CLIP)
        values["rmse"] = math.sqrt(mean("sq_error", ERROR_CLIP**2))
        return TaskMetrics(n, institutions, values)
    counts = np.asarray(stats["class_count"], dtype=np.int64)
    correct = np.asarray(stats["class_correct"], dtype=np.int64)
    values["accuracy"] = float(correct.sum()) / n
    present = counts > 0
    values["balanced_accuracy"] = float(np.mean(correct[present] / counts[present]))
    hist = np.asarray(stats["score_hist"], dtype=np.int64).reshape(-1, 2, SCORE_BINS)
    aucs = [binned_auc(hist[c, 0], hist[c, 1]) for c in range(hist.shape[0])]
    defined = [a for a in aucs if a is not None]
    bound = None
    if defined:
        values["auc"] = float(np.mean([a for a, _ in defined]))
        bound = float(np.mean([b for _, b in defined]))
    confidence_count = np.asarray(stats["confidence_count"], dtype=np.float64)
    confidence_sum = np.clip(np.asarray(stats["confidence_sum"]), 0.0, confidence_count)
    gap = np.abs(np.asarray(stats["confidence_correct"], dtype=np.float64) - confidence_sum)
    values["ece"] = float(gap.sum()) / n
    return TaskMetrics(n, institutions, values, bound)


def federation_metrics(
    spec: FederationSpec, sums: Mapping[str, NDArray[np.generic]]
) -> dict[str, TaskMetrics]:
    """Every task's metrics from a round's decoded sum (tasks nobody evaluated: n = 0)."""
    per_task = from_segments(spec, sums)
    return {task.name: task_metrics(task, per_task[task.name]) for task in spec.tasks}


def pooled(task: TaskSpec, parts: Sequence[Statistics]) -> Statistics:
    """The statistics of several splits together (a plain sum, as secure aggregation)."""
    total = zero_statistics(task)
    for part in parts:
        total = add(total, part)
    return total


__all__ = [
    "CALIBRATION_BINS",
    "ERROR_CLIP",
    "LOSS_CLIP",
    "SCORE_BINS",
    "SCORE_LOGIT_MAX",
    "SCORE_SCALE",
    "STATISTIC_PREFIX",
    "VALIDATION_SAMPLES_MAX",
    "Statistic",
    "StatisticKind",
    "Statistics",
    "TaskMetrics",
    "binned_auc",
    "calibration_bins",
    "class_logits",
    "evaluate",
    "federation_metrics",
    "from_segments",
    "pooled",
    "score_bins",
    "statistics",
    "task_metrics",
    "task_statistics",
    "to_segments",
    "zero_statistics",
]
