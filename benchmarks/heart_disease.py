"""Heart disease, four hospitals: local-only vs pooled vs federated multi-task, with and
without differential privacy. One process, no network.

Run from the repository root:

    python benchmarks/heart_disease.py                 # seeds 0-9 (about 2 minutes on 2 cores)
    python benchmarks/heart_disease.py --quick         # seeds 0-1, fewer rounds
    python benchmarks/heart_disease.py --seeds 3 7 11 --epsilon 5

Data: examples/heart_disease (UCI Heart Disease, four institutions; see its README), the
federation spec `federation.json` and one data mapping per hospital. Each hospital's
rows are split into train and a held-out validation split (20%, stratified by disease);
every figure is measured on the held-out split, per hospital and task.

For each seed (it sets the split, the initial weights and the training randomness):

- **local**: each hospital trains the model on its own data alone, without DP, for as many
  epochs as a hospital does over the whole federated run;
- **pooled**: one model trained, without DP, on the union of the four training splits
  (the non-federated upper reference; features are standardised per hospital, as in the
  federation);
- **fmtl**: federated multi-task learning, without DP: each round every hospital trains
  from the global model (`agent.training.LocalTrainer`), `federation.aggregation.
  local_contribution` makes its update segments, the segments are summed (what secure
  aggregation yields) and `federation.aggregation.apply_sums` applies them: FedAvg of the
  encoder over the hospitals, per-task averages of the heads over the hospitals holding
  each task;
- **fmtl_dp**: the same with DP-SGD through Opacus at a budget of epsilon per hospital
  (delta from the spec, 1e-5), the noise multiplier chosen by each hospital so that its
  budget lasts exactly the planned rounds; the table reports the epsilon spent.

The last line is the headline: disease-present AUC, mean over hospitals and seeds.
`run_inprocess` is the function a service run compares against (same settings).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run by path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from numpy.typing import NDArray

from agent.data import LocalDataset, SplitTensors, load_dataset
from agent.evaluation import Metrics
from agent.mapping import DataMapping
from agent.training import LocalTrainer
from federation.aggregation import ServerState, apply_sums, local_contribution
from federation.layout import ParameterLayout
from federation.metrics import Statistics, pooled, task_metrics
from federation.model import build_model, model_vector
from federation.spec import FederationSpec
from privacy.dp import Accountant

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "heart_disease"
HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
#: The headline task and metric.
HEADLINE = ("disease", "auc")
#: What the table shows for each task.
TABLE_METRIC = {"disease": "auc", "severity": "accuracy", "max_heart_rate": "mae", "angina": "auc"}
DEFAULT_ROUNDS = 30


def load_example() -> tuple[FederationSpec, dict[str, DataMapping]]:
    """The example federation spec and the four hospitals' data mappings."""
    spec = FederationSpec.model_validate_json((EXAMPLE / "federation.json").read_text())
    mappings = {h: DataMapping.from_toml(EXAMPLE / f"mapping_{h}.toml") for h in HOSPITALS}
    return spec, mappings


def _seeded(spec: FederationSpec, seed: int, *, dp: bool) -> FederationSpec:
    return spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"init_seed": seed}),
            "dp": spec.dp.model_copy(update={"enabled": dp}),
        }
    )


def _datasets(
    spec: FederationSpec, mappings: Mapping[str, DataMapping], seed: int
) -> dict[str, LocalDataset]:
    return {
        name: load_dataset(mapping.model_copy(update={"split_seed": seed}), spec)
        for name, mapping in mappings.items()
    }


def _trainers(
    spec: FederationSpec, datasets: Mapping[str, LocalDataset], seed: int
) -> dict[str, LocalTrainer]:
    return {
        name: LocalTrainer(spec, data, device="cpu", seed=seed * 100 + i)
        for i, (name, data) in enumerate(datasets.items())
    }


@dataclass(frozen=True)
class FederatedRun:
    """Held-out metrics per hospital and task, and the epsilon each hospital spent."""

    metrics: dict[str, Metrics]
    epsilon: dict[str, float]
    clipped: int
    #: task -> metric -> value: federation-wide metrics of the model the last round started
    #: from, over the union of the held-out splits (`federation.metrics`, what the service
    #: records from the secure sums for that round).
    federation_wide: dict[str, dict[str, float]] = field(default_factory=dict)


