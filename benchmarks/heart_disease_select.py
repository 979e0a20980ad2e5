"""`benchmarks/heart_disease.py --select`: choose the benchmark's settings on validation data.

    python benchmarks/heart_disease.py --select                 # seeds 0-7, 30 rounds
    python benchmarks/heart_disease.py --select --seeds 0 1 2   # a quicker look

Each hospital's training split (the held-out split of the reported figures is never read)
is cut again into training and an inner validation split (25%, stratified by disease:
`benchmarks.heart_disease_runs.inner_split`), and every candidate is trained on the inner
training part and scored on the inner validation part: disease AUC, mean over hospitals
and seeds. Each family is chosen on its own score, with grids of the same kind:

- the local-only baseline: its learning rate;
- the federation (scored by its global model with DP): the server optimizer, then task
  balancing, then zero-initialised heads, one at a time on top of the choices before;
- the personalisation (scored by the personalised model with DP, on the federation
  chosen above, its private model trained like the chosen local-only model): the private
  model's weight and head fine-tuning.

It prints every candidate's score and the chosen values; they are what
`examples/heart_disease/federation.json`, `PERSONAL` and `LOCAL_LR` in
`benchmarks/heart_disease.py` hold (docs/multitask.md has the figures).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from agent.data import LocalDataset
from agent.personal import FineTune, PersonalSettings
from benchmarks.heart_disease_runs import (
    HOSPITALS,
    HospitalMetrics,
    datasets,
    load_example,
    run_federated,
    run_local,
    seeded,
)
from federation.spec import FederationSpec, Strategy, TaskBalancing

SELECT_SEEDS = tuple(range(8))
SELECT_ROUNDS = 30
LOCAL_LEARNING_RATES = (0.1, 0.3, 1.0)
PRIVATE_WEIGHTS = (0.25, 0.5, 0.75)


def score(per_seed: Sequence[HospitalMetrics]) -> float:
    """Disease AUC, mean over hospitals of the mean over seeds (where defined)."""
    means = []
    for hospital in HOSPITALS:
        values = [
            m[hospital]["disease"]["auc"]
            for m in per_seed
            if "auc" in m.get(hospital, {}).get("disease", {})
        ]
        if values:
            means.append(float(np.mean(values)))
    return float(np.mean(means))


SERVERS: dict[str, dict[str, object]] = {
    "fedavg": {"strategy": Strategy.FEDAVG, "server_lr": 1.0},
    "fedavgm": {"strategy": Strategy.FEDAVGM, "server_lr": 0.5, "server_momentum": 0.5},
    "fedadam": {"strategy": Strategy.FEDADAM, "server_lr": 0.03},
}


def with_server(spec: FederationSpec, server: str) -> FederationSpec:
    return spec.model_copy(
        update={"aggregation": spec.aggregation.model_copy(update=SERVERS[server])}
    )


def with_balancing(spec: FederationSpec, balancing: TaskBalancing) -> FederationSpec:
    return spec.model_copy(
        update={"training": spec.training.model_copy(update={"task_balancing": balancing})}
    )


def with_zero_heads(spec: FederationSpec, zero: bool) -> FederationSpec:
    head = spec.model.head.model_copy(update={"zero_init": zero})
    return spec.model_copy(update={"model": spec.model.model_copy(update={"head": head})})


def _inner(spec: FederationSpec, seeds: Sequence[int]) -> dict[int, dict[str, LocalDataset]]:
    _, mappings = load_example()
    return {s: datasets(seeded(spec, s, dp=False), mappings, s, inner=True) for s in seeds}


def _choose(
    title: str, candidates: Mapping[str, Callable[[int], HospitalMetrics]], seeds: Sequence[int]
) -> str:
    print(f"\n{title}: disease auc on inner validation, mean over hospitals and seeds")
    scores = {}
    for name, run in candidates.items():
        started = time.perf_counter()
        scores[name] = score([run(seed) for seed in seeds])
        print(f"  {scores[name]:.4f}  {name}  ({time.perf_counter() - started:.0f} s)", flush=True)
    best = max(scores, key=lambda k: scores[k])
    print(f"  chosen: {best}")
    return best


def main_select(seeds: list[int] | None, rounds: int | None, epsilon: float) -> int:
    torch.set_num_threads(1)
    seeds = seeds or list(SELECT_SEEDS)
    rounds = rounds or SELECT_ROUNDS
    spec, _ = load_example()
    inner = _inner(spec, seeds)
    print(
        f"choosing on inner validation splits: seeds {seeds}, {rounds} rounds, DP epsilon "
        f"{epsilon:g} per hospital"
    )

    def local(lr: float) -> Callable[[int], HospitalMetrics]:
        return lambda s: run_local(spec, inner[s], rounds, s, learning_rate=lr)

    rates = {f"lr={lr:g}": lr for lr in LOCAL_LEARNING_RATES}
    local_lr = rates[
        _choose("local-only learning rate", {k: local(lr) for k, lr in rates.items()}, seeds)
    ]

    def federated(candidate: FederationSpec) -> Callable[[int], HospitalMetrics]:
        return lambda s: run_federated(candidate, None, rounds, epsilon, s, data=inner[s]).metrics

    # One setting at a time (a full grid costs too much here): the server optimizer, then
    # task balancing, then the heads' initialisation, each on top of the choices before.
    servers = {name: with_server(spec, name) for name in SERVERS}
    chosen = servers[
        _choose(
            "server optimizer (global model, DP)",
            {name: federated(c) for name, c in servers.items()},
            seeds,
        )
    ]
    balancings = {b.value: with_balancing(chosen, b) for b in TaskBalancing}
    chosen = balancings[
        _choose(
            "task balancing (global model, DP)",
            {name: federated(c) for name, c in balancings.items()},
            seeds,
        )
    ]
    heads = {f"zero_init={z}": with_zero_heads(chosen, z) for z in (False, True)}
    chosen = heads[
        _choose(
            "head initialisation (global model, DP)",
            {name: federated(c) for name, c in heads.items()},
            seeds,
        )
    ]

    # The private model is the hospital's own model: it trains like the local-only one.
    base = PersonalSettings(private_model=True, private_learning_rate=local_lr)
    per_seed: dict[str, list[HospitalMetrics]] = {}
    for fine_tune in (FineTune.NONE, FineTune.HEADS):
        settings = replace(base, fine_tune=fine_tune)
        for seed in seeds:
            run = run_federated(
                chosen,
                None,
                rounds,
                epsilon,
                seed,
                personal=settings,
                data=inner[seed],
                weights=PRIVATE_WEIGHTS,
            )
            for label, metrics in run.variants.items():
                per_seed.setdefault(f"fine_tune={fine_tune.value} {label}", []).append(metrics)

    def recorded(runs: list[HospitalMetrics]) -> Callable[[int], HospitalMetrics]:
        return lambda s: runs[seeds.index(s)]

    _choose(
        "personalisation (personalised model, DP)",
        {name: recorded(runs) for name, runs in per_seed.items()},
        seeds,
    )
    return 0


__all__ = ["main_select"]
