"""Personalisation: FedPer heads stay local, fine-tuning moves only what it says, the private
model mixes in, and nothing trained outside DP-SGD changes what a round sends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent.data import load_dataset
from agent.mapping import DataMapping
from agent.personal import FineTune, MixedModel, Personaliser, PersonalSettings, PersonalState
from agent.training import LocalTrainer
from federation.aggregation import local_contribution
from federation.layout import ParameterLayout
from federation.model import build_model, model_vector
from federation.spec import FederationSpec, PersonalisationMode, PersonalisationSpec


def trainer(heart_disease_dir: Path, spec: FederationSpec, name: str = "va") -> LocalTrainer:
    mapping = DataMapping.from_toml(heart_disease_dir / f"mapping_{name}.toml")
    return LocalTrainer(spec, load_dataset(mapping, spec), device="cpu", reproducible_dp_seed=5)


def fedper(spec: FederationSpec) -> FederationSpec:
    return spec.model_copy(
        update={"personalisation": PersonalisationSpec(mode=PersonalisationMode.FEDPER)}
    )


def start(spec: FederationSpec) -> np.ndarray:
    return model_vector(build_model(spec), ParameterLayout.model(spec))


def segment(spec: FederationSpec, vector: np.ndarray, name: str) -> np.ndarray:
    s = ParameterLayout.model(spec).segment(name)
    return vector[s.offset : s.end]


def test_fedper_heads_stay_local_and_come_back_next_round(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    spec = fedper(heart_spec)
    local = trainer(heart_disease_dir, spec)
    personal = Personaliser(spec, local)
    global_vector = start(spec)
    federated = personal.federated_vector(global_vector)
    np.testing.assert_array_equal(federated, global_vector)  # first round: the initial heads
    outcome = local.train(federated, local.plan(noise_multiplier=1.0))
    personal.absorb(outcome.local_vector, 1)
    contribution = local_contribution(
        spec,
        federated,
        outcome.local_vector,
        train_samples=outcome.train_samples,
        labelled=outcome.labelled,
    )
    assert not any(name.startswith("head.") for name in contribution.segments)  # never sent
    # Next round: a new global encoder (and the untouched global heads) arrives; the
    # institution trains on it with the heads it kept.
    next_global = global_vector + 0.01
    again = personal.federated_vector(next_global)
    np.testing.assert_array_equal(
        segment(spec, again, "encoder"), segment(spec, next_global, "encoder")
    )
    for task in ("disease", "severity"):
        kept = segment(spec, outcome.local_vector, f"head.{task}")
        np.testing.assert_array_equal(segment(spec, again, f"head.{task}"), kept)
        assert not np.array_equal(kept, segment(spec, global_vector, f"head.{task}"))
    restored = PersonalState.from_bytes(personal.state.to_bytes())
    assert restored.round == 1
    assert restored.heads is not None
    assert personal.state.heads is not None
    np.testing.assert_array_equal(restored.heads, personal.state.heads)


@pytest.mark.parametrize("choice", [FineTune.HEADS, FineTune.HEADS_AND_LAST_LAYER])
def test_fine_tuning_moves_the_heads_and_only_the_last_encoder_layer_asked_for(
    heart_disease_dir: Path, heart_spec: FederationSpec, choice: FineTune
) -> None:
    local = trainer(heart_disease_dir, heart_spec)
    personal = Personaliser(heart_spec, local, PersonalSettings(fine_tune=choice))
    before = start(heart_spec)
    after = personal.fine_tuned(before)
    model_before, model_after = local.model(before), local.model(after)
    first = next(iter(model_before.encoder.parameters()))
    first_after = next(iter(model_after.encoder.parameters()))
    torch.testing.assert_close(first_after, first)  # the first layer never moves
    last_before = [p.detach() for p in model_before.encoder.parameters()][-1]
    last_after = [p.detach() for p in model_after.encoder.parameters()][-1]
    assert torch.equal(last_before, last_after) == (choice is FineTune.HEADS)
    assert not np.array_equal(
        segment(heart_spec, after, "head.disease"), segment(heart_spec, before, "head.disease")
    )


def test_personalised_output_mixes_the_private_and_the_federated_model(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    local = trainer(heart_disease_dir, heart_spec)
    personal = Personaliser(
        heart_spec, local, PersonalSettings(private_model=True, private_weight=0.25)
    )
    global_vector = start(heart_spec)
    assert isinstance(personal.model(global_vector), torch.nn.Module)
    personal.train_private(1)
    assert personal.state.private is not None
    mixed = personal.model(global_vector)
    assert isinstance(mixed, MixedModel)
    x = local.dataset.validation.features
    with torch.no_grad():
        out = mixed(x)
        private = local.model(personal.state.private)(x)
        federated = local.model(global_vector)(x)
    for task in heart_spec.task_names:
        torch.testing.assert_close(out[task], 0.25 * private[task] + 0.75 * federated[task])


def test_local_only_training_never_changes_what_a_round_sends(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    # Two institutions with the same data and seed, one with every local personalisation
    # switched on: their DP rounds must send identical updates, round after round.
    sent = []
    for settings in (
        PersonalSettings(),
        PersonalSettings(fine_tune=FineTune.HEADS_AND_LAST_LAYER, private_model=True),
    ):
        local = trainer(heart_disease_dir, heart_spec)
        personal = Personaliser(heart_spec, local, settings)
        global_vector = start(heart_spec)
        vectors = []
        for number in (1, 2):
            personal.evaluate(global_vector)
            federated = personal.federated_vector(global_vector)
            outcome = local.train(federated, local.plan(noise_multiplier=1.0))
            personal.absorb(outcome.local_vector, number)
            personal.train_private(number)
            vectors.append(outcome.local_vector)
            global_vector = outcome.local_vector
        sent.append(vectors)
    for plain, personalised in zip(sent[0], sent[1], strict=True):
        np.testing.assert_array_equal(plain, personalised)


def test_fine_tuning_on_a_large_featured_encoder_stays_bounded(
    heart_disease_dir: Path, heart_spec: FederationSpec
) -> None:
    # A federated encoder whose weights grew large (as DP-noised server steps can make them):
    # unbounded SGD on the regression head's squared error diverged here.
    local = trainer(heart_disease_dir, heart_spec, "cleveland")
    layout = ParameterLayout.model(heart_spec)
    grown = start(heart_spec)
    encoder = layout.segment("encoder")
    grown[encoder.offset : encoder.end] *= 6.0
    personal = Personaliser(heart_spec, local, PersonalSettings(fine_tune=FineTune.HEADS))
    federated_mae = local.evaluate(grown)["max_heart_rate"]["mae"]
    tuned = personal.fine_tuned(grown)
    assert np.all(np.isfinite(tuned))
    assert local.evaluate(tuned)["max_heart_rate"]["mae"] < 3 * federated_mae
