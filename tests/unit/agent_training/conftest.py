"""Fixtures: the heart-disease federation and small synthetic tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.spec import FederationSpec

HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")


@pytest.fixture
def heart_spec(heart_disease_dir: Path) -> FederationSpec:
    text = (heart_disease_dir / "federation.json").read_text()
    return FederationSpec.model_validate_json(text)


def small_spec(*, dp: bool = False, input_features: int = 2, **training: object) -> FederationSpec:
    """Two features, a binary, a multiclass and a regression task."""
    return FederationSpec.model_validate(
        {
            "name": "small",
            "tasks": [
                {"name": "flag", "kind": "binary"},
                {"name": "grade", "kind": "multiclass", "n_classes": 3},
                {"name": "level", "kind": "regression"},
            ],
            "model": {"encoder": {"kind": "mlp", "input_dim": 2 * input_features, "hidden": [8]}},
            "training": {"batch_size": 8, "learning_rate": 0.1, **training},
            "dp": {"enabled": dp},
        }
    )
