"""Spec fingerprints: fields added later leave existing specs' fingerprints alone."""

from __future__ import annotations

import json
from pathlib import Path

from federation.spec import FederationSpec

# The heart-disease example's spec as agents enrolled with it (the example itself moves on).
HEART = Path(__file__).resolve().parent / "heart_disease_spec_v1.json"


def test_a_later_field_changes_the_fingerprint_only_when_set() -> None:
    spec = FederationSpec.model_validate_json(HEART.read_text())
    raw = json.loads(HEART.read_text())
    raw["aggregation"]["server_momentum"] = 0.9  # the default, written out
    assert FederationSpec.model_validate(raw).fingerprint() == spec.fingerprint()
    raw["aggregation"]["server_momentum"] = 0.5
    assert FederationSpec.model_validate(raw).fingerprint() != spec.fingerprint()
