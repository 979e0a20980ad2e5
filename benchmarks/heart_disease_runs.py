"""The runs of the heart-disease benchmark, in one process: each hospital alone, the pooled
data, and the federation with its global and personalised models, with or without DP.

Every run reads the same hospitals' data with the same split (`split_seed` = the seed), so
the figures of different runs are paired by hospital and seed. `benchmarks/heart_disease.py`
prints them; `benchmarks/heart_disease_service.py` compares `run_inprocess` with the
service.

Fairness between the methods: every model has the federation's architecture and trains
for the same number of epochs (`rounds` x `training.local_epochs`) with the same batch
size; the local-only baseline may have its own learning rate (`local_lr`, chosen on
validation data like the federation's settings: `select` in `benchmarks/heart_disease.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from agent.data import LocalDataset, SplitTensors, load_dataset
from agent.errors import DataError
from agent.evaluation import Metrics
from agent.mapping import DataMapping
from agent.personal import Personaliser, PersonalSettings
from agent.training import LocalTrainer
from federation.aggregation import ServerState, apply_sums, local_contribution
from federation.layout import ParameterLayout
from federation.metrics import Statistics, pooled, task_metrics
from federation.model import build_model, model_vector
from federation.spec import FederationSpec, TaskKind
from privacy.dp import Accountant, RoundPlan

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "heart_disease"
HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
#: Share of a hospital's training split held back as inner validation when choosing
#: hyper-parameters (the held-out split is never looked at then).
INNER_VALIDATION_FRACTION = 0.25

#: hospital -> task -> metric -> value
HospitalMetrics = dict[str, Metrics]


def load_example() -> tuple[FederationSpec, dict[str, DataMapping]]:
    """The example federation spec and the four hospitals' data mappings."""
    spec = FederationSpec.model_validate_json((EXAMPLE / "federation.json").read_text())
    mappings = {h: DataMapping.from_toml(EXAMPLE / f"mapping_{h}.toml") for h in HOSPITALS}
    return spec, mappings


def restrict_tasks(
    spec: FederationSpec, mappings: Mapping[str, DataMapping], tasks: Sequence[str]
) -> tuple[FederationSpec, dict[str, DataMapping]]:
    """A federation of `tasks` only (a single-task one, say), and the hospitals' mappings
    with the other labels removed; a hospital holding none of them is left out."""
    unknown = [t for t in tasks if t not in spec.task_names]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; the federation has {spec.task_names}")
    kept = tuple(t for t in spec.tasks if t.name in tasks)
    narrow = spec.model_copy(update={"tasks": kept})
    out = {}
    for name, mapping in mappings.items():
        labels = {t: v for t, v in mapping.labels.items() if t in tasks}
        if labels:
            out[name] = mapping.model_copy(update={"labels": labels})
    return narrow, out


def seeded(spec: FederationSpec, seed: int, *, dp: bool) -> FederationSpec:
    return spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"init_seed": seed}),
            "dp": spec.dp.model_copy(update={"enabled": dp}),
        }
    )


def _stratum(split: SplitTensors, spec: FederationSpec) -> NDArray[np.int64]:
    for task in spec.tasks:
        if task.kind is not TaskKind.REGRESSION and task.name in split.labels:
            labels = split.labels[task.name].numpy().astype(np.int64)
            return np.where(split.masks[task.name].numpy(), labels, -1)
    return np.zeros(len(split), dtype=np.int64)


def _take(split: SplitTensors, index: NDArray[np.int64]) -> SplitTensors:
    i = torch.as_tensor(index)
    assert isinstance(split.features, torch.Tensor)
    return SplitTensors(
        split.features[i],
        {t: y[i] for t, y in split.labels.items()},
        {t: m[i] for t, m in split.masks.items()},
    )


def inner_split(data: LocalDataset, spec: FederationSpec, seed: int) -> LocalDataset:
    """The training split cut again into training and an inner validation split
    (stratified like the outer split): what hyper-parameters are chosen on."""
    strata = _stratum(data.train, spec)
    rng = np.random.default_rng(10_000 + seed)
    held: list[NDArray[np.int64]] = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        members = members[rng.permutation(len(members))]
        held.append(members[: round(INNER_VALIDATION_FRACTION * len(members))])
    validation = np.sort(np.concatenate(held)).astype(np.int64)
    train = np.setdiff1d(np.arange(len(data.train)), validation).astype(np.int64)
    return LocalDataset(
        train=_take(data.train, train),
        validation=_take(data.train, validation),
        tasks_held=data.tasks_held,
        feature_names=data.feature_names,
        label_scales=data.label_scales,
        scaling=data.scaling,
    )


