"""`benchmarks/heart_disease.py --service`: the same federation through the real service.

Run from the repository root:

    python benchmarks/heart_disease.py --service                 # seed 0, 10 rounds
    python benchmarks/heart_disease.py --service --quick         # seed 0, 4 rounds
    python benchmarks/heart_disease.py --service --rounds 5 --seeds 0 1

The in-process benchmark (`benchmarks.heart_disease.run_inprocess`) trains the heart-disease
federation with the federation's own arithmetic (`federation.aggregation`), DP at the given
budget, and no transport. This module runs the *same* spec, budget and seeds through the
service — `fmtl demo`'s machinery: a coordinator process, four `fmtl agent run` processes,
signed HTTP, secure aggregation, each hospital's own DP accountant and budget — then
evaluates the service's final model exactly as the in-process run evaluates its own
(`agent.training.LocalTrainer.evaluate` on each hospital's held-out split of that seed), and
prints both side by side. Secure aggregation adds security, not error: with the same seeds
both runs see the same splits, batches and (seeded, for this comparison only) DP noise, so
what differs is only what the service adds — the fixed-point encoding of each update for
secure aggregation and the float32 storage of model versions — and the table shows each
metric's difference.

A second table compares the **federation-wide** figures: those the coordinator recorded for
the last round, computed from the secure sum of the four hospitals' validation statistics
(`federation.metrics`; no hospital's own metric leaves it), against the same metrics of the
in-process model the last round started from, computed from the hospitals' statistics
summed in plain (`benchmarks.heart_disease.run_federated`). Counts are exact on both sides,
so what differs is the model (fixed point, float32) and the fixed-point sums.

Seeds follow the in-process convention: the seed sets the initial model, every hospital's
train/validation split, and hospital i's training seed (seed * 100 + i).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from rich.console import Console
from rich.table import Table

from fmtl.demo.record import NOT_METRICS, DemoRecord
from fmtl.demo.run import FINAL_MODEL_FILE, DemoOptions, DemoRun

#: (task, metric) -> institution (or "average") -> value.
Taskwise = dict[tuple[str, str], dict[str, float]]
AVERAGE = "average"
#: Fewer rounds than the in-process default (30): each service round costs seconds.
SERVICE_DEFAULT_ROUNDS = 10
SERVICE_QUICK_ROUNDS = 4


@dataclass(frozen=True)
class ServiceRun:
    record: DemoRecord
    run_dir: Path
    #: Per hospital: task -> metric -> value of the final model on its held-out split.
    metrics: dict[str, dict[str, dict[str, float]]]

    @property
    def wall_s(self) -> float:
        return self.record.wall_s or math.nan

    def federation_wide(self, round_number: int) -> dict[str, dict[str, float]]:
        """task -> metric -> value the coordinator recorded federation-wide for a round."""
        out: dict[str, dict[str, float]] = {}
        for item in self.record.results:
            if item.round == round_number and item.institution is None:
                out.setdefault(item.task, {})[item.metric] = item.value
        return out


def evaluate_final_model(run_dir: Path, seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """The service's last model version on each hospital's held-out split of `seed`."""
    from agent.training import LocalTrainer
    from benchmarks.heart_disease_runs import datasets as load_datasets
    from benchmarks.heart_disease_runs import load_example

    spec, mappings = load_example()
    raw = (run_dir / FINAL_MODEL_FILE).read_bytes()
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    datasets = load_datasets(spec, mappings, seed)
    return {
        name: LocalTrainer(spec, data, device="cpu").evaluate(vector)
        for i, (name, data) in enumerate(datasets.items())
    }


def run_service(
    *,
    rounds: int,
    epsilon: float,
    seed: int,
    out: Path,
    console: Console | None = None,
) -> ServiceRun:
    """Run `rounds` rounds through the service and evaluate its final model."""
    options = DemoOptions(rounds=rounds, epsilon=epsilon, seed=seed, out=out)
    outcome = DemoRun(options, console or Console()).run()
    return ServiceRun(outcome.record, outcome.run_dir, evaluate_final_model(outcome.run_dir, seed))


def with_average(per_hospital: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Taskwise:
    """(task, metric) -> hospital -> value, plus the mean over hospitals (the in-process
    benchmark's convention)."""
    out: Taskwise = {}
    for hospital, tasks in per_hospital.items():
        for task, metrics in tasks.items():
            for metric, value in metrics.items():
                if metric not in NOT_METRICS:
                    out.setdefault((task, metric), {})[hospital] = value
    for cell in out.values():
        values = [v for v in cell.values() if math.isfinite(v)]
        if values:
            cell[AVERAGE] = sum(values) / len(values)
    return out


def comparison_table(
    inprocess: Taskwise, service: Taskwise, *, title: str, hospitals: list[str]
) -> Table:
    table = Table(title=title)
    for column in ("task", "metric", "who", "in-process", "service", "difference"):
        table.add_column(column, justify="left" if column in ("task", "metric", "who") else "right")
    for key in sorted(set(inprocess) | set(service)):
        task, metric = key
        left: Mapping[str, float] = inprocess.get(key, {})
        right: Mapping[str, float] = service.get(key, {})
        for who in [*hospitals, AVERAGE]:
            if who not in left and who not in right:
                continue
            a, b = left.get(who), right.get(who)
            diff = "" if a is None or b is None else f"{b - a:+.1e}"
            table.add_row(
                task,
                metric,
                f"[bold]{who}[/bold]" if who == AVERAGE else who,
                "-" if a is None else f"{a:.3f}",
                "-" if b is None else f"{b:.3f}",
                diff,
            )
    return table


def federation_wide_table(
    inprocess: Mapping[str, Mapping[str, float]],
    service: Mapping[str, Mapping[str, float]],
    *,
    title: str,
) -> tuple[Table, float]:
    """Both runs' federation-wide figures side by side, and the largest difference."""
    table = Table(title=title)
    for column in ("task", "metric", "in-process", "service (secure sums)", "difference"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    largest = 0.0
    for task in sorted(set(inprocess) | set(service)):
        left, right = inprocess.get(task, {}), service.get(task, {})
        for metric in sorted(set(left) | set(right)):
            a, b = left.get(metric), right.get(metric)
            diff = ""
            if a is not None and b is not None:
                diff = f"{b - a:+.1e}"
                largest = max(largest, abs(b - a))
            table.add_row(
                task,
                metric,
                "-" if a is None else f"{a:.4f}",
                "-" if b is None else f"{b:.4f}",
                diff,
            )
    return table, largest


def main_service(
    seeds: list[int] | None, rounds: int | None, epsilon: float, *, quick: bool = False
) -> int:
    """Both runs per seed, side by side; the last line compares disease AUC."""
    import torch

    from benchmarks.heart_disease import HEADLINE, HOSPITALS, load_example, run_federated

    console = Console()
    seeds = seeds or [0]
    rounds = rounds or (SERVICE_QUICK_ROUNDS if quick else SERVICE_DEFAULT_ROUNDS)
    torch.set_num_threads(1)
    spec, mappings = load_example()
    task, metric = HEADLINE
    pairs: list[tuple[float, float]] = []
    gaps: list[float] = []
    wide_gaps: list[float] = []
    with TemporaryDirectory(prefix="fmtl-service-") as scratch:
        for seed in seeds:
            started = time.perf_counter()
            federated = run_federated(spec, mappings, rounds, epsilon, seed)
            inprocess = federated.metrics
            inprocess_s = time.perf_counter() - started
            service = run_service(
                rounds=rounds, epsilon=epsilon, seed=seed, out=Path(scratch) / f"seed-{seed}",
                console=console,
            )  # fmt: skip
            left = with_average(inprocess)
            right = with_average(service.metrics)
            console.print(
                comparison_table(
                    left,
                    right,
                    title=f"seed {seed}: {rounds} rounds, ε = {epsilon:g} per hospital — "
                    f"in-process ({inprocess_s:.0f} s) vs service ({service.wall_s:.0f} s)",
                    hospitals=list(HOSPITALS),
                )
            )
            wide, largest = federation_wide_table(
                federated.federation_wide,
                service.federation_wide(rounds),
                title=f"seed {seed}: federation-wide metrics of round {rounds}'s global model "
                "(regression errors in scaled label units)",
            )
            console.print(wide)
            wide_gaps.append(largest)
            pairs.append((left[(task, metric)][AVERAGE], right[(task, metric)][AVERAGE]))
            gaps.extend(
                abs(right[key][who] - value)
                for key, cell in left.items()
                for who, value in cell.items()
                if key in right and who in right[key]
            )
    a = statistics.fmean(p[0] for p in pairs)
    b = statistics.fmean(p[1] for p in pairs)
    print(
        f"heart_disease --service: {task}_{metric} inprocess={a:.3f} service={b:.3f} "
        f"difference={b - a:+.3f} largest_metric_difference={max(gaps):.1e} "
        f"largest_federation_wide_difference={max(wide_gaps):.1e} "
        f"(seeds {seeds}, {rounds} rounds, epsilon {epsilon:g})"
    )
    return 0
