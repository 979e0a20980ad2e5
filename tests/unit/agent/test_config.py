"""agent.toml: what loads, and the one-line errors naming the file and the key to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentEnvironment, load_config
from agent.errors import ConfigError
from tests.unit.agent.conftest import EXAMPLE, write_config


def _load(path: Path) -> object:
    return load_config(path, environment=AgentEnvironment(key_passphrase=None))


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = write_config(tmp_path, extra='[state]\ndir = "var/agent"\n')
    config = load_config(path, environment=AgentEnvironment(key_passphrase=None))
    assert config.state_dir == (tmp_path / "var" / "agent").resolve()
    assert config.key_file == config.state_dir / "identity.key"
    assert config.ledger_file.parent == config.state_dir
    assert config.data.path == (EXAMPLE / "data" / "cleveland.csv").resolve()
    assert config.coordinator.url == "http://127.0.0.1:9"
    assert config.key_passphrase is None


def test_passphrase_comes_from_the_environment_only(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    config = load_config(path, environment=AgentEnvironment(key_passphrase="s3cret"))  # type: ignore[arg-type]
    assert config.key_passphrase == b"s3cret"
    assert "s3cret" not in repr(config)

    bad = write_config(tmp_path, extra='[identity]\npassphrase = "s3cret"\n')
    with pytest.raises(ConfigError) as caught:
        _load(bad)
    message = str(caught.value)
    assert "identity.passphrase" in message
    assert "FMTL_AGENT_KEY_PASSPHRASE" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[daemon2]\nx = 1\n", "daemon2: unknown setting"),
        ("[training]\ndevise = 'cpu'\n", None),  # duplicate table: TOML error
        ("[coordinator]\ntimeout_s = -1\n", None),
    ],
)
def test_mistakes_name_the_file_and_the_key(
    tmp_path: Path, extra: str, expected: str | None
) -> None:
    path = write_config(tmp_path, extra=extra)
    with pytest.raises(ConfigError) as caught:
        _load(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "\n" not in message
    if expected:
        assert expected in message


def test_typo_suggests_the_allowed_keys(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[data]\nmapping = "{EXAMPLE / "mapping_va.toml"}"\n[privacy]\nepsilon = 1\nepsiln = 2\n'
    )
    with pytest.raises(ConfigError) as caught:
        _load(path)
    assert (
        "privacy.epsiln: unknown setting (allowed here: epsilon, delta, accountant, "
        "share_own_metrics, insecure_allow_unmasked_rounds)" in str(caught.value)
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[privacy]\nepsilon = 1\n", "data: missing"),
        (f'[data]\nmapping = "{EXAMPLE / "mapping_va.toml"}"\n', "privacy: missing"),
        (
            f'[data]\nmapping = "{EXAMPLE / "mapping_va.toml"}"\n[privacy]\nepsilon = 0\n',
            "privacy.epsilon: Input should be greater than 0 (got 0)",
        ),
        (
            f'[data]\nmapping = "{EXAMPLE / "mapping_va.toml"}"\n[privacy]\nepsilon = 1\n'
            'accountant = "gdp"\n',
            "privacy.accountant",
        ),
        ("[privacy\nepsilon = 1\n", "not valid TOML"),
        (
            '[data]\nmapping = "nowhere.toml"\n[privacy]\nepsilon = 1\n',
            "data.mapping: cannot read data mapping",
        ),
        (
            '[coordinator]\nurl = "fl.example.org"\n[data]\nmapping = "x.toml"\n',
            "data.mapping",
        ),
    ],
)
def test_malformed_files_are_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        _load(path)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_coordinator_url_must_be_http(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("http://127.0.0.1:9", "fl.example.org"))
    with pytest.raises(ConfigError, match=r"coordinator\.url: 'fl\.example\.org' is not an"):
        _load(path)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        _load(tmp_path / "agent.toml")


def test_inline_data_mapping_resolves_its_path(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    path = tmp_path / "agent.toml"
    path.write_text(
        '[data]\npath = "data/x.csv"\nfeatures = ["a"]\nlabels = { t = "y" }\n'
        "[privacy]\nepsilon = 2\n"
    )
    config = load_config(path, environment=AgentEnvironment(key_passphrase=None))
    assert config.data.path == (tmp_path / "data" / "x.csv").resolve()


def test_the_neighbour_graph_policy_defaults_to_a_third_colluding_at_2_to_the_minus_40(
    tmp_path: Path,
) -> None:
    from privacy.secagg import GraphPolicy

    assert load_config(
        write_config(tmp_path), environment=AgentEnvironment(key_passphrase=None)
    ).neighbour_graph.policy() == GraphPolicy(1 / 3, 0.1, -40.0)
    stricter = write_config(
        tmp_path, extra="[neighbour_graph]\ncollusion_fraction = 0.4\nlog2_target = -60\n"
    )
    policy = load_config(
        stricter, environment=AgentEnvironment(key_passphrase=None)
    ).neighbour_graph.policy()
    assert policy == GraphPolicy(0.4, 0.1, -60.0)
    for wrong in ("collusion_fraction = 0.5", "log2_target = 0", "dropout_fraction = -1"):
        path = write_config(tmp_path, extra=f"[neighbour_graph]\n{wrong}\n")
        with pytest.raises(ConfigError, match="neighbour_graph"):
            _load(path)


@pytest.mark.parametrize(
    "url", ["http://fl.example.org", "http://10.0.0.5:8000", "http://127.0.0.1.example.org"]
)
def test_plain_http_is_refused_off_loopback(tmp_path: Path, url: str) -> None:
    """The enrollment token and every round would cross the network in clear."""
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("http://127.0.0.1:9", url))
    with pytest.raises(ConfigError, match="plain http is refused except on loopback"):
        _load(path)


@pytest.mark.parametrize(
    "url",
    ["https://fl.example.org", "http://127.0.0.1:8000", "http://[::1]:8000", "http://localhost"],
)
def test_https_anywhere_and_http_on_loopback_are_accepted(tmp_path: Path, url: str) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("http://127.0.0.1:9", url))
    assert _load(path).coordinator.url == url  # type: ignore[attr-defined]


def test_unmasked_rounds_are_off_unless_loudly_allowed(tmp_path: Path) -> None:
    from agent.config import AgentConfig

    config = _load(write_config(tmp_path))
    assert isinstance(config, AgentConfig)
    assert config.privacy.insecure_allow_unmasked_rounds is False
    allowed = _load(_with_privacy(tmp_path, "insecure_allow_unmasked_rounds = true"))
    assert isinstance(allowed, AgentConfig)
    assert allowed.privacy.insecure_allow_unmasked_rounds is True


def _with_privacy(tmp_path: Path, line: str) -> Path:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("[privacy]\n", f"[privacy]\n{line}\n"))
    return path
