"""DP-SGD cost: per-step time of plain PyTorch against each Opacus grad-sample mode.

Run from the repository root:

    python benchmarks/dp_overhead.py              # MLPs (about two minutes on 2 CPU cores)
    python benchmarks/dp_overhead.py --model cnn  # the 1.44M-parameter image model (~10 min)
    python benchmarks/dp_overhead.py --quick      # fewer repetitions
    python benchmarks/dp_overhead.py --device cuda

The models, each timed in the same run and on the same fixed batch (Poisson sampling is
left out: it costs the same with or without DP):

- `--model mlp` (default): `heart`, the heart-disease federation's multi-task model
  (examples/heart_disease), batch 64, the multi-task loss over its four tasks; and
  `mlp1m`, an MLP 512-1024-512-10 (1.05M parameters), batch 256, cross-entropy;
- `--model cnn`: `cnn1m`, the digits federation's multi-task model (examples/images: a
  residual conv encoder with GroupNorm, 1.44M parameters, on 1 x 8 x 8 images, and three
  heads), batch 128, the multi-task loss over its three tasks.

A step is forward, backward and the optimizer update. Plain PyTorch uses the mean loss;
a DP step is `privacy.dp.PrivateTraining.step` (per-sample gradients or norms, clipping
to C = 1, Gaussian noise sigma = 1, the update) in each of Opacus' modes: `hooks`,
`functorch`, `ew` (ExpandedWeights), `ghost` (ghost clipping); and in `bk`, book-keeping
clipping (`privacy.dp.bookkeeping`: ghost clipping's norms from one backward pass).
Every DP mode draws its noise from `privacy.dp.noise` (keystream, float64 Box-Muller, the
noisy sum snapped to its lattice). Timings are interleaved (plain, then each mode,
repeated) so that all modes see the same machine load; a mode's time is the median over
repetitions, and its ratio is that over plain's median.

Before the headline, the noise sampler's own cost: adding noise to a million coordinates
(`GaussianNoise.add_to_`: keystream, Box-Muller, snapping) against drawing the raw
keystream it consumes (`Keystream.words`, 12 bytes per coordinate), interleaved likewise.

A mode that cannot handle a model is reported as such. The last line is the headline: the
best mode's ratio for the last model (`mlp1m`, or `cnn1m` with `--model cnn`).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run by path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import opacus
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from agent.loss import multitask_loss, per_sample_loss
from federation.model import build_model
from federation.spec import FederationSpec, TaskKind
from privacy.dp import GRAD_SAMPLE_MODES, PrivateTraining, UnsupportedMode
from privacy.dp.keystream import Keystream
from privacy.dp.noise import WORDS_PER_PAIR, GaussianNoise

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HEART_SPEC = EXAMPLES / "heart_disease/federation.json"
IMAGES_SPEC = EXAMPLES / "images/federation.json"


@dataclass
class Workload:
    name: str
    batch: int
    make_model: Callable[[], nn.Module]
    inputs: torch.Tensor
    #: Mean loss for the plain step.
    mean_loss: Callable[[object], torch.Tensor]
    #: One loss per sample for the DP step.
    sample_loss: Callable[[object], torch.Tensor]

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.make_model().parameters())


def heart_workload(device: torch.device) -> Workload:
    return multitask_workload("heart", HEART_SPEC, 64, device)


def cnn_workload(device: torch.device) -> Workload:
    return multitask_workload("cnn1m", IMAGES_SPEC, 128, device)


def multitask_workload(name: str, spec_file: Path, batch: int, device: torch.device) -> Workload:
    """A federation's multi-task model on random inputs of its encoder's shape."""
    spec = FederationSpec.model_validate_json(spec_file.read_text())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *spec.model.encoder.sample_shape, generator=gen)
    labels: dict[str, torch.Tensor] = {}
    for task in spec.tasks:
        if task.kind is TaskKind.MULTICLASS:
            assert task.n_classes is not None
            labels[task.name] = torch.randint(0, task.n_classes, (batch,), generator=gen)
        elif task.kind is TaskKind.BINARY:
            labels[task.name] = torch.randint(0, 2, (batch,), generator=gen).float()
        else:
            labels[task.name] = torch.randn(batch, generator=gen)
    labels = {t: y.to(device) for t, y in labels.items()}
    masks = {t: torch.rand(batch, generator=gen).to(device) < 0.8 for t in labels}
    normalisers = dict.fromkeys(labels, 1.25)
    return Workload(
        name,
        batch,
        lambda: build_model(spec),
        x.to(device),
        lambda out: multitask_loss(spec, out, labels, masks)[0],  # type: ignore[arg-type]
        lambda out: per_sample_loss(spec, out, labels, masks, normalisers),  # type: ignore[arg-type]
    )


def mlp_workload(device: torch.device) -> Workload:
    batch = 256
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 512, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)

    def make() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return nn.Sequential(
                nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10)
            )

    return Workload(
        "mlp1m",
        batch,
        make,
        x,
        lambda out: F.cross_entropy(out, y),  # type: ignore[arg-type]
        lambda out: F.cross_entropy(out, y, reduction="none"),  # type: ignore[arg-type]
    )


def plain_step(work: Workload, device: torch.device) -> Callable[[], None]:
    model = work.make_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        work.mean_loss(model(work.inputs)).backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return step


def private_step(work: Workload, device: torch.device, mode: str) -> Callable[[], None] | None:
    """A DP step in `mode`, or None where the mode cannot handle the model."""
    model = work.make_model().to(device)
    try:
        engine = private_engine(model, work, mode)
        engine.step(work.inputs, work.sample_loss)
    except (UnsupportedMode, NotImplementedError, RuntimeError) as exc:
        print(f"  ({work.name}: mode {mode} fails: {str(exc).splitlines()[0][:120]})")
        return None

    def step() -> None:
        engine.step(work.inputs, work.sample_loss)

    return step


def private_engine(model: nn.Module, work: Workload, mode: str) -> PrivateTraining:
    return PrivateTraining(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=float(work.batch),
        mode=mode,
        noise=GaussianNoise.predictable_from_seed(0),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(work: Workload, device: torch.device, repeats: int, steps: int) -> dict[str, float]:
    """Median seconds per step of each mode, timings interleaved across modes."""
    runners = {"plain": plain_step(work, device)}
    for mode in GRAD_SAMPLE_MODES:
        runner = private_step(work, device, mode)
        if runner is not None:
            runners[mode] = runner
    for run in runners.values():  # warm-up: allocations, kernels, hooks
        for _ in range(2):
            run()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                run()
            sync(device)
            samples[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(times) for name, times in samples.items()}


def sampler_cost(device: torch.device, repeats: int) -> tuple[float, float]:
    """Median seconds to noise a million coordinates, and to draw the keystream alone."""
    n = 1_000_000
    noise = GaussianNoise.predictable_from_seed(1)
    keystream = Keystream(bytes(32))
    target = torch.zeros(n, device=device)
    words = WORDS_PER_PAIR * (n // 2)
    runs = {
        "sampler": lambda: noise.add_to_([target], 1.0),
        "keystream": lambda: keystream.words(words, 0, device),
    }
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(max(5, repeats)):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return statistics.median(samples["sampler"]), statistics.median(samples["keystream"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--model", choices=("mlp", "cnn"), default="mlp", help="MLPs (default) or the CNN"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    # A CNN step costs about a second on 2 CPU cores and the per-sample modes several:
    # fewer steps per repetition, the same interleaving.
    cnn = args.model == "cnn"
    repeats = args.repeats or (3 if args.quick else 5 if cnn else 7)
    steps = 1 if cnn else 3 if args.quick else 5
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"torch {torch.__version__}, opacus {opacus.__version__}, device {device} "
        f"({hardware or platform.machine()}), threads {torch.get_num_threads()}; "
        f"{repeats} interleaved repetitions x {steps} steps, medians"
    )
    headline: tuple[float, str] | None = None
    workloads = (
        (cnn_workload(device),)
        if args.model == "cnn"
        else (heart_workload(device), mlp_workload(device))
    )
    for work in workloads:
        times = measure(work, device, repeats, steps)
        plain = times["plain"]
        print(f"\n{work.name}: {work.parameters:,} parameters, batch {work.batch}")
        print(f"  {'mode':<10} {'ms/step':>9} {'x plain':>8}")
        for name, seconds in times.items():
            print(f"  {name:<10} {seconds * 1e3:9.3f} {seconds / plain:8.2f}")
        headline = min((t / plain, name) for name, t in times.items() if name != "plain")
    assert headline is not None
    sampler, raw = sampler_cost(device, repeats)
    print(
        f"\nnoise_sampler: {sampler * 1e3:.2f} ms per million draws (keystream alone "
        f"{raw * 1e3:.2f} ms, {sampler / raw:.1f}x)"
    )
    print(f"dp_overhead: best_ratio={headline[0]:.2f} mode={headline[1]}")


if __name__ == "__main__":
    main()