def run_federated(
    spec: FederationSpec,
    mappings: Mapping[str, DataMapping],
    rounds: int,
    epsilon: float | None,
    seed: int,
) -> FederatedRun:
    """Federated multi-task training in one process; DP at `epsilon` per hospital, or
    without DP when `epsilon` is None."""
    dp = epsilon is not None
    spec = _seeded(spec, seed, dp=dp)
    trainers = _trainers(spec, _datasets(spec, mappings, seed), seed)
    accountants = {name: Accountant(spec.dp.accountant.value) for name in trainers}
    vector = model_vector(build_model(spec), ParameterLayout.model(spec))
    state = ServerState()
    clipped = 0
    wide: dict[str, dict[str, float]] = {}
    for done in range(rounds):
        sums: dict[str, NDArray[np.float64]] = {}
        wide = federation_wide(spec, [trainer.statistics(vector) for trainer in trainers.values()])
        for name, trainer in trainers.items():
            accountant = accountants[name]
            if dp:
                plan = trainer.plan(
                    budget_epsilon=epsilon, accountant=accountant, rounds=rounds - done
                )
            else:
                plan = trainer.plan()
            outcome = trainer.train(vector, plan, accountant=accountant, budget_epsilon=epsilon)
            contribution = local_contribution(
                spec,
                vector,
                outcome.local_vector,
                train_samples=outcome.train_samples,
                labelled=outcome.labelled,
            )
            clipped += contribution.clipped
            for segment, values in contribution.segments.items():
                part = np.asarray(values, dtype=np.float64)
                sums[segment] = sums[segment] + part if segment in sums else part
        vector, state, _ = apply_sums(spec, vector, sums, state)
    delta = spec.dp.delta
    return FederatedRun(
        metrics={name: trainer.evaluate(vector) for name, trainer in trainers.items()},
        epsilon={name: acc.epsilon(delta) for name, acc in accountants.items()},
        clipped=clipped,
        federation_wide=wide,
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
) -> dict[str, Metrics]:
    """Per-hospital, per-task held-out metrics of federated training (see `run_federated`)."""
    return run_federated(spec, mappings, rounds, epsilon, seed).metrics


def run_local(
    spec: FederationSpec, mappings: Mapping[str, DataMapping], rounds: int, seed: int
) -> dict[str, Metrics]:
    """Each hospital alone, without DP, for the epochs of the whole federated run."""
    spec = _seeded(spec, seed, dp=False)
    trainers = _trainers(spec, _datasets(spec, mappings, seed), seed)
    start = model_vector(build_model(spec), ParameterLayout.model(spec))
    results: dict[str, Metrics] = {}
    for name, trainer in trainers.items():
        vector = start
        for _ in range(rounds):
            vector = trainer.train(vector, trainer.plan()).local_vector
        results[name] = trainer.evaluate(vector)
    return results


def _pool(spec: FederationSpec, datasets: Mapping[str, LocalDataset]) -> LocalDataset:
    """The union of the training splits (the pooled model is evaluated per hospital)."""
    parts = [data.train for data in datasets.values()]
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
                dtype = torch.int64 if task.n_classes else torch.float32
                ys.append(torch.zeros(n, dtype=dtype))
                ms.append(torch.zeros(n, dtype=torch.bool))
        labels[task.name] = torch.cat(ys)
        masks[task.name] = torch.cat(ms)
    train = SplitTensors(torch.cat([p.features for p in parts]), labels, masks)
    empty = SplitTensors(
        train.features[:0],
        {t: y[:0] for t, y in labels.items()},
        {t: m[:0] for t, m in masks.items()},
    )
    first = next(iter(datasets.values()))
    return LocalDataset(
        train=train,
        validation=empty,
        tasks_held=spec.task_names,
        feature_names=first.feature_names,
        label_scales={k: v for d in datasets.values() for k, v in d.label_scales.items()},
    )


def run_pooled(
    spec: FederationSpec, mappings: Mapping[str, DataMapping], rounds: int, seed: int
) -> dict[str, Metrics]:
    """One model on all training splits together, without DP; evaluated per hospital."""
    spec = _seeded(spec, seed, dp=False)
    datasets = _datasets(spec, mappings, seed)
    trainers = _trainers(spec, datasets, seed)
    pooled = LocalTrainer(spec, _pool(spec, datasets), device="cpu", seed=seed * 100 + 99)
    vector = model_vector(build_model(spec), ParameterLayout.model(spec))
    for _ in range(rounds):
        vector = pooled.train(vector, pooled.plan()).local_vector
    return {name: trainer.evaluate(vector) for name, trainer in trainers.items()}


# -- report -------------------------------------------------------------------------------

METHODS = ("local", "pooled", "fmtl", "fmtl_dp")


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def headline(results: Mapping[str, list[dict[str, Metrics]]], method: str) -> float:
    """Disease AUC, mean over hospitals (where defined) of the mean over seeds."""
    task, metric = HEADLINE
    per_hospital = []
    for hospital in HOSPITALS:
        values = [
            run[hospital][task][metric]
            for run in results[method]
            if metric in run.get(hospital, {}).get(task, {})
        ]
        if values:
            per_hospital.append(_mean(values))
    return _mean(per_hospital)


