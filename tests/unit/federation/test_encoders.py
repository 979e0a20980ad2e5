"""Encoder kinds in the spec: the conv encoder's layout, weights and validation; MLP
specs keep their fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from federation.layout import ParameterLayout
from federation.model import build_model, model_vector
from federation.spec import FederationSpec

# The heart-disease example's spec as agents enrolled with it (the example itself moves on).
HEART = Path(__file__).resolve().parent / "heart_disease_spec_v1.json"


def image_spec(**encoder: object) -> FederationSpec:
    return FederationSpec.model_validate(
        {
            "name": "images",
            "tasks": [
                {"name": "digit", "kind": "multiclass", "n_classes": 10},
                {"name": "odd", "kind": "binary"},
            ],
            "model": {
                "encoder": {"kind": "conv", "input_shape": [1, 8, 8], **encoder},
                "head": {"hidden": [4]},
            },
        }
    )


def test_existing_mlp_specs_keep_their_fingerprints() -> None:
    # Computed before the encoder section became a union of kinds: agents enrolled with
    # this spec must keep agreeing with the coordinator, coordinate for coordinate.
    spec = FederationSpec.model_validate_json(HEART.read_text())
    assert spec.fingerprint() == "69f5738396b1cf0e8f391e93ec27216e2b41ae07d06688a4a3f08243311d4782"
    # The update layout gained the validation statistics' segments at its end
    # (federation/metrics.py); the update and counter segments before them are unchanged.
    update = ParameterLayout.update(spec)
    before = [s for s in update.segments if s not in update.statistic_segments]
    assert (
        ParameterLayout("update", before).fingerprint
        == "4333ece3e5a84dece4163d3b1cff1a7a3ae870e1f58d5e3e0abaee8dd14a0fbb"
    )
    assert update.fingerprint == "1aff6a1d84ec478610c90bba1aaf84a493f64fadd19c42154111ddc15f5be5ec"


@pytest.mark.parametrize(
    "encoder",
    [
        {"channels": [8], "residual_blocks": 0, "groups": 2},
        {"channels": [8, 16, 16], "residual_blocks": 2, "groups": 4, "projection": 6},
    ],
)
def test_conv_layout_matches_the_torch_model_and_the_heads_read_its_output(
    encoder: dict[str, object],
) -> None:
    spec = image_spec(**encoder)
    model = build_model(spec)
    layout = ParameterLayout.model(spec)
    assert layout.segment("encoder").length == sum(p.numel() for p in model.encoder.parameters())
    assert layout.length == sum(p.numel() for p in model.parameters())
    images = torch.randn(3, 1, 8, 8)
    out = model(images)
    assert out["digit"].shape == (3, 10)
    assert out["odd"].shape == (3, 1)
    flat = model(images.reshape(3, 64))  # a flat row of C*H*W values is the same image
    assert torch.allclose(flat["digit"], out["digit"])


def test_conv_initial_weights_are_deterministic_from_the_seed() -> None:
    spec = image_spec(channels=[8, 16], groups=4)
    layout = ParameterLayout.model(spec)
    torch.manual_seed(3)
    first = model_vector(build_model(spec), layout)
    torch.manual_seed(4)
    second = model_vector(build_model(spec), layout)
    np.testing.assert_array_equal(first, second)
    reseeded = spec.model_copy(update={"model": spec.model.model_copy(update={"init_seed": 1})})
    assert not np.array_equal(first, model_vector(build_model(reseeded), layout))


def test_a_million_parameter_encoder_is_counted_without_building_it() -> None:
    spec = image_spec(channels=[64, 128, 192], groups=8)
    assert spec.model.encoder.parameter_count() == 1_329_984
    assert json.loads(spec.model_dump_json())["model"]["encoder"]["kind"] == "conv"


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        ({"channels": [12], "groups": 8}, "groups = 8 must divide every stage width"),
        ({"input_shape": [0, 8, 8]}, "0 channels"),
        ({"input_shape": [1, 8, 5000]}, "between 1 and 4096"),
        ({"input_shape": [1, 8]}, "input_shape"),
        ({"channels": [0]}, "each stage width"),
        ({"channels": [4096, 4096, 4096], "groups": 8}, "at most 100,000,000"),
        ({"hidden": [8]}, "Extra inputs are not permitted"),
    ],
)
def test_bad_conv_encoders_are_refused_with_a_clear_message(
    encoder: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        image_spec(**encoder)


def test_an_unknown_encoder_kind_names_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="'mlp', 'conv'"):
        FederationSpec.model_validate(
            {
                "name": "x",
                "tasks": [{"name": "t", "kind": "binary"}],
                "model": {"encoder": {"kind": "transformer"}},
            }
        )
