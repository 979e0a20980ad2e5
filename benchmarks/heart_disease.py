"""Heart disease, four hospitals: is a hospital's model better inside the federation than
alone? Local-only, pooled, the federation's global model and each hospital's personalised
model, each without and with differential privacy. One process, no network.

Run from the repository root:

    python benchmarks/heart_disease.py                  # seeds 0-19, 30 rounds, epsilon 5
    python benchmarks/heart_disease.py --quick          # seeds 0-1, 15 rounds
    python benchmarks/heart_disease.py --tasks disease  # a single-task federation
    python benchmarks/heart_disease.py --select         # choose settings on validation data
    python benchmarks/heart_disease.py --jobs 1         # one process (default: one per core)

Data: examples/heart_disease (UCI Heart Disease, four institutions; see its README), the
federation spec `federation.json` and one data mapping per hospital. Each hospital's rows
are split into training and a held-out split (20%, stratified by disease) that only the
reported figures are measured on; `--select` cuts the training split once more and never
looks at the held-out split.

For each seed (it sets the split, the initial weights and, through the benchmark-only
`reproducible_dp_seed`, the DP noise and sampling), per
hospital and task, every model trains for the same epochs (`rounds` x the spec's local
epochs) with the same batch size:

- **local** / **local_dp**: the hospital alone (DP: DP-SGD at epsilon on its own data);
- **pooled** / **pooled_dp**: one model on the union of the four training splits (DP: at
  epsilon per patient; a central model, the reference no federation beats on privacy);
- **fmtl** / **fmtl_dp**: the federation's global model (`agent.training.LocalTrainer` at
  each hospital, `federation.aggregation` for the sums, as the service runs them);
- **personal** / **personal_dp**: each hospital's personalised model from the same runs
  (`agent.personal`, settings `PERSONAL`: a private model trained on the hospital's own
  data beside the federated one, their outputs mixed). It never leaves the hospital;
  what leaves — the federation's updates — is DP in `*_dp`, at epsilon per hospital
  (delta from the spec), the noise chosen so that the budget lasts the planned rounds.

Figures: per task its metric's mean over seeds, and the paired difference to local-only
(by hospital and seed) with a 95% t-interval over seeds; balanced accuracy and ECE beside.
The last line is the headline: disease AUC, mean over hospitals and seeds.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run by path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from scipy import stats

from agent.mapping import DataMapping
from agent.personal import FineTune, PersonalSettings
from benchmarks.heart_disease_runs import (
    HOSPITALS,
    HospitalMetrics,
    datasets,
    load_example,
    restrict_tasks,
    run_federated,
    run_inprocess,
    run_local,
    run_pooled,
    seeded,
)
from federation.spec import FederationSpec, TaskBalancing, TaskKind

#: The headline task and metric.
HEADLINE = ("disease", "auc")
DEFAULT_ROUNDS = 30
DEFAULT_SEEDS = tuple(range(20))
METHODS = ("local", "local_dp", "pooled", "pooled_dp", "fmtl", "fmtl_dp", "personal", "personal_dp")
#: Classification metrics shown beside the AUC (name -> row label).
EXTRA_METRICS = {"balanced_accuracy": "balanced acc", "accuracy": "accuracy", "ece": "ece"}
#: What each figure's model guarantees (printed with the figures).
GUARANTEES = {
    "local": "the hospital's own model, no DP; it never leaves the hospital",
    "local_dp": "the hospital's own model, DP-SGD at epsilon on its data (could be published)",
    "pooled": "one model on all hospitals' data gathered in one place, no DP (not a federation)",
    "pooled_dp": "the same with DP-SGD at epsilon per patient "
    "(a central curator, not a federation)",
    "fmtl": "the federation's global model, no DP: the masked updates that leave are not DP",
    "fmtl_dp": "the federation's global model: everything that leaves a hospital (its masked "
    "updates) is (epsilon, delta)-DP on its data, so is the global model",
    "personal": "the personalised model of `fmtl`: its federated part is not DP, its private "
    "part never leaves",
    "personal_dp": "the personalised model of `fmtl_dp`: its federated part is the DP global "
    "model; its private part trains on the hospital's data without DP and never leaves, so the "
    "personalised model as a whole is not DP and is never published (nor are its figures)",
}
#: The differences to local-only the tables show.
COMPARED = ("fmtl", "fmtl_dp", "personal", "personal_dp")
#: Each hospital's personalisation in the benchmark, chosen with --select on validation:
#: a private model beside the federated one, weight 0.75 (against 0.25 and 0.5; head
#: fine-tuning on top was no better), trained like the local-only model.
PERSONAL = PersonalSettings(private_model=True, private_weight=0.75)
#: The local-only baseline's learning rate, chosen with --select on validation among 0.1,
#: 0.3 and 1.0 (None: the federation's, which is the 0.3 chosen).
LOCAL_LR: float | None = None

# Re-exported for benchmarks/heart_disease_service.py and the tests.
__all__ = ["HEADLINE", "HOSPITALS", "load_example", "main", "run_federated", "run_inprocess"]

Results = dict[str, list[HospitalMetrics]]  # method -> one entry per seed


def _t95(n: int) -> float:
    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else math.nan


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its 95% t-interval."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate:
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        mean = float(np.mean(values))
        if n == 1:
            return cls(mean, math.nan, math.nan, 1)
        half = _t95(n) * float(np.std(values, ddof=1)) / math.sqrt(n)
        return cls(mean, mean - half, mean + half, n)

    def signed(self) -> str:
        if math.isnan(self.low):
            return f"{self.mean:+.3f}"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def value(run: HospitalMetrics, hospital: str, task: str, metric: str) -> float | None:
    found = run.get(hospital, {}).get(task, {}).get(metric)
    return None if found is None or not math.isfinite(found) else float(found)


def per_seed(results: Results, method: str, hospital: str, task: str, metric: str) -> list[float]:
    return [v for run in results[method] if (v := value(run, hospital, task, metric)) is not None]


def paired(
    results: Results, method: str, base: str, hospitals: Sequence[str], task: str, metric: str
) -> list[float]:
    """Per seed, the mean over `hospitals` of method − base (only where both are defined)."""
    out = []
    for a, b in zip(results[method], results[base], strict=True):
        diffs = [
            va - vb
            for h in hospitals
            if (va := value(a, h, task, metric)) is not None
            and (vb := value(b, h, task, metric)) is not None
        ]
        if diffs:
            out.append(float(np.mean(diffs)))
    return out


def mean_over_hospitals(results: Results, method: str, task: str, metric: str) -> float:
    """Mean over hospitals (where defined) of the mean over seeds."""
    means = [
        float(np.mean(v)) for h in HOSPITALS if (v := per_seed(results, method, h, task, metric))
    ]
    return float(np.mean(means)) if means else math.nan


def holders(results: Results, task: str, metric: str) -> list[str]:
    return [h for h in HOSPITALS if per_seed(results, "local", h, task, metric)]


def primary_metric(kind: TaskKind) -> str:
    return "mae" if kind is TaskKind.REGRESSION else "auc"


def print_task(results: Results, spec: FederationSpec, task: str, methods: Sequence[str]) -> None:
    kind = spec.task(task).kind
    metric = primary_metric(kind)
    who = holders(results, task, metric)
    if not who:
        return
    n = len(results["local"])
    unit = " (beats per minute)" if metric == "mae" else ""
    print(f"\n{task}: {metric}{unit}, held-out, mean over {n} seeds")
    print(f"{'hospital':<12}" + "".join(f"{m:>12}" for m in methods))
    for hospital in [*who, "mean"]:
        cells = []
        for method in methods:
            if hospital == "mean":
                v = mean_over_hospitals(results, method, task, metric)
            else:
                values = per_seed(results, method, hospital, task, metric)
                v = float(np.mean(values)) if values else math.nan
            cells.append(f"{v:>12.3f}" if math.isfinite(v) else f"{'-':>12}")
        print(f"{hospital:<12}" + "".join(cells))
    compared = [m for m in COMPARED if m in methods]
    print(f"paired difference to local-only, mean [95% interval] over seeds ({metric}):")
    print(f"{'hospital':<12}" + "".join(f"{m + ' - local':>28}" for m in compared))
    for hospital in [*who, "mean"]:
        group = who if hospital == "mean" else [hospital]
        cells = [
            f"{Estimate.of(paired(results, m, 'local', group, task, metric)).signed():>28}"
            for m in compared
        ]
        print(f"{hospital:<12}" + "".join(cells))
    if kind is not TaskKind.REGRESSION:
        print("beside it, mean over hospitals (accuracy at 0.5; ECE: lower is better):")
        for extra, label in EXTRA_METRICS.items():
            cells = []
            for method in methods:
                v = mean_over_hospitals(results, method, task, extra)
                cells.append(f"{v:>12.3f}" if math.isfinite(v) else f"{'-':>12}")
            print(f"{label:<12}" + "".join(cells))


def headline(results: Results) -> str:
    task, metric = HEADLINE
    gains = [
        Estimate.of(paired(results, "personal_dp", "local", [h], task, metric)).mean
        for h in holders(results, task, metric)
    ]
    return (
        f"heart_disease: fmtl_dp_auc={mean_over_hospitals(results, 'fmtl_dp', task, metric):.3f} "
        f"local_auc={mean_over_hospitals(results, 'local', task, metric):.3f} "
        f"pooled_auc={mean_over_hospitals(results, 'pooled', task, metric):.3f} "
        f"personal_dp_auc={mean_over_hospitals(results, 'personal_dp', task, metric):.3f} "
        f"worst_gain={min(gains):+.3f}"
    )


def configured(
    spec: FederationSpec, args: argparse.Namespace
) -> tuple[FederationSpec, PersonalSettings]:
    """The spec and personalisation with the command line's overrides."""
    training, aggregation = spec.training, spec.aggregation
    if args.balancing is not None:
        training = training.model_copy(update={"task_balancing": TaskBalancing(args.balancing)})
    if args.strategy is not None:
        aggregation = aggregation.model_copy(update={"strategy": args.strategy})
    if args.server_lr is not None:
        aggregation = aggregation.model_copy(update={"server_lr": args.server_lr})
    spec = spec.model_copy(update={"training": training, "aggregation": aggregation})
    personal = PERSONAL
    if args.private_weight is not None:
        personal = replace(personal, private_weight=args.private_weight)
    if args.fine_tune is not None:
        personal = replace(personal, fine_tune=FineTune(args.fine_tune))
    return spec, personal