def datasets(
    spec: FederationSpec, mappings: Mapping[str, DataMapping], seed: int, *, inner: bool = False
) -> dict[str, LocalDataset]:
    """Each hospital's data for `seed`'s split (`inner`: the inner validation split)."""
    out = {}
    for name, mapping in mappings.items():
        data = load_dataset(mapping.model_copy(update={"split_seed": seed}), spec)
        out[name] = inner_split(data, spec, seed) if inner else data
    return out


def trainers(
    spec: FederationSpec, data: Mapping[str, LocalDataset], seed: int
) -> dict[str, LocalTrainer]:
    out = {}
    for i, name in enumerate(HOSPITALS):
        if name in data:
            try:
                out[name] = LocalTrainer(
                    spec, data[name], device="cpu", reproducible_dp_seed=seed * 100 + i
                )
            except DataError:  # no label of the (restricted) tasks in its training split
                continue
    return out


def _initial(spec: FederationSpec) -> NDArray[np.float64]:
    return model_vector(build_model(spec), ParameterLayout.model(spec))


def _plan(
    trainer: LocalTrainer, accountant: Accountant, epsilon: float | None, left: int
) -> RoundPlan:
    if epsilon is None:
        return trainer.plan()
    return trainer.plan(budget_epsilon=epsilon, accountant=accountant, rounds=left)


# -- each hospital alone, and the pooled data ------------------------------------------------


def run_local(
    spec: FederationSpec,
    data: Mapping[str, LocalDataset],
    rounds: int,
    seed: int,
    *,
    epsilon: float | None = None,
    learning_rate: float | None = None,
) -> HospitalMetrics:
    """Each hospital alone for the epochs of the whole federated run; with DP at
    `epsilon` per hospital when given."""
    spec = seeded(spec, seed, dp=epsilon is not None)
    if learning_rate is not None:
        spec = spec.model_copy(
            update={"training": spec.training.model_copy(update={"learning_rate": learning_rate})}
        )
    results: HospitalMetrics = {}
    for name, trainer in trainers(spec, data, seed).items():
        vector = _initial(spec)
        accountant = Accountant(spec.dp.accountant.value)
        for done in range(rounds):
            plan = _plan(trainer, accountant, epsilon, rounds - done)
            outcome = trainer.train(vector, plan, accountant=accountant, budget_epsilon=epsilon)
            vector = outcome.local_vector
        results[name] = trainer.evaluate(vector)
    return results


def _pool(spec: FederationSpec, data: Mapping[str, LocalDataset]) -> LocalDataset:
    """The union of the training splits (the pooled model is evaluated per hospital)."""
    parts = [d.train for d in data.values()]
    labels: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for task in spec.tasks:
        ys, ms = [], []
        for part in parts:
            n = len(part)
            if task.name in part.labels:
                ys.append(part.labels[task.name])
                ms.append(part.masks[task.name])
            else:
                dtype = torch.int64 if task.kind is TaskKind.MULTICLASS else torch.float32
                ys.append(torch.zeros(n, dtype=dtype))
                ms.append(torch.zeros(n, dtype=torch.bool))
        labels[task.name] = torch.cat(ys)
        masks[task.name] = torch.cat(ms)
    features = [p.features for p in parts]
    assert all(isinstance(f, torch.Tensor) for f in features)
    train = SplitTensors(torch.cat(features), labels, masks)  # type: ignore[arg-type]
    first = next(iter(data.values()))
    return LocalDataset(
        train=train,
        validation=_take(train, np.zeros(0, dtype=np.int64)),
        tasks_held=spec.task_names,
        feature_names=first.feature_names,
        label_scales={k: v for d in data.values() for k, v in d.label_scales.items()},
        scaling=first.scaling,
    )


def run_pooled(
    spec: FederationSpec,
    data: Mapping[str, LocalDataset],
    rounds: int,
    seed: int,
    *,
    epsilon: float | None = None,
) -> HospitalMetrics:
    """One model on all training splits together (with DP at `epsilon` per patient when
    given: a central model, the reference a federation cannot beat on privacy alone)."""
    spec = seeded(spec, seed, dp=epsilon is not None)
    local = trainers(spec, data, seed)
    pooled = LocalTrainer(
        spec, _pool(spec, data), device="cpu", reproducible_dp_seed=seed * 100 + 99
    )
    vector = _initial(spec)
    accountant = Accountant(spec.dp.accountant.value)
    for done in range(rounds):
        plan = _plan(pooled, accountant, epsilon, rounds - done)
        vector = pooled.train(
            vector, plan, accountant=accountant, budget_epsilon=epsilon
        ).local_vector
    return {name: trainer.evaluate(vector) for name, trainer in local.items()}


