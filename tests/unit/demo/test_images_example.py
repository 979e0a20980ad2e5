"""The images example: found by name, its data written from scikit-learn's digits, and each
institution's agent.toml accepted by the agent's own loader against the example's spec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.config import parse_config
from agent.image_mapping import ImageMapping
from agent.sources import describe, load_local_data
from federation.spec import FederationSpec
from fmtl.demo.digits import INSTITUTIONS, TASKS_HELD, assign, load_digits
from fmtl.demo.example import agent_config, generate_data, load_example, locate_example
from fmtl.demo.processes import DemoError


def test_the_split_is_skewed_disjoint_and_keeps_a_balanced_test_set() -> None:
    _, labels = load_digits()
    parts = assign(labels, seed=0)
    everything = np.concatenate(list(parts.values()))
    assert len(everything) == len(set(everything.tolist())) == len(labels)
    assert np.bincount(labels[parts["test"]], minlength=10).tolist() == [30] * 10
    for k, name in enumerate(INSTITUTIONS):
        counts = np.bincount(labels[parts[name]], minlength=10)
        majors = counts[2 * k] + counts[2 * k + 1]
        assert majors > 0.85 * counts.sum()  # mostly its two digits
        assert (counts > 0).all()  # and a few of every other


def test_images_example_by_name_runs_through_the_agents_loader(tmp_path: Path) -> None:
    folder = locate_example("images")
    example = load_example(folder)
    assert [h.name for h in example.hospitals] == sorted(INSTITUTIONS)
    spec = FederationSpec.model_validate(example.spec)
    assert spec.model.encoder.parameter_count() >= 1_000_000
    root = generate_data(example, tmp_path)
    assert root is not None
    for hospital in example.hospitals:
        assert tuple(hospital.tasks) == TASKS_HELD[hospital.name]
        text = agent_config(
            hospital,
            coordinator_url="http://127.0.0.1:1",
            state_dir=tmp_path / hospital.name,
            epsilon=5.0,
            delta=1e-5,
            accountant="rdp",
            seed=None,
            poll_interval_s=1.0,
            data_root=root,
            device="auto",
        )
        import tomllib

        config = parse_config(tomllib.loads(text))
        assert isinstance(config.data, ImageMapping)
        assert config.training.device == "auto"
        data = load_local_data(config.data, spec)
        assert data.sample_shape == (1, 8, 8)
        assert 250 < data.n_train + data.n_validation < 320
        lines = describe(data, spec)
        assert lines[0] == "inputs: images 1 x 8 x 8 (in memory)"
        assert any(line.startswith(f"{hospital.tasks[0]} (") for line in lines)
    assert json.loads((folder / "federation.json").read_text())["dp"]["grad_sample_mode"] == "bk"


def test_an_unknown_example_name_lists_the_shipped_ones() -> None:
    with pytest.raises(DemoError, match="heart_disease, images"):
        locate_example("nope")