def run_seed(
    spec: FederationSpec,
    mappings: Mapping[str, DataMapping],
    rounds: int,
    epsilon: float,
    seed: int,
    personal: PersonalSettings,
    local_lr: float | None,
) -> tuple[dict[str, HospitalMetrics], dict[str, float]]:
    """Every method's held-out metrics for one seed (all on the same splits), and the
    epsilon each hospital spent in the DP federation."""
    data = datasets(seeded(spec, seed, dp=False), mappings, seed)
    out: dict[str, HospitalMetrics] = {
        "local": run_local(spec, data, rounds, seed, learning_rate=local_lr),
        "local_dp": run_local(spec, data, rounds, seed, epsilon=epsilon, learning_rate=local_lr),
        "pooled": run_pooled(spec, data, rounds, seed),
        "pooled_dp": run_pooled(spec, data, rounds, seed, epsilon=epsilon),
    }
    plain = run_federated(spec, None, rounds, None, seed, personal=personal, data=data)
    private = run_federated(spec, None, rounds, epsilon, seed, personal=personal, data=data)
    out.update(
        fmtl=plain.metrics,
        personal=plain.personal,
        fmtl_dp=private.metrics,
        personal_dp=private.personal,
    )
    return out, private.epsilon


SeedRun = tuple[dict[str, HospitalMetrics], dict[str, float]]


