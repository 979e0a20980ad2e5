"""Images through the service: the digits federation (examples/images) with DP against
each institution training alone.

Run from the repository root:

    python benchmarks/imaging.py                 # 5 rounds, epsilon 5, seed 0
    python benchmarks/imaging.py --quick         # 2 rounds
    python benchmarks/imaging.py --rounds 5 --epsilon 3 --seed 1
    python benchmarks/imaging.py --device cuda   # agents and local-only training on the GPU

What it runs (`fmtl/demo/digits.py` writes the data from scikit-learn's digits):

- **fmtl, DP, through the service:** `fmtl demo`'s machinery with `--example images`: a
  coordinator process, five `fmtl agent run` processes, signed HTTP, secure aggregation of
  each round's 1.4M-coordinate updates, each institution's DP-SGD (`bk` mode) within its
  own budget epsilon (default 5) spread over the rounds. The final global model's digit
  accuracy on the balanced test set that no institution holds is `fmtl_dp_acc`;
- **local only:** each institution that labels digits trains the same model alone, without
  DP (it shares nothing), for as many epochs as the federated run's rounds; the mean of their
  digit accuracies on the same test set is `local_acc`.

For context it also prints a reference that is not a method of fmtl: logistic regression
on the raw pixels without DP, pooled and per institution (the label skew is what limits a
local model; how far a DP federation of a million-parameter encoder is from both).

`round_s` is the mean wall time of a completed secure round (the coordinator's start and
finish times: selection, key exchange, training, masked upload, unmasking, aggregation).
The institutions' label distributions are skewed (each holds mostly two digits), which is
what federation is for: alone, an institution sees almost none of eight of the digits.

The last line is the headline:

    imaging: params=<encoder parameters> fmtl_dp_acc=<a> local_acc=<b> round_s=<r>
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

if __package__ in (None, ""):  # run by path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from numpy.typing import NDArray
from rich.console import Console

from agent.data import LocalDataset
from agent.evaluation import evaluate_split
from agent.image_data import load_image_dataset
from agent.image_mapping import ImageMapping
from agent.sources import read_mapping_file
from agent.training import LocalTrainer, resolve_device
from federation.layout import ParameterLayout
from federation.model import build_model, load_model_vector, model_vector
from federation.spec import FederationSpec
from fmtl.admin.client import AdminError
from fmtl.demo.digits import INSTITUTIONS
from fmtl.demo.processes import DemoError
from fmtl.demo.run import FINAL_MODEL_FILE, DemoOptions, DemoRun, agent_seed

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "images"
TASK = "digit"
DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 2


def load_spec(seed: int, rounds: int) -> FederationSpec:
    raw = json.loads((EXAMPLE / "federation.json").read_text())
    raw["model"]["init_seed"] = seed
    raw["dp"]["planned_rounds"] = rounds
    return FederationSpec.model_validate(raw)


def mappings(data_root: Path, seed: int) -> dict[str, ImageMapping]:
    """The example's mappings, their manifests under `data_root` (as the demo writes them)."""
    out = {}
    for name in INSTITUTIONS:
        mapping = read_mapping_file(EXAMPLE / f"mapping_{name}.toml")
        assert isinstance(mapping, ImageMapping)
        out[name] = mapping.model_copy(
            update={"manifest": data_root / "data" / name / "manifest.csv", "split_seed": seed}
        )
    return out


def test_set(data_root: Path, spec: FederationSpec) -> LocalDataset:
    """The balanced test set (written as .npy arrays of the raw 0..16 values)."""
    mapping = ImageMapping(
        kind="images",
        manifest=data_root / "data" / "test" / "manifest.csv",
        image_column="file",
        value_range=(0.0, 16.0),
        mean=(0.5,),
        std=(0.5,),
        labels={TASK: TASK},
        validation_fraction=0.0,
    )
    return load_image_dataset(mapping, spec)


def accuracy(spec: FederationSpec, vector: NDArray[np.float64], test: LocalDataset) -> float:
    model = build_model(spec)
    load_model_vector(model, ParameterLayout.model(spec), vector)
    metrics = evaluate_split(spec, model, test.train, (TASK,), {})
    return float(metrics[TASK]["accuracy"])


