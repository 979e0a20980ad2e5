"""What `fmtl demo` prepares before anything runs: the example, the spec, each agent.toml,
and its refusal of bad options (one line, non-zero exit, nothing started)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.config import AgentConfig, parse_config
from federation.spec import FederationSpec
from fmtl.demo.cli import app as demo_app
from fmtl.demo.example import agent_config, demo_spec, load_example, locate_example, to_toml
from fmtl.demo.processes import DemoError
from fmtl.demo.run import DemoOptions, postgres_sqlalchemy_url


@pytest.fixture(scope="module")
def example_dir() -> Path:
    return locate_example()


def test_the_example_has_four_hospitals_each_with_its_own_tasks(example_dir: Path) -> None:
    example = load_example(example_dir)
    names = [h.name for h in example.hospitals]
    assert names == ["cleveland", "hungarian", "switzerland", "va"]
    tasks = {h.name: set(h.tasks) for h in example.hospitals}
    federation_tasks = set(example.task_kinds)
    assert all(held <= federation_tasks for held in tasks.values())
    # Not every hospital holds every task: that is what makes it multi-task.
    assert any(held != federation_tasks for held in tasks.values())


def test_demo_spec_is_a_valid_federation_spec_fitted_to_the_run(example_dir: Path) -> None:
    example = load_example(example_dir)
    raw = demo_spec(example, name="heart_disease_2", rounds=3, seed=7, stage_timeout_s=12.0)
    spec = FederationSpec.model_validate(raw)
    assert spec.name == "heart_disease_2"
    assert spec.dp.planned_rounds == 3
    assert spec.model.init_seed == 7
    assert spec.schedule.stage_timeout_s == 12.0
    assert spec.schedule.round_interval_s is None
    # One of the four may drop out and the round still runs.
    assert spec.schedule.min_participants == 3
    assert spec.secagg.threshold(4) <= 3
    assert example.spec["name"] == "heart_disease"  # the example itself is untouched


def test_each_agent_toml_is_accepted_by_the_agents_own_loader(
    example_dir: Path, tmp_path: Path
) -> None:
    example = load_example(example_dir)
    for hospital in example.hospitals:
        text = agent_config(
            hospital,
            coordinator_url="http://127.0.0.1:8123",
            state_dir=tmp_path / hospital.name / "state",
            epsilon=4.5,
            delta=1e-5,
            accountant="rdp",
            seed=3,
            poll_interval_s=0.5,
            personalisation=example.personalisation,
        )
        config = parse_config(tomllib.loads(text), source=f"{hospital.name}/agent.toml")
        assert config.privacy.epsilon == 4.5
        # Every hospital keeps the example's personalised model (a local choice).
        assert config.personalisation.private_model
        assert config.personalisation.model_dump() == {
            **type(config.personalisation)().model_dump(),
            **example.personalisation,
        }
        assert config.coordinator.url == "http://127.0.0.1:8123"
        assert sorted(config.data.labels) == sorted(hospital.tasks)
        assert config.data.path.is_absolute()
        assert config.data.path.is_file()


def test_toml_writer_round_trips_nested_tables_and_quotes() -> None:
    document = {
        "data": {
            "path": 'C:\\data\\"odd" file.csv',
            "labels": {"disease": {"column": "num", "positive_above": 0}},
            "features": ["a", "b"],
            "missing_by_column": {"chol": ["0"]},
            "flag": True,
            "fraction": 0.2,
        }
    }
    assert tomllib.loads(to_toml(document, header="a header")) == document


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (DemoOptions(rounds=0), "--rounds"),
        (DemoOptions(agents_drop_at="teatime"), "--agents-drop-at must be one of"),
        (DemoOptions(rounds=2, agents_drop_at="share_keys", drop_round=5), "--drop-round"),
        (DemoOptions(postgres="mysql://x"), "--postgres"),
        (DemoOptions(redis="http://x"), "--redis"),
        (DemoOptions(device="tpu"), "--device must be cpu, cuda or auto"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(options: DemoOptions, message: str) -> None:
    with pytest.raises(DemoError, match=message):
        options.check()


def test_cli_refuses_a_bad_stage_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        demo_app, ["--agents-drop-at", "teatime", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [
        "error: --agents-drop-at must be one of advertise_keys, share_keys, masked_input, "
        "consistency_check, unmasking (got 'teatime')"
    ]
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_run_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = CliRunner().invoke(demo_app, ["--rounds", "1", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not empty: choose another --out folder" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_example_folder_without_a_spec_is_named(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match=r"has no federation\.json"):
        locate_example(tmp_path)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgres://postgres@127.0.0.1:5432/test",
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    ],
)
def test_postgres_urls_get_the_psycopg_driver(url: str) -> None:
    assert postgres_sqlalchemy_url(url) == "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def test_agents_are_unseeded_unless_the_run_asks_for_reproducibility(
    example_dir: Path, tmp_path: Path
) -> None:
    hospital = load_example(example_dir).hospitals[0]

    def config(seed: int | None) -> AgentConfig:
        text = agent_config(
            hospital,
            coordinator_url="http://127.0.0.1:8123",
            state_dir=tmp_path / "state",
            epsilon=3.0,
            delta=1e-5,
            accountant="rdp",
            seed=seed,
            split_seed=seed,
            poll_interval_s=0.5,
        )
        return parse_config(tomllib.loads(text))

    assert config(None).testing.reproducible_dp_seed is None  # DP noise from the OS's CSPRNG
    assert config(None).testing.active == []
    assert config(None).data.split_seed == hospital.mapping.get("split_seed", 0)
    seeded = config(7)
    assert seeded.testing.reproducible_dp_seed == 7
    assert seeded.data.split_seed == 7


def test_cli_refuses_an_unknown_hospital_to_drop_before_starting(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        demo_app,
        ["--agents-drop-at", "share_keys", "--drop-agent", "mayo", "--out", str(tmp_path / "r")],
    )
    assert result.exit_code == 1
    assert "--drop-agent must be one of cleveland, hungarian, switzerland, va (got 'mayo')" in (
        result.output
    )
    assert not (tmp_path / "r").exists()


def test_the_seeded_demo_runner_allows_the_testing_switch_that_agent_run_refuses(
    example_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fmtl demo --seed` replays DP noise, so its agents run under `fmtl.demo.agent`: the
    same daemon, past the refusal (here it stops at the missing enrollment instead)."""
    from fmtl.demo.agent import main as demo_agent

    hospital = load_example(example_dir).hospitals[0]
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_config(
            hospital,
            coordinator_url="http://127.0.0.1:9",
            state_dir=tmp_path / "state",
            epsilon=3.0,
            delta=1e-5,
            accountant="rdp",
            seed=7,
            split_seed=7,
            poll_interval_s=0.5,
        )
    )
    assert demo_agent(["--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "refused" not in error
    assert "fmtl agent enroll" in error
