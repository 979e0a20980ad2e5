"""Local multi-task training of one round: `LocalTrainer`.

The agent hands the trainer the round's global model (a model-layout vector) and a
`RoundPlan` (noise multiplier, sampling rate, steps); the trainer runs that many steps on
Poisson-sampled batches of the local training split — DP-SGD through Opacus when the
federation enables DP (`privacy.dp.PrivateTraining`), plain SGD/Adam otherwise — and
returns the new local parameters as a model-layout vector. `federation.aggregation.
local_contribution` turns that into the round's update segments.

The sampling rate is B / N rounded up to the published grid
(`privacy.dp.published_sample_rate`): the batches are drawn, and the accountant charged,
at that rate, so the rate that leaves the agent says N only to within a factor 9/8. The
noisy sum is divided by the federation's batch size B (public), not by q·N (which moves
with N, and so with one record). Every random choice DP rests on (noise, sampling) comes
from a fresh `privacy.dp.DPRandomness` per round, keyed from `os.urandom`;
`reproducible_dp_seed` replaces it by one anyone who knows the seed can replay, for tests
and benchmarks only (the daemon refuses it).

Heads of tasks the institution holds no training labels for are frozen: they stay
exactly at the global values, so their update is zero (and `local_contribution` sends
zeros with a zero counter anyway). An optional FedProx term (Li et al. 2020, "Federated
Optimization in Heterogeneous Networks") pulls the trained parameters towards the global
ones; under DP it is added to the gradient after clipping and noise, since it does not
depend on any data (post-processing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

from agent.data import LocalDataset
from agent.errors import ConfigError, DataError, TrainingError
from agent.evaluation import Metrics, evaluate_split, split_statistics
from agent.image_data import StreamedImages
from agent.loss import multitask_loss, per_sample_loss
from federation.layout import ParameterLayout
from federation.metrics import Statistics
from federation.model import MultiTaskModel, build_model, load_model_vector, model_vector
from federation.spec import FederationSpec, TaskBalancing
from privacy.dp import (
    Accountant,
    PrivateTraining,
    RoundPlan,
    check_round,
    noise_for_budget,
    published_sample_rate,
)
from privacy.dp.randomness import DPRandomness

Progress = Callable[[int, int], None]
Batch = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]
#: A step's objective value and the mean loss of each task with labels in the batch.
LossReport = tuple[torch.Tensor, dict[str, float]]


@dataclass(frozen=True)
class TrainingOutcome:
    """What one round of local training produced (all of it stays local but the vector's
    update and the privacy parameters)."""

    local_vector: NDArray[np.float64]
    steps: int
    sample_rate: float
    noise_multiplier: float
    train_samples: int
    labelled: dict[str, int]
    mean_loss: float
    task_losses: dict[str, float] = field(default_factory=dict)
    private: bool = True


def resolve_device(device: str) -> torch.device:
    """`auto`: CUDA when available, else CPU; any other value is used as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device: '{device}' is not a torch device ({exc})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{device}' was asked for, but CUDA is not available")
    return resolved