def local_only(
    spec: FederationSpec, data_root: Path, rounds: int, seed: int, device: str
) -> dict[str, float]:
    """Each institution holding digit labels alone, without DP: its test accuracy."""
    spec = spec.model_copy(update={"dp": spec.dp.model_copy(update={"enabled": False})})
    test = test_set(data_root, spec)
    start = model_vector(build_model(spec), ParameterLayout.model(spec))
    results = {}
    for index, (name, mapping) in enumerate(mappings(data_root, seed).items()):
        if TASK not in mapping.labels:
            continue
        dataset = load_image_dataset(mapping, spec)
        trainer = LocalTrainer(
            spec, dataset, device=device, reproducible_dp_seed=agent_seed(seed, index)
        )
        vector = start
        for _ in range(rounds):
            vector = trainer.train(vector, trainer.plan()).local_vector
        results[name] = accuracy(spec, vector, test)
    return results


def linear_references(seed: int) -> tuple[float, float]:
    """Context, not a method of fmtl: multinomial logistic regression on the 64 raw pixels
    (scikit-learn, no DP), trained on all institutions' images pooled, and on each
    institution's alone (mean), scored on the same balanced test set."""
    from sklearn.linear_model import LogisticRegression

    from fmtl.demo.digits import assign, load_digits

    images, labels = load_digits()
    parts = assign(labels, seed=0)  # the split the example writes
    x = images.reshape(len(images), -1) / 16.0
    test = parts["test"]

    def score(train: NDArray[np.int64]) -> float:
        model = LogisticRegression(max_iter=2000, random_state=seed)
        return float(model.fit(x[train], labels[train]).score(x[test], labels[test]))

    pooled = score(np.concatenate([parts[name] for name in INSTITUTIONS]))
    local = statistics.fmean(score(parts[name]) for name in INSTITUTIONS)
    return pooled, local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds")
    parser.add_argument("--epsilon", type=float, default=5.0, help="each institution's budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cpu", help="where agents and local-only runs train: cpu, cuda, auto"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    device = str(resolve_device(args.device))
    console = Console()
    spec = load_spec(args.seed, rounds)
    params = spec.model.encoder.parameter_count()
    console.print(
        f"digits federation: encoder {params:,} parameters, {rounds} rounds, epsilon "
        f"{args.epsilon:g} per institution, seed {args.seed}; torch {torch.__version__}"
    )
    with TemporaryDirectory(prefix="fmtl-imaging-") as scratch:
        run_dir = Path(scratch) / "service"
        started = time.perf_counter()
        options = DemoOptions(
            rounds=rounds,
            epsilon=args.epsilon,
            seed=args.seed,
            out=run_dir,
            example="images",
            device=args.device,
        )
        try:
            outcome = DemoRun(options, console).run()
        except (DemoError, AdminError) as exc:
            print(f"error: the service run failed: {exc}", file=sys.stderr)
            return 1
        service_s = time.perf_counter() - started
        data_root = run_dir / "example-data"
        raw = (run_dir / FINAL_MODEL_FILE).read_bytes()
        final = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        fmtl_acc = accuracy(spec, final, test_set(data_root, spec))
        round_times = [
            (r.finished_at - r.started_at).total_seconds()
            for r in outcome.record.rounds
            if r.stage == "completed" and r.finished_at and r.started_at
        ]
        spent = [entry.recomputed_epsilon for entry in outcome.record.ledger]
        started = time.perf_counter()
        local = local_only(spec, data_root, rounds, args.seed, device)
        local_s = time.perf_counter() - started
    local_acc = statistics.fmean(local.values())
    round_s = statistics.fmean(round_times) if round_times else float("nan")
    console.print(
        f"service: {len(round_times)} of {rounds} rounds completed in {service_s:.0f} s; "
        f"largest epsilon spent (recomputed by the coordinator) "
        f"{max(spent, default=float('nan')):.3f}"
    )
    console.print(
        "local only (" + ", ".join(f"{k} {v:.3f}" for k, v in local.items()) + f"; {local_s:.0f} s)"
    )
    pooled_linear, local_linear = linear_references(args.seed)
    console.print(
        f"reference, no DP, not fmtl: logistic regression on the pixels, pooled "
        f"{pooled_linear:.3f}, each institution alone {local_linear:.3f} (mean)"
    )
    print(
        f"imaging: params={params} fmtl_dp_acc={fmtl_acc:.3f} local_acc={local_acc:.3f} "
        f"round_s={round_s:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
