"""Fixtures: an agent.toml for the Cleveland hospital of the heart-disease example."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, AgentEnvironment, load_config
from federation.spec import FederationSpec

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "heart_disease"


def write_config(folder: Path, *, epsilon: float = 3.0, extra: str = "") -> Path:
    """An agent.toml in `folder` using the example's Cleveland mapping."""
    path = folder / "agent.toml"
    path.write_text(
        f"""
[coordinator]
url = "http://127.0.0.1:9"

[data]
mapping = "{EXAMPLE / "mapping_cleveland.toml"}"

[privacy]
epsilon = {epsilon}

[training]
device = "cpu"

[daemon]
poll_interval_s = 0.1
{extra}
"""
    )
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture
def config(config_file: Path) -> AgentConfig:
    return load_config(config_file, environment=AgentEnvironment(key_passphrase=None))


@pytest.fixture
def heart_spec() -> FederationSpec:
    return FederationSpec.model_validate_json((EXAMPLE / "federation.json").read_text())
