"""Local multi-task training: masked losses, budget refusal, layouts, evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from agent.data import LocalDataset, SplitTensors, load_dataset
from agent.errors import ConfigError
from agent.loss import multitask_loss, per_sample_loss
from agent.mapping import DataMapping
from agent.training import LocalTrainer
from federation.errors import LayoutMismatch
from federation.layout import ParameterLayout
from federation.model import build_model, model_vector
from federation.spec import FederationSpec
from privacy.dp import Accountant, BudgetExceeded, InvalidBudget
from tests.unit.agent_training.conftest import small_spec


def batch(spec: FederationSpec) -> tuple[torch.Tensor, dict, dict]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, spec.model.encoder.input_dim, generator=gen)
    labels = {
        "flag": torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0]),
        "grade": torch.tensor([0, 1, 2, 0, 1, 2]),
        "level": torch.randn(6, generator=gen),
    }
    masks = {
        "flag": torch.tensor([True, True, False, True, True, True]),
        "grade": torch.tensor([False, False, False, True, True, False]),
        "level": torch.tensor([True, False, True, True, False, True]),
    }
    return x, labels, masks


def grads(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("dp_form", [False, True])
def test_unlabelled_sample_contributes_nothing_to_a_task(dp_form: bool) -> None:
    spec = small_spec()
    model = build_model(spec)
    x, labels, masks = batch(spec)

    def objective(lab: dict) -> torch.Tensor:
        outputs = model(x)
        if dp_form:
            return per_sample_loss(spec, outputs, lab, masks, dict.fromkeys(lab, 2.0)).sum()
        return multitask_loss(spec, outputs, lab, masks)[0]

    reference_loss = objective(labels)
    reference = grads(model, reference_loss)
    # Change every unlabelled placeholder to something absurd: loss and gradient unchanged.
    poisoned = {
        "flag": torch.where(masks["flag"], labels["flag"], torch.tensor(1e6)),
        "grade": torch.where(masks["grade"], labels["grade"], torch.tensor(99)),
        "level": torch.where(masks["level"], labels["level"], torch.tensor(float("nan"))),
    }
    poisoned_loss = objective(poisoned)
    assert torch.equal(poisoned_loss.detach(), reference_loss.detach())
    assert torch.equal(grads(model, objective(poisoned)), reference)


def test_task_mean_is_over_labelled_samples_only() -> None:
    spec = small_spec()
    model = build_model(spec)
    x, labels, masks = batch(spec)
    _, means = multitask_loss(spec, model(x), labels, masks)
    out = model(x)["level"][:, 0]
    m = masks["level"]
    expected = ((out[m] - labels["level"][m]) ** 2).mean().item()
    assert means["level"] == pytest.approx(expected, rel=1e-6)
    # A task without a labelled sample in the batch is left out.
    none = {**masks, "grade": torch.zeros(6, dtype=torch.bool)}
    assert "grade" not in multitask_loss(spec, model(x), labels, none)[1]


def cleveland(heart_disease_dir: Path, spec: FederationSpec) -> LocalTrainer:
    mapping = DataMapping.from_toml(heart_disease_dir / "mapping_cleveland.toml")
    return LocalTrainer(spec, load_dataset(mapping, spec), device="cpu", reproducible_dp_seed=3)


def hungarian(heart_disease_dir: Path, spec: FederationSpec) -> LocalTrainer:
    mapping = DataMapping.from_toml(heart_disease_dir / "mapping_hungarian.toml")
    return LocalTrainer(spec, load_dataset(mapping, spec), device="cpu", reproducible_dp_seed=3)


def start(spec: FederationSpec) -> np.ndarray:
    return model_vector(build_model(spec), ParameterLayout.model(spec))


def test_round_over_budget_is_refused_before_any_step(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    trainer = cleveland(heart_disease_dir, heart_spec)
    accountant = Accountant("rdp", [(1.0, 0.3, 200)])
    plan = trainer.plan(noise_multiplier=1.0)
    steps: list[int] = []
    with pytest.raises(BudgetExceeded, match=r"over the budget of 1\.000"):
        trainer.train(
            start(heart_spec),
            plan,
            progress=lambda done, total: steps.append(done),
            accountant=accountant,
            budget_epsilon=1.0,
        )
    assert steps == []
    assert len(accountant.history) == 1


def test_planned_rounds_fit_the_budget_and_are_recorded(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    trainer = cleveland(heart_disease_dir, heart_spec)
    accountant = Accountant("rdp")
    vector = start(heart_spec)
    for _ in range(3):
        plan = trainer.plan(
            budget_epsilon=2.0, accountant=accountant, rounds=3 - len(accountant.history)
        )
        outcome = trainer.train(vector, plan, accountant=accountant, budget_epsilon=2.0)
        vector = outcome.local_vector
    assert len(accountant.history) == 3
    assert 1.9 <= accountant.epsilon(heart_spec.dp.delta) <= 2.0
    assert outcome.private
    assert outcome.noise_multiplier == plan.noise_multiplier > 0


def test_budget_settings_are_checked(heart_disease_dir: Path, heart_spec: FederationSpec) -> None:
    trainer = cleveland(heart_disease_dir, heart_spec)
    with pytest.raises(InvalidBudget, match="epsilon must be a finite number > 0"):
        trainer.plan(budget_epsilon=0.0)
    with pytest.raises(ConfigError, match="privacy budget"):
        trainer.plan()


def test_a_vector_of_another_layout_is_refused(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    trainer = cleveland(heart_disease_dir, heart_spec)
    other = small_spec()
    plan = trainer.plan(noise_multiplier=1.0)
    with pytest.raises(LayoutMismatch, match="the layout needs"):
        trainer.train(start(other), plan)
    with pytest.raises(LayoutMismatch):
        trainer.evaluate(start(heart_spec)[:-1])


def test_training_learns_and_leaves_heads_it_does_not_hold(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    spec = heart_spec.model_copy(update={"dp": heart_spec.dp.model_copy(update={"enabled": False})})
    trainer = hungarian(heart_disease_dir, spec)
    layout = ParameterLayout.model(spec)
    vector = start(spec)
    before = trainer.evaluate(vector)
    first = trainer.train(vector, trainer.plan())
    vector = first.local_vector
    for _ in range(15):
        last = trainer.train(vector, trainer.plan())
        vector = last.local_vector
    after = trainer.evaluate(vector)
    assert set(after) == {"disease", "max_heart_rate", "angina"}  # no severity here
    assert after["disease"]["auc"] > max(0.75, before["disease"]["auc"])
    # The multi-task objective falls (a single head's held-out error, e.g. the heart rate's
    # MAE after 16 epochs, moves with the random stream either way).
    assert last.mean_loss < 0.9 * first.mean_loss
    severity = layout.segment("head.severity")
    assert np.array_equal(
        vector[severity.offset : severity.end], start(spec)[severity.offset : severity.end]
    )
    assert not first.private
    assert first.noise_multiplier == 0.0
    assert first.labelled["disease"] == trainer.dataset.n_train


def test_training_is_reproducible_only_with_the_benchmark_seed(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    one, two = cleveland(heart_disease_dir, heart_spec), cleveland(heart_disease_dir, heart_spec)
    plan = one.plan(noise_multiplier=1.0)
    assert np.array_equal(
        one.train(start(heart_spec), plan).local_vector,
        two.train(start(heart_spec), plan).local_vector,
    )
    # Without it (production), two trainers on the same data and model never agree.
    mapping = DataMapping.from_toml(heart_disease_dir / "mapping_cleveland.toml")
    fresh = [LocalTrainer(heart_spec, load_dataset(mapping, heart_spec), device="cpu")] * 2
    first, second = (t.train(start(heart_spec), plan).local_vector for t in fresh)
    assert not np.array_equal(first, second)


def test_the_sampling_rate_leaving_the_agent_is_on_the_published_grid(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    """q = B/N would tell N; the plan's q (sampled, charged and reported) is B/N rounded
    up to 4 significant binary digits, and the steps follow from it."""
    trainer = cleveland(heart_disease_dir, heart_spec)
    exact = heart_spec.training.batch_size / trainer.dataset.n_train
    plan = trainer.plan(noise_multiplier=1.0)
    assert exact <= plan.sample_rate <= 1.125 * exact
    mantissa, _ = math.frexp(plan.sample_rate)
    assert (mantissa * 16).is_integer()
    assert plan.steps == math.ceil(heart_spec.training.local_epochs / plan.sample_rate)


def test_fedprox_keeps_the_local_model_closer_to_the_global_one(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    drift = {}
    for mu in (0.0, 5.0):
        spec = heart_spec.model_copy(
            update={
                "aggregation": heart_spec.aggregation.model_copy(update={"fedprox_mu": mu}),
                "training": heart_spec.training.model_copy(update={"local_epochs": 5.0}),
            }
        )
        trainer = cleveland(heart_disease_dir, spec)
        outcome = trainer.train(start(spec), trainer.plan(noise_multiplier=0.5))
        drift[mu] = np.linalg.norm(outcome.local_vector - start(spec))
    assert drift[5.0] < drift[0.0]


def test_bookkeeping_clipping_trains_the_same_model_as_opacus_hooks(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    # Same seed, same Poisson batches, same noise draws: the two modes may differ only by
    # floating-point rounding (they compute the same clipped sums by different routes).
    vectors = {}
    for mode in ("hooks", "bk"):
        spec = heart_spec.model_copy(
            update={"dp": heart_spec.dp.model_copy(update={"grad_sample_mode": mode})}
        )
        trainer = cleveland(heart_disease_dir, spec)
        vectors[mode] = trainer.train(start(spec), trainer.plan(noise_multiplier=1.0)).local_vector
    moved = np.abs(vectors["hooks"] - start(heart_spec)).max()
    assert moved > 1e-3
    assert np.allclose(vectors["bk"], vectors["hooks"], atol=1e-5 * moved)


def one_sample_trainer(spec: FederationSpec) -> LocalTrainer:
    """One training sample with loud labels for `flag` and `level` (not `grade`)."""
    x = torch.tensor([[3.0, 2.0, -1.0, 4.0]])
    split = SplitTensors(
        x,
        {"flag": torch.tensor([1.0]), "level": torch.tensor([40.0])},
        {"flag": torch.tensor([True]), "level": torch.tensor([True])},
    )
    dataset = LocalDataset(split, split, ("flag", "level"), ("a", "b"), {})
    return LocalTrainer(spec, dataset, device="cpu", reproducible_dp_seed=0)


def clipped(gradient: torch.Tensor, bound: float) -> torch.Tensor:
    return gradient * min(1.0, bound / float(gradient.norm()))


@pytest.mark.parametrize("balancing", ["none", "per_task_clip"])
def test_per_task_clipping_gives_each_task_an_equal_share_of_the_bound(balancing: str) -> None:
    spec = small_spec(dp=True, batch_size=1, learning_rate=1.0, task_balancing=balancing)
    trainer = one_sample_trainer(spec)
    start = model_vector(build_model(spec), ParameterLayout.model(spec))
    outcome = trainer.train(start, trainer.plan(noise_multiplier=0.0))
    assert (outcome.sample_rate, outcome.steps) == (1.0, 1)  # one step on the one sample
    # The same step by hand: each task's gradient of the one sample, clipped as promised.
    model = build_model(spec)
    layout = ParameterLayout.model(spec)
    parts = ("encoder", "head.flag", "head.level")
    params = [p for part in parts for p in model.part(part).parameters()]
    x = trainer.dataset.train.features

    def gradient(task: str) -> torch.Tensor:
        out = model(x)[task][:, 0]
        loss = (
            F.binary_cross_entropy_with_logits(out, torch.ones(1)).sum()
            if task == "flag"
            else (out - 40.0).pow(2).sum()
        )
        found = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip(found, params, strict=True)
            ]
        )

    task_gradients = [gradient("flag"), gradient("level")]
    c = spec.dp.max_grad_norm
    assert all(float(g.norm()) > c for g in task_gradients)  # both would be clipped
    if balancing == "none":
        expected = clipped(task_gradients[0] + task_gradients[1], c)
    else:
        expected = clipped(task_gradients[0], c / 2) + clipped(task_gradients[1], c / 2)
    moved = torch.cat(
        [
            torch.from_numpy(outcome.local_vector - start)[
                layout.segment(part).offset : layout.segment(part).end
            ]
            for part in parts
        ]
    )
    torch.testing.assert_close(moved, -expected.double(), rtol=1e-4, atol=1e-6)
    assert float(moved.norm()) <= c + 1e-6  # the sample's influence stays within C