def _run_seed_in_worker(
    spec: FederationSpec,
    mappings: Mapping[str, DataMapping],
    rounds: int,
    epsilon: float,
    seed: int,
    personal: PersonalSettings,
    local_lr: float | None,
) -> SeedRun:
    torch.set_num_threads(1)
    quiet_accountant_warnings()
    return run_seed(spec, mappings, rounds, epsilon, seed, personal, local_lr)


def seed_runs(
    spec: FederationSpec,
    mappings: Mapping[str, DataMapping],
    rounds: int,
    epsilon: float,
    seeds: Sequence[int],
    personal: PersonalSettings,
    jobs: int,
) -> Iterator[tuple[int, SeedRun]]:
    """`run_seed` for every seed, in seed order; with `jobs` > 1 in that many worker
    processes. A seed's figures depend on the seed alone (its split, initial weights and
    benchmark-only DP randomness), not on the process or the order it runs in."""
    if jobs <= 1 or len(seeds) <= 1:
        for seed in seeds:
            yield seed, run_seed(spec, mappings, rounds, epsilon, seed, personal, LOCAL_LR)
        return
    with ProcessPoolExecutor(max_workers=min(jobs, len(seeds))) as pool:
        futures = [
            pool.submit(
                _run_seed_in_worker, spec, mappings, rounds, epsilon, seed, personal, LOCAL_LR
            )
            for seed in seeds
        ]
        for seed, future in zip(seeds, futures, strict=True):
            yield seed, future.result()


def quiet_accountant_warnings() -> None:
    """Opacus' RDP analysis warns when the smallest order gives the bound (a small dataset
    with a high sampling rate): the bound is then loose, never too small. Hundreds of those
    lines would bury the figures."""
    warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")