def print_table(results: Mapping[str, list[dict[str, Metrics]]]) -> None:
    header = f"{'hospital':<12} {'task':<15} {'metric':<9}" + "".join(f"{m:>15}" for m in METHODS)
    print(header)
    print("-" * len(header))
    for hospital in HOSPITALS:
        for task, metric in TABLE_METRIC.items():
            cells = []
            for method in METHODS:
                values = [
                    run[hospital][task][metric]
                    for run in results[method]
                    if metric in run.get(hospital, {}).get(task, {})
                ]
                if not values:
                    cells.append(f"{'-':>15}")
                elif len(values) == 1:
                    cells.append(f"{values[0]:>15.3f}")
                else:
                    cells.append(f"{_mean(values):>8.3f} ±{statistics.stdev(values):5.3f}")
            if any(c.strip() != "-" for c in cells):
                print(f"{hospital:<12} {task:<15} {metric:<9}" + "".join(cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 to 9")
    parser.add_argument("--rounds", type=int, default=None, help=f"default: {DEFAULT_ROUNDS}")
    parser.add_argument("--epsilon", type=float, default=5.0, help="DP budget per hospital")
    parser.add_argument("--quick", action="store_true", help="seeds 0 1, fewer rounds")
    parser.add_argument(
        "--service",
        action="store_true",
        help="also run the same settings and seeds through the service (coordinator and "
        "agent processes) and print both side by side (benchmarks/heart_disease_service.py)",
    )
    args = parser.parse_args(argv)
    if args.service:
        from benchmarks.heart_disease_service import main_service

        raise SystemExit(main_service(args.seeds, args.rounds, args.epsilon, quick=args.quick))
    # Ten seeds by default: a validation split holds 8 (Switzerland) to 61 (Cleveland)
    # patients, so one seed's AUC moves by several hundredths from the split alone.
    seeds = args.seeds or ([0, 1] if args.quick else list(range(10)))
    rounds = args.rounds or (DEFAULT_ROUNDS // 2 if args.quick else DEFAULT_ROUNDS)
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    spec, mappings = load_example()
    t = spec.training
    print(
        f"heart disease: {len(HOSPITALS)} hospitals, seeds {seeds}, {rounds} rounds x "
        f"{t.local_epochs:g} local epochs, batch {t.batch_size}, lr {t.learning_rate:g} "
        f"({t.optimizer}), DP epsilon {args.epsilon:g} per hospital at delta {spec.dp.delta:g} "
        f"({spec.dp.accountant.value}), clip {spec.dp.max_grad_norm:g}"
    )
    results: dict[str, list[dict[str, Metrics]]] = {m: [] for m in METHODS}
    spent: list[float] = []
    started = time.perf_counter()
    for seed in seeds:
        results["local"].append(run_local(spec, mappings, rounds, seed))
        results["pooled"].append(run_pooled(spec, mappings, rounds, seed))
        results["fmtl"].append(run_inprocess(spec, mappings, rounds, None, seed))
        private = run_federated(spec, mappings, rounds, args.epsilon, seed)
        results["fmtl_dp"].append(private.metrics)
        spent.extend(private.epsilon.values())
        summary = " ".join(f"{m}={headline({m: results[m][-1:]}, m):.3f}" for m in METHODS)
        print(
            f"seed {seed}: disease auc {summary} (max epsilon {max(private.epsilon.values()):.3f})"
        )
    print(f"\nheld-out metrics, mean ± sd over {len(seeds)} seeds (mae in beats per minute):")
    print_table(results)
    if len(seeds) > 1:
        per_seed = {m: [headline({m: [run]}, m) for run in results[m]] for m in METHODS}
        print("\ndisease auc, mean over hospitals, per seed: mean ± sd over seeds")
        for method in METHODS:
            values = per_seed[method]
            print(f"  {method:<8} {_mean(values):.3f} ± {statistics.stdev(values):.3f}")
        for other in ("local", "pooled"):
            diff = [a - b for a, b in zip(per_seed["fmtl_dp"], per_seed[other], strict=True)]
            print(
                f"  fmtl_dp - {other:<7} {_mean(diff):+.3f} ± {statistics.stdev(diff):.3f} "
                "(paired by seed)"
            )
    print(
        f"\nDP: largest epsilon spent by a hospital {max(spent):.3f} (budget {args.epsilon:g}, "
        f"delta {spec.dp.delta:g}); {time.perf_counter() - started:.0f} s in all"
    )
    print(
        f"heart_disease: fmtl_dp_auc={headline(results, 'fmtl_dp'):.3f} "
        f"local_auc={headline(results, 'local'):.3f} pooled_auc={headline(results, 'pooled'):.3f}"
    )


if __name__ == "__main__":
    main()
