"""A million-parameter encoder through the service: `fmtl demo` on the images example with
four agent processes, secure aggregation and DP (the slow set).

The command a user runs, on a copy of examples/images holding four of its institutions:
one round of the digits federation (a residual conv encoder of 1.44M parameters, DP-SGD in
`bk` mode, each update masked and unmasked as 1.44M+ fixed-point coordinates), then the
report. What the user relies on: the round completes with every update in the sum, the
model moved, each institution's privacy spend is recorded within its budget, and the
report is written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from federation.layout import ParameterLayout
from federation.model import build_model, model_vector
from federation.spec import FederationSpec
from fmtl.demo.example import locate_example
from fmtl.demo.record import DemoRecord
from fmtl.demo.run import FINAL_MODEL_FILE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FOUR = ("north", "south", "east", "central")
EPSILON = 5.0
DEMO_TIMEOUT_S = 900


def test_a_million_parameter_encoder_round_with_four_agents(tmp_path: Path) -> None:
    source = locate_example("images")
    example = tmp_path / "images"  # the name selects the generated digits data
    example.mkdir()
    shutil.copy(source / "federation.json", example)
    for name in FOUR:
        shutil.copy(source / f"mapping_{name}.toml", example)
    out = tmp_path / "run"
    env = {key: value for key, value in os.environ.items() if not key.startswith("FMTL_")}
    done = subprocess.run(
        [
            sys.executable, "-m", "fmtl", "demo", "--out", str(out),
            "--example", str(example), "--rounds", "1", "--epsilon", str(EPSILON),
            "--stage-timeout", "300", "--local-epochs", "0.5", "--seed", "0",
        ],
        env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"demo failed:\n{done.stderr[-3000:]}\n{done.stdout[-3000:]}"
    assert (out / "report.html").is_file()

    record = DemoRecord.load(out / "record.json")
    (round_info,) = record.rounds
    assert round_info.stage == "completed"
    assert sorted(p.status for p in round_info.participant_list) == ["completed"] * 4
    assert {entry.institution for entry in record.ledger} == set(FOUR)
    assert all(0 < entry.recomputed_epsilon <= EPSILON for entry in record.ledger)

    spec = FederationSpec.model_validate_json((source / "federation.json").read_text())
    layout = ParameterLayout.model(spec)
    encoder = layout.segment("encoder")
    assert encoder.length >= 1_000_000
    final = np.frombuffer((out / FINAL_MODEL_FILE).read_bytes(), dtype="<f4")
    assert final.shape == (layout.length,)
    initial = model_vector(build_model(spec), layout)
    moved = np.abs(final[encoder.offset : encoder.end] - initial[encoder.offset : encoder.end])
    assert np.isfinite(final).all()
    assert (moved > 0).mean() > 0.99  # DP noise and training reach every encoder coordinate