# -- the federation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FederatedRun:
    """Per hospital: the federated model's and the personalised model's metrics on its
    evaluation split; the epsilon each hospital spent; coordinates clipped by secagg."""

    metrics: HospitalMetrics
    personal: HospitalMetrics
    epsilon: dict[str, float]
    clipped: int
    #: The last global model (model layout).
    vector: NDArray[np.float64] | None = None
    #: task -> metric -> value: federation-wide metrics of the model the last round started
    #: from, over the union of the evaluation splits (`federation.metrics`, what the service
    #: records from the secure sums for that round).
    federation_wide: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Extra personalised models evaluated at once (their names -> per hospital metrics).
    variants: dict[str, HospitalMetrics] = field(default_factory=dict)


def run_federated(
    spec: FederationSpec,
    mappings: Mapping[str, DataMapping] | None,
    rounds: int,
    epsilon: float | None,
    seed: int,
    *,
    personal: PersonalSettings | None = None,
    data: Mapping[str, LocalDataset] | None = None,
    weights: Sequence[float] = (),
) -> FederatedRun:
    """Federated multi-task training in one process; DP at `epsilon` per hospital, or
    without DP when `epsilon` is None. Each hospital runs the agent's own code: its
    `LocalTrainer` for the round, its `Personaliser` for what it keeps; the segments are
    summed (what secure aggregation yields) and `apply_sums` makes the next global model.
    `weights`: further private-model weights to evaluate the personalised model at."""
    dp = epsilon is not None
    spec = seeded(spec, seed, dp=dp)
    if data is None:
        assert mappings is not None
        data = datasets(spec, mappings, seed)
    local = trainers(spec, data, seed)
    settings = personal or PersonalSettings()
    personalisers = {name: Personaliser(spec, t, settings) for name, t in local.items()}
    accountants = {name: Accountant(spec.dp.accountant.value) for name in local}
    vector = _initial(spec)
    state = ServerState()
    clipped = 0
    wide: dict[str, dict[str, float]] = {}
    for done in range(rounds):
        sums: dict[str, NDArray[np.float64]] = {}
        wide = federation_wide(
            spec,
            [t.statistics(personalisers[n].federated_vector(vector)) for n, t in local.items()],
        )
        for name, trainer in local.items():
            own = personalisers[name]
            federated = own.federated_vector(vector)
            plan = _plan(trainer, accountants[name], epsilon, rounds - done)
            outcome = trainer.train(
                federated, plan, accountant=accountants[name], budget_epsilon=epsilon
            )
            own.absorb(outcome.local_vector, done + 1)
            own.train_private(done + 1)
            contribution = local_contribution(
                spec,
                federated,
                outcome.local_vector,
                train_samples=outcome.train_samples,
                labelled=outcome.labelled,
            )
            clipped += contribution.clipped
            for segment, values in contribution.segments.items():
                part = np.asarray(values, dtype=np.float64)
                sums[segment] = sums[segment] + part if segment in sums else part
        vector, state, _ = apply_sums(spec, vector, sums, state)
    variants: dict[str, HospitalMetrics] = {}
    for weight in weights:
        variants[f"w={weight:g}"] = {
            name: Personaliser(
                spec, local[name], replace(settings, private_weight=weight), own.state
            ).evaluate(vector)
            for name, own in personalisers.items()
        }
    delta = spec.dp.delta
    return FederatedRun(
        metrics={
            n: t.evaluate(personalisers[n].federated_vector(vector)) for n, t in local.items()
        },
        personal={n: personalisers[n].evaluate(vector) for n in local},
        epsilon={n: a.epsilon(delta) for n, a in accountants.items()},
        clipped=clipped,
        vector=vector,
        federation_wide=wide,
        variants=variants,
    )


def federation_wide(
    spec: FederationSpec, per_hospital: Sequence[Mapping[str, Statistics]]
) -> dict[str, dict[str, float]]:
    """Federation-wide metrics of the hospitals' pooled validation statistics."""
    out = {}
    for task in spec.tasks:
        parts = [stats[task.name] for stats in per_hospital if task.name in stats]
        found = task_metrics(task, pooled(task, parts))
        if found.n:
            out[task.name] = dict(found.values)
            if found.auc_error_bound is not None:
                out[task.name]["auc_error_bound"] = found.auc_error_bound
    return out


def run_inprocess(
    spec: FederationSpec,
    mappings: Mapping[str, DataMapping],
    rounds: int,
    epsilon: float | None,
    seed: int,
) -> HospitalMetrics:
    """Per-hospital, per-task held-out metrics of the global model (see `run_federated`)."""
    return run_federated(spec, mappings, rounds, epsilon, seed).metrics


__all__ = [
    "EXAMPLE",
    "HOSPITALS",
    "FederatedRun",
    "HospitalMetrics",
    "datasets",
    "federation_wide",
    "inner_split",
    "load_example",
    "restrict_tasks",
    "run_federated",
    "run_inprocess",
    "run_local",
    "run_pooled",
    "seeded",
    "trainers",
]
