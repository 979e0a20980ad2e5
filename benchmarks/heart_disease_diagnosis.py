"""Why a federated model's accuracy lags its AUC, and why a task learns nothing: a look
inside the global model after a short DP run (the demo's: epsilon 8, 10 rounds).

    python benchmarks/heart_disease_diagnosis.py                     # the example's spec
    python benchmarks/heart_disease_diagnosis.py --zero-heads --seed 3
    python benchmarks/heart_disease_diagnosis.py --no-dp

For each hospital, on its held-out split: disease prevalence against the mean predicted
probability (a global bias for four prevalences), accuracy at 0.5, balanced accuracy and
AUC; for severity, how much the predicted class probabilities vary between patients
(their standard deviation: near 0, the head ranks patients by its random initial
weights), the predicted class counts, and how far the severity head moved from its
initial weights. docs/multitask.md ("Why severity learned nothing") quotes it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run by path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from agent.evaluation import auc, balanced_accuracy
from benchmarks.heart_disease_runs import datasets as load_datasets
from benchmarks.heart_disease_runs import load_example, run_federated, seeded, trainers
from federation.layout import ParameterLayout
from federation.model import build_model, model_vector


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--no-dp", action="store_true")
    parser.add_argument("--zero-heads", action="store_true", help="model.head.zero_init")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
    torch.set_num_threads(1)
    spec, mappings = load_example()
    if args.zero_heads:
        head = spec.model.head.model_copy(update={"zero_init": True})
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"head": head})})
    epsilon = None if args.no_dp else args.epsilon
    run = run_federated(spec, mappings, args.rounds, epsilon, args.seed)
    assert run.vector is not None
    spec = seeded(spec, args.seed, dp=epsilon is not None)
    layout = ParameterLayout.model(spec)
    segment = layout.segment("head.severity")
    initial = model_vector(build_model(spec), layout)[segment.offset : segment.end]
    final = run.vector[segment.offset : segment.end]
    data = load_datasets(spec, mappings, args.seed)
    print(
        f"global model after {args.rounds} rounds, "
        f"{'no DP' if epsilon is None else f'DP epsilon {epsilon:g}'}, seed {args.seed}; "
        f"severity head: |initial| {np.linalg.norm(initial):.3f}, moved by "
        f"{np.linalg.norm(final - initial):.3f}"
    )
    for name, trainer in trainers(spec, data, args.seed).items():
        model = trainer.model(run.vector)
        model.eval()
        validation = trainer.dataset.validation
        with torch.no_grad():
            out = model(validation.features)
        mask = validation.masks["disease"]
        y = validation.labels["disease"][mask].numpy() > 0.5
        logit = out["disease"][mask, 0].double().numpy()
        p = 1 / (1 + np.exp(-logit))
        line = (
            f"{name:<12} disease: prevalence {y.mean():.2f}, mean p {p.mean():.2f}, "
            f"accuracy {np.mean((logit > 0) == y):.2f}, balanced "
            f"{balanced_accuracy((logit > 0).astype(np.int64), y.astype(np.int64)):.2f}, "
            f"auc {auc(logit, y) or float('nan'):.3f}"
        )
        if "severity" in validation.masks:
            mask = validation.masks["severity"]
            classes = validation.labels["severity"][mask].numpy()
            probs = torch.softmax(out["severity"][mask].double(), 1).numpy()
            line += (
                f" | severity: p spread {probs.std(axis=0).max():.3f}, predicted "
                f"{np.bincount(probs.argmax(1), minlength=5).tolist()} for true "
                f"{np.bincount(classes, minlength=5).tolist()}"
            )
        print(line)


if __name__ == "__main__":
    main()