def _private(personal: PersonalSettings) -> str:
    if not personal.private_model:
        return "no"
    lr = personal.private_learning_rate
    return f"weight {personal.private_weight:g}" + (f", lr {lr:g}" if lr is not None else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 to 19")
    parser.add_argument("--rounds", type=int, default=None, help=f"default: {DEFAULT_ROUNDS}")
    parser.add_argument("--epsilon", type=float, default=5.0, help="DP budget per hospital")
    parser.add_argument("--quick", action="store_true", help="seeds 0 1, fewer rounds")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="seeds run in this many processes at once (default: one per core)",
    )
    parser.add_argument(
        "--tasks", nargs="+", default=None, help="federate these tasks only (e.g. disease)"
    )
    parser.add_argument("--balancing", choices=[b.value for b in TaskBalancing], default=None)
    parser.add_argument("--strategy", default=None, help="server optimizer (spec: aggregation)")
    parser.add_argument("--server-lr", type=float, default=None)
    parser.add_argument("--private-weight", type=float, default=None)
    parser.add_argument("--fine-tune", choices=[f.value for f in FineTune], default=None)
    parser.add_argument(
        "--select",
        action="store_true",
        help="choose the settings on inner validation splits (benchmarks/heart_disease_select.py)",
    )
    parser.add_argument(
        "--service",
        action="store_true",
        help="also run the same settings and seeds through the service (coordinator and "
        "agent processes) and print both side by side (benchmarks/heart_disease_service.py)",
    )
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    print(" ".join(["command: python benchmarks/heart_disease.py", *given]).rstrip())
    if args.service:
        from benchmarks.heart_disease_service import main_service

        raise SystemExit(main_service(args.seeds, args.rounds, args.epsilon, quick=args.quick))
    if args.select:
        from benchmarks.heart_disease_select import main_select

        quiet_accountant_warnings()
        raise SystemExit(main_select(args.seeds, args.rounds, args.epsilon))
    quiet_accountant_warnings()
    seeds = args.seeds or ([0, 1] if args.quick else list(DEFAULT_SEEDS))
    rounds = args.rounds or (DEFAULT_ROUNDS // 2 if args.quick else DEFAULT_ROUNDS)
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    spec, mappings = load_example()
    spec, personal = configured(spec, args)
    if args.tasks:
        spec, mappings = restrict_tasks(spec, mappings, args.tasks)
    t, a = spec.training, spec.aggregation
    print(
        f"heart disease: hospitals {', '.join(mappings)}, tasks {', '.join(spec.task_names)}; "
        f"seeds {seeds[0]}-{seeds[-1]} ({len(seeds)}), {rounds} rounds x "
        f"{t.local_epochs:g} local epochs, batch {t.batch_size}, lr {t.learning_rate:g} "
        f"({t.optimizer}; local-only lr {LOCAL_LR or t.learning_rate:g}), task balancing "
        f"{t.task_balancing.value}, server {a.strategy.value} (lr {a.server_lr:g}); DP epsilon "
        f"{args.epsilon:g} per hospital at delta {spec.dp.delta:g} ({spec.dp.accountant.value}), "
        f"clip {spec.dp.max_grad_norm:g}; personalised: fine-tune {personal.fine_tune.value}, "
        f"private model {_private(personal)}"
    )
    results: Results = {m: [] for m in METHODS}
    spent: list[float] = []
    started = time.perf_counter()
    for seed, (runs, epsilon) in seed_runs(
        spec, mappings, rounds, args.epsilon, seeds, personal, args.jobs
    ):
        for method, metrics in runs.items():
            results[method].append(metrics)
        spent.extend(epsilon.values())
        task, metric = HEADLINE
        if task in spec.task_names:
            summary = " ".join(
                f"{m}={mean_over_hospitals({m: results[m][-1:]}, m, task, metric):.3f}"
                for m in METHODS
            )
            print(f"seed {seed}: disease auc {summary} ({time.perf_counter() - started:.0f} s)")
    for task in spec.task_names:
        print_task(results, spec, task, METHODS)
    print(
        f"\nDP: largest epsilon spent by a hospital {max(spent):.3f} (budget {args.epsilon:g}, "
        f"delta {spec.dp.delta:g}); {time.perf_counter() - started:.0f} s in all"
    )
    if "severity" in spec.task_names:
        severity = mean_over_hospitals(results, "personal_dp", "severity", "auc")
        print(
            f"severity auc of the personalised DP model, mean over the hospitals holding it: "
            f"{severity:.3f}"
        )
    print("\nwhat each figure's model guarantees (epsilon per hospital, at delta):")
    for method in METHODS:
        print(f"  {method:<12} {GUARANTEES[method]}")
    if HEADLINE[0] in spec.task_names:
        print(headline(results))


if __name__ == "__main__":
    main()