class LocalTrainer:
    """Trains the federation's model on one institution's data, round after round."""

    def __init__(
        self,
        spec: FederationSpec,
        dataset: LocalDataset,
        *,
        device: str = "auto",
        reproducible_dp_seed: int | None = None,
    ) -> None:
        expected = spec.model.encoder.sample_shape
        if dataset.sample_shape != expected:
            raise DataError(
                f"the dataset's samples have shape {dataset.sample_shape}, federation "
                f"'{spec.name}' has a '{spec.model.encoder.kind}' encoder over inputs of "
                f"shape {expected}"
            )
        if dataset.n_train == 0:
            raise DataError("the training split is empty")
        self.spec = spec
        self.dataset = dataset
        self.device = resolve_device(device)
        self.layout = ParameterLayout.model(spec)
        self._train = dataset.train.to(self.device)
        self._validation = dataset.validation.to(self.device)
        self._reproducible_seed = reproducible_dp_seed
        self._rounds = 0
        #: Tasks trained here: held, with at least one labelled training sample.
        self.tasks_trained = tuple(t for t in dataset.tasks_held if dataset.train.labelled(t) > 0)
        if not self.tasks_trained:
            raise DataError("no task has a labelled sample in the training split")

    @property
    def balanced_tasks(self) -> int:
        """T, the tasks that share a sample's clipping bound one C / T each under DP
        (`training.task_balancing = "per_task_clip"`); 1 when the bound is not split."""
        training, tasks = self.spec.training, len(self.tasks_trained)
        if training.task_balancing is TaskBalancing.PER_TASK_CLIP and self.spec.dp.enabled:
            return tasks
        return 1

    # -- planning ----------------------------------------------------------------------

    @property
    def sample_rate(self) -> float:
        """Poisson sampling rate: B / N (at most 1) rounded up to the published grid."""
        return published_sample_rate(min(1.0, self.spec.training.batch_size / self.dataset.n_train))

    @property
    def noised_parameters(self) -> int:
        """Parameters DP-SGD adds noise to: the encoder and the heads of the tasks trained."""
        model = build_model(self.spec)
        frozen = sum(
            p.numel()
            for name in self.spec.task_names
            if name not in self.tasks_trained
            for p in model.heads[name].parameters()
        )
        return sum(p.numel() for p in model.parameters()) - frozen

    def noise_pairs(self, steps: int) -> int:
        """Noise pairs (`privacy.dp.noise`) that `steps` DP-SGD steps draw."""
        return steps * -(-self.noised_parameters // 2)

    @property
    def steps_per_round(self) -> int:
        """`local_epochs` passes over the data in expected batches: ceil(epochs / q)."""
        return max(1, math.ceil(self.spec.training.local_epochs / self.sample_rate - 1e-9))

    def plan(
        self,
        noise_multiplier: float | None = None,
        *,
        budget_epsilon: float | None = None,
        accountant: Accountant | None = None,
        rounds: int | None = None,
    ) -> RoundPlan:
        """What one round will do: (sigma, q, steps).

        sigma is, in order: the argument, the federation's `dp.noise_multiplier`, or the
        smallest sigma that spends `budget_epsilon` evenly over `rounds` more rounds
        (default: the planned rounds the accountant's history has not used yet).
        Without DP the noise multiplier is 0.
        """
        q, steps = self.sample_rate, self.steps_per_round
        dp = self.spec.dp
        if not dp.enabled:
            return RoundPlan(0.0, q, steps)
        sigma = noise_multiplier if noise_multiplier is not None else dp.noise_multiplier
        if sigma is None:
            if budget_epsilon is None:
                raise ConfigError(
                    "dp: the federation sets no noise_multiplier, so a privacy budget "
                    "(epsilon) is needed to choose one"
                )
            history = accountant.history if accountant is not None else ()
            kind = accountant.kind if accountant is not None else dp.accountant.value
            left = rounds if rounds is not None else max(1, dp.planned_rounds - len(history))
            sigma = noise_for_budget(budget_epsilon, dp.delta, q, steps, left, kind, history)
        return RoundPlan(float(sigma), q, steps)

    # -- evaluation --------------------------------------------------------------------

    def _model(self, global_vector: NDArray[np.generic]) -> MultiTaskModel:
        model = build_model(self.spec)
        load_model_vector(model, self.layout, global_vector)
        return model.to(self.device)

    def evaluate(self, global_vector: NDArray[np.generic]) -> Metrics:
        """Per-task metrics of a model-layout vector on the local validation split."""
        return evaluate_split(
            self.spec,
            self._model(global_vector),
            self._validation,
            self.dataset.tasks_held,
            self.dataset.label_scales,
        )

    def model(self, vector: NDArray[np.generic]) -> MultiTaskModel:
        """The federation's model with the parameters of a model-layout vector."""
        return self._model(vector)

    def evaluate_module(self, module: torch.nn.Module) -> Metrics:
        """Per-task metrics of any module with one output per task (a personalised model)."""
        return evaluate_split(
            self.spec,
            module.to(self.device),
            self._validation,
            self.dataset.tasks_held,
            self.dataset.label_scales,
        )

    def statistics(self, global_vector: NDArray[np.generic]) -> dict[str, Statistics]:
        """The task-wise validation statistics that go into the masked update."""
        return split_statistics(
            self.spec, self._model(global_vector), self._validation, self.dataset.tasks_held
        )

    def evaluate_train(self, global_vector: NDArray[np.generic]) -> Metrics:
        """The same metrics on the training split (to see over- or underfitting locally)."""
        return evaluate_split(
            self.spec,
            self._model(global_vector),
            self._train,
            self.dataset.tasks_held,
            self.dataset.label_scales,
        )

    # -- training ----------------------------------------------------------------------

    def _randomness(self, stream: int = 0) -> DPRandomness:
        """This round's noise and sampling: a key from os.urandom, or (tests and benchmarks
        only) one derived from the reproducible seed, the round's index and `stream`."""
        if self._reproducible_seed is None:
            return DPRandomness.from_os()
        return DPRandomness.predictable_from_seed(
            (self._reproducible_seed * 1_000_003 + self._rounds) * 4 + stream
        )

    def train(
        self,
        global_vector: NDArray[np.generic],
        plan: RoundPlan,
        *,
        progress: Progress | None = None,
        accountant: Accountant | None = None,
        budget_epsilon: float | None = None,
    ) -> TrainingOutcome:
        """Run `plan.steps` steps from the global model; the new local model as a vector.

        With an `accountant` and a `budget_epsilon` the round is checked first and refused
        with `BudgetExceeded` before any step; the accountant records the steps taken.
        """
        dp = self.spec.dp
        if dp.enabled and accountant is not None and budget_epsilon is not None:
            check_round(
                accountant,
                budget_epsilon,
                dp.delta,
                plan.noise_multiplier,
                plan.sample_rate,
                plan.steps,
            )
        model = self._model(global_vector)
        model.train()
        for name in self.spec.task_names:
            if name not in self.tasks_trained:
                model.heads[name].requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        anchor = [p.detach().clone() for p in params]
        optimizer = self._optimizer(params)
        train = self._train
        n = len(train)
        labels = {t: train.labels[t] for t in self.tasks_trained}
        masks = {t: train.masks[t] for t in self.tasks_trained}
        mu = self.spec.aggregation.fedprox_mu
        randomness = self._randomness()
        private: PrivateTraining | None = None
        # Per-task clipping: each (sample, task) pair is clipped to C / T, so a sample moves
        # the clipped sum by at most C, and the noise stays N(0, (sigma C)^2): Opacus adds
        # noise_multiplier x max_grad_norm = (sigma T) x (C / T).
        split = self.balanced_tasks
        if dp.enabled:
            private = PrivateTraining(
                model,
                optimizer,
                noise_multiplier=plan.noise_multiplier * split,
                max_grad_norm=dp.max_grad_norm / split,
                # The public batch size: q·N would move with N, i.e. with one record.
                expected_batch_size=float(self.spec.training.batch_size),
                mode=dp.grad_sample_mode,
                noise=randomness.noise,
            )
        # Each labelled sample's loss counts its task's weight: a fixed, public factor. (N/N_t
        # would make one record move every other record's gradient; see agent/loss.py.)
        normalisers = dict.fromkeys(self.tasks_trained, 1.0)

        def proximal_gradient() -> None:
            for p, p0 in zip(params, anchor, strict=True):
                if p.grad is not None:
                    p.grad.add_(p.detach() - p0, alpha=mu)

        totals: list[float] = []
        task_sums: dict[str, list[float]] = {t: [] for t in self.tasks_trained}
        try:
            for step in range(plan.steps):
                # Poisson sampling: each sample joins the batch independently with rate q
                # (the sampling DP-SGD's privacy amplification analysis assumes).
                chosen = randomness.sampling.mask(n, plan.sample_rate)
                idx = chosen.nonzero().squeeze(1).to(self.device)
                batch = _select(train.features, labels, masks, idx)
                if private is not None:
                    result = self._private_step(
                        private,
                        batch,
                        normalisers,
                        proximal_gradient if mu > 0 else None,
                        per_task=split > 1,
                    )
                else:
                    result = self._plain_step(model, optimizer, batch, params, anchor)
                if result is not None:
                    value, means = result
                    if not math.isfinite(float(value)):
                        raise TrainingError(f"the training loss became non-finite at step {step}")
                    totals.append(float(value))
                    for task, mean in means.items():
                        task_sums[task].append(mean)
                if progress is not None:
                    progress(step + 1, plan.steps)
        finally:
            if private is not None:
                private.close()
        local_vector = model_vector(model, self.layout)
        if not np.all(np.isfinite(local_vector)):
            raise TrainingError("training produced non-finite parameters")
        self._rounds += 1
        if dp.enabled and accountant is not None:
            accountant.record(plan.noise_multiplier, plan.sample_rate, plan.steps)
        return TrainingOutcome(
            local_vector=local_vector,
            steps=plan.steps,
            sample_rate=plan.sample_rate,
            noise_multiplier=plan.noise_multiplier if dp.enabled else 0.0,
            train_samples=n,
            labelled=dict(self.dataset.labelled_train),
            mean_loss=float(np.mean(totals)) if totals else float("nan"),
            task_losses={t: float(np.mean(v)) for t, v in task_sums.items() if v},
            private=dp.enabled,
        )

    def train_locally(
        self,
        vector: NDArray[np.generic],
        epochs: float,
        *,
        trainable: Callable[[MultiTaskModel], list[torch.nn.Parameter]] | None = None,
        stream: int = 2,
        learning_rate: float | None = None,
        max_grad_norm: float | None = None,
    ) -> NDArray[np.float64]:
        """Plain (never DP) training for a model that never leaves the institution.

        `epochs` passes over the training split in Poisson batches of the spec's expected
        size, with exact batch means and the spec's optimizer and learning rate; only the
        parameters `trainable(model)` returns move (all by default; heads of tasks not
        trained here never), at `learning_rate` when given; with `max_grad_norm`, each
        step's (batch-mean) gradient is scaled down to at most that norm. Nothing it produces
        may feed an
        update that is sent: it is for
        personalised models (`agent.personal`), whose results stay local.
        """
        model = self._model(vector)
        model.train()
        chosen_params = trainable(model) if trainable is not None else list(model.parameters())
        frozen = {
            id(p)
            for name in self.spec.task_names
            if name not in self.tasks_trained
            for p in model.heads[name].parameters()
        }
        params = [p for p in chosen_params if id(p) not in frozen]
        wanted = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
        if not params:
            return model_vector(model, self.layout)
        optimizer = self._optimizer(params, learning_rate)
        train = self._train
        n = len(train)
        q = self.sample_rate
        steps = max(1, math.ceil(epochs / q - 1e-9))
        labels = {t: train.labels[t] for t in self.tasks_trained}
        masks = {t: train.masks[t] for t in self.tasks_trained}
        sampling = self._randomness(stream).sampling
        for step in range(steps):
            idx = sampling.mask(n, q).nonzero().squeeze(1).to(self.device)
            result = self._plain_step(
                model,
                optimizer,
                _select(train.features, labels, masks, idx),
                params,
                None,
                max_grad_norm=max_grad_norm,
            )
            if result is not None and not math.isfinite(float(result[0])):
                raise TrainingError(f"local training's loss became non-finite at step {step}")
        out = model_vector(model, self.layout)
        if not np.all(np.isfinite(out)):
            raise TrainingError("local training produced non-finite parameters")
        return out

    def _private_step(
        self,
        private: PrivateTraining,
        batch: Batch,
        normalisers: dict[str, float],
        before_update: Callable[[], None] | None,
        *,
        per_task: bool = False,
    ) -> LossReport | None:
        features, labels, masks = batch
        report: list[LossReport] = []
        tasks = self.tasks_trained if per_task else ()
        size = int(features.shape[0])

        def loss_fn(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
            if not tasks:
                detached = {k: v.detach() for k, v in outputs.items()}
                report.append(multitask_loss(self.spec, detached, labels, masks))
                return per_sample_loss(self.spec, outputs, labels, masks, normalisers)
            # The batch was repeated once per task: block j holds task j's loss alone, so
            # the per-sample clipping clips each (sample, task) pair on its own.
            first = {k: v[:size].detach() for k, v in outputs.items()}
            report.append(multitask_loss(self.spec, first, labels, masks))
            blocks = []
            for j, task in enumerate(tasks):
                block = {k: v[j * size : (j + 1) * size] for k, v in outputs.items()}
                blocks.append(
                    per_sample_loss(
                        self.spec,
                        block,
                        {task: labels[task]},
                        {task: masks[task]},
                        {task: normalisers[task]},
                    )
                )
            return torch.cat(blocks)

        inputs = features.repeat(len(tasks), *([1] * (features.dim() - 1))) if tasks else features
        private.step(inputs, loss_fn, before_update=before_update)
        return report[0] if report else None

    def _plain_step(
        self,
        model: MultiTaskModel,
        optimizer: torch.optim.Optimizer,
        batch: Batch,
        params: list[torch.nn.Parameter],
        anchor: list[torch.Tensor] | None,
        *,
        max_grad_norm: float | None = None,
    ) -> LossReport | None:
        features, labels, masks = batch
        if features.shape[0] == 0:
            return None
        optimizer.zero_grad(set_to_none=True)
        loss, means = multitask_loss(self.spec, model(features), labels, masks)
        report = (loss.detach(), means)
        mu = self.spec.aggregation.fedprox_mu
        if mu > 0 and anchor is not None:
            loss = loss + 0.5 * mu * sum(
                (((p - p0) ** 2).sum() for p, p0 in zip(params, anchor, strict=True)),
                torch.zeros((), device=features.device),
            )
        if loss.requires_grad:
            loss.backward()  # type: ignore[no-untyped-call]
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
        return report

    def _optimizer(
        self, params: list[torch.nn.Parameter], learning_rate: float | None = None
    ) -> torch.optim.Optimizer:
        training = self.spec.training
        lr = training.learning_rate if learning_rate is None else learning_rate
        if training.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr)
        return torch.optim.SGD(params, lr=lr)


def _select(
    features: torch.Tensor | StreamedImages,
    labels: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    idx: torch.Tensor,
) -> Batch:
    return (
        features[idx],
        {t: y[idx] for t, y in labels.items()},
        {t: m[idx] for t, m in masks.items()},
    )


__all__ = ["LocalTrainer", "RoundPlan", "TrainingOutcome", "resolve_device"]
