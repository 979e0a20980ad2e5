"""`fmtl agent ...` as a new user meets it: one-line errors, exit codes, no tracebacks."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import EXIT_FAILURE, EXIT_INPUT, app
from tests.unit.agent.conftest import write_config

#: The admin's roster key fingerprint every enrollment here pins (`--roster-key`).
ROSTER_KEY = "ab" * 32
runner = CliRunner(env={"FMTL_AGENT_ROSTER_KEY": ROSTER_KEY})


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ")
    assert "Traceback" not in output
    return lines[0]


def test_malformed_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("epsilon = 3.0", "epsilon = -1"))
    result = runner.invoke(app, ["status", "--config", str(path)])
    assert result.exit_code == EXIT_INPUT
    line = _one_error_line(result.stderr)
    assert f"{path}: privacy.epsilon" in line


def test_unreachable_coordinator_is_one_line_and_stores_nothing(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    url = f"http://127.0.0.1:{_closed_port()}"
    result = runner.invoke(
        app, ["enroll", "--config", str(path), "--coordinator", url, "--token", "fmtl_enroll_x"]
    )
    assert result.exit_code == EXIT_FAILURE
    line = _one_error_line(result.stderr)
    assert f"cannot reach the coordinator at {url}" in line
    assert not (tmp_path / "state" / "identity.key").exists()
    assert not (tmp_path / "state" / "profile.json").exists()


def test_data_missing_a_mapped_column_is_refused_before_enrolling(tmp_path: Path) -> None:
    csv = tmp_path / "site.csv"
    csv.write_text("age,sex,num\n50,1,0\n60,0,1\n")
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[data]\npath = "{csv.name}"\nfeatures = ["age", "sex", "chol"]\n'
        'labels = { disease = "num" }\n[privacy]\nepsilon = 1\n'
    )
    result = runner.invoke(
        app,
        ["enroll", "--config", str(path), "--coordinator", "http://127.0.0.1:9", "--token", "t"],
    )
    assert result.exit_code == EXIT_INPUT
    line = _one_error_line(result.stderr)
    assert "data.features: unknown column 'chol'" in line


def test_run_and_check_before_enrolling_say_how_to_enroll(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    for command in ("run", "check"):
        result = runner.invoke(app, [command, "--config", str(path)])
        assert result.exit_code == EXIT_FAILURE
        assert "fmtl agent enroll" in _one_error_line(result.stderr)


def test_status_json_before_any_round(tmp_path: Path) -> None:
    path = write_config(tmp_path, epsilon=2.5)
    result = runner.invoke(app, ["status", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["enrolled"] is False
    assert document["budget"]["epsilon"] == 2.5
    assert document["budget"]["epsilon_spent"] == 0.0
    assert document["budget"]["epsilon_left"] == 2.5
    assert document["rounds"]["joined"] == 0
    # Where training runs (the conftest's agent.toml asks for the CPU).
    assert document["training"] == {"configured": "cpu", "device": "cpu"}
    shown = runner.invoke(app, ["status", "--config", str(path)])
    assert "cpu (configured cpu)" in shown.stdout


def test_status_shows_the_federated_and_personalised_models_local_figures(
    tmp_path: Path,
) -> None:
    from agent.config import AgentEnvironment, load_config
    from agent.ledger import MODEL_METRICS_MEMO, Ledger

    path = write_config(tmp_path)
    config = load_config(path, environment=AgentEnvironment(key_passphrase=None))
    entry = {
        "federation": "heart_disease",
        "round": 7,
        "global": {"disease": {"auc": 0.81, "accuracy": 0.55, "n": 61}},
        "personal": {"disease": {"auc": 0.88, "accuracy": 0.80, "n": 61}},
    }
    with Ledger.open(config.ledger_file) as ledger:
        ledger.remember(MODEL_METRICS_MEMO, {"history": [entry]})
    result = runner.invoke(app, ["status", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    models = json.loads(result.stdout)["models"]
    assert models["latest"] == entry
    assert models["history"] == [entry]
    shown = runner.invoke(app, ["status", "--config", str(path)]).stdout
    assert "start of round 7" in shown
    assert "federated auc 0.810, accuracy 0.550" in shown
    assert "personalised auc 0.880, accuracy 0.800" in shown


def test_status_says_when_the_configured_gpu_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without one
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('device = "cpu"', 'device = "cuda"'))
    result = runner.invoke(app, ["status", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    training = json.loads(result.stdout)["training"]
    assert training["device"] is None
    assert "CUDA is not available" in training["problem"]


def test_fmtl_entry_point_has_the_agent_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fmtl", "agent", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    for command in ("enroll", "run", "status", "check"):
        assert command in done.stdout


class _NotACoordinator(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = b"<html>not here</html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def test_a_url_that_is_not_an_fmtl_coordinator_is_named(tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _NotACoordinator)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = runner.invoke(
            app,
            [
                "enroll",
                "--config",
                str(write_config(tmp_path)),
                "--coordinator",
                url,
                "--token",
                "x",
            ],
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == EXIT_FAILURE
    line = _one_error_line(result.stderr)
    assert f"{url} does not look like an fmtl coordinator (HTTP 404" in line
    assert not (tmp_path / "state" / "identity.key").exists()


def test_an_enrolled_agent_is_not_replaced_without_force(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "profile.json").write_text("{}")
    result = runner.invoke(
        app,
        ["enroll", "--config", str(path), "--coordinator", "http://127.0.0.1:9", "--token", "t"],
    )
    assert result.exit_code == EXIT_FAILURE
    assert "already enrolled" in _one_error_line(result.stderr)
    assert "--force" in result.stderr


def test_run_and_check_refuse_reproducible_dp_noise(tmp_path: Path) -> None:
    """The test-and-benchmark switch that makes DP noise predictable never reaches a
    production agent: `fmtl agent run` (and `check`) refuse it before anything else."""
    path = write_config(tmp_path, extra="[testing]\nreproducible_dp_seed = 1\n")
    for command in ("run", "check"):
        result = runner.invoke(app, [command, "--config", str(path)])
        assert result.exit_code == EXIT_INPUT
        line = _one_error_line(result.stderr)
        assert "testing.reproducible_dp_seed: refused" in line
        assert "predictable" in line


def test_a_training_seed_is_no_longer_a_setting(tmp_path: Path) -> None:
    """`training.seed` used to derive the DP noise and the sampling from a small integer;
    it is refused with the reason, so no agent.toml can make the noise predictable."""
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('device = "cpu"', 'device = "cpu"\nseed = 1'))
    result = runner.invoke(app, ["status", "--config", str(path)])
    assert result.exit_code == EXIT_INPUT
    line = _one_error_line(result.stderr)
    assert (
        "training.seed: no longer a setting: DP noise and sampling never come from a seed" in line
    )


def test_check_says_which_scales_the_institution_uses(tmp_path: Path) -> None:
    """Point 3 of issue 11: `fmtl agent check` names where every quantity that scales a
    per-sample gradient comes from (the example maps public scales for all of them)."""
    from datetime import UTC, datetime

    from agent.config import AgentEnvironment, load_config
    from agent.enrollment import Enrollment
    from agent.identity import ensure_private_dir, generate_identity, save_identity
    from agent.identity import write_private_file as write_private
    from federation.spec import FederationSpec
    from federation.wire import AgentProfile

    from .conftest import EXAMPLE

    path = write_config(tmp_path)
    config = load_config(path, environment=AgentEnvironment(key_passphrase=None))
    spec = FederationSpec.model_validate_json((EXAMPLE / "federation.json").read_text())
    save_identity(config.key_file, generate_identity(), None)
    profile = AgentProfile(
        institution_id=1,
        key_id="1",
        institution="cleveland",
        federation=spec.name,
        tasks_held=tuple(spec.task_names),
        enrolled_at=datetime.now(UTC),
        spec=spec,
        spec_fingerprint=spec.fingerprint(),
    )
    enrollment = Enrollment(
        coordinator_url="http://127.0.0.1:9", profile=profile, stored_at=datetime.now(UTC)
    )
    ensure_private_dir(config.profile_file.parent)
    write_private(config.profile_file, enrollment.model_dump_json().encode())
    result = runner.invoke(app, ["check", "--config", str(path)])
    assert result.exit_code == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert any(
        line.startswith("scales: fixed in the data mapping (public) for 11 features")
        for line in lines
    ), result.stdout
    assert not any("from local data" in line for line in lines)


def _enrolled_at(tmp_path: Path, coordinator: str) -> None:
    """A profile.json as `fmtl agent enroll` leaves it (the example's spec)."""
    from datetime import UTC, datetime

    from agent.enrollment import Enrollment
    from federation.spec import FederationSpec
    from federation.wire import AgentProfile
    from tests.unit.agent.conftest import EXAMPLE

    spec = FederationSpec.model_validate_json((EXAMPLE / "federation.json").read_text())
    profile = AgentProfile(
        institution_id=1,
        key_id="1",
        institution="cleveland",
        federation=spec.name,
        tasks_held=("disease",),
        enrolled_at=datetime.now(UTC),
        spec=spec,
        spec_fingerprint=spec.fingerprint(),
    )
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    enrollment = Enrollment(
        coordinator_url=coordinator, profile=profile, stored_at=profile.enrolled_at
    )
    (state / "profile.json").write_text(enrollment.model_dump_json())


def test_run_refuses_unmasked_rounds_off_loopback(tmp_path: Path) -> None:
    """The opt-in for plain rounds is for one machine: `fmtl agent run` refuses it when the
    coordinator is elsewhere, before it loads the key or talks to anyone."""
    path = write_config(tmp_path)
    text = path.read_text().replace('url = "http://127.0.0.1:9"\n', "")
    path.write_text(
        text.replace("[privacy]\n", "[privacy]\ninsecure_allow_unmasked_rounds = true\n")
    )
    _enrolled_at(tmp_path, "https://fl.example.org")
    result = runner.invoke(app, ["run", "--config", str(path)])
    assert result.exit_code == EXIT_INPUT
    line = _one_error_line(result.stderr)
    assert "privacy.insecure_allow_unmasked_rounds: refused" in line
    assert "not on loopback" in line


def test_run_refuses_an_enrollment_over_plain_http_off_loopback(tmp_path: Path) -> None:
    """A profile enrolled before https was required is not used over plain HTTP."""
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('url = "http://127.0.0.1:9"\n', ""))
    _enrolled_at(tmp_path, "http://fl.example.org")
    result = runner.invoke(app, ["run", "--config", str(path)])
    assert result.exit_code == EXIT_INPUT
    assert "plain http is refused except on loopback" in _one_error_line(result.stderr)


def test_enroll_refuses_plain_http_off_loopback(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = runner.invoke(
        app,
        ["enroll", "--config", str(path), "--coordinator", "http://fl.example.org", "--token", "t"],
    )
    assert result.exit_code == EXIT_FAILURE
    assert "plain http is refused except on loopback" in _one_error_line(result.stderr)
    assert not (tmp_path / "state" / "identity.key").exists()


def test_enroll_needs_the_admins_roster_key(tmp_path: Path) -> None:
    """Without a pinned roster key an agent could not tell a sybil from a peer."""
    path = write_config(tmp_path)
    result = CliRunner(env={"FMTL_AGENT_ROSTER_KEY": ""}).invoke(
        app, ["enroll", "--config", str(path), "--token", "t"]
    )
    assert result.exit_code == EXIT_INPUT
    assert "--roster-key: missing" in _one_error_line(result.stderr)
    bad = runner.invoke(
        app, ["enroll", "--config", str(path), "--token", "t", "--roster-key", "not-hex"]
    )
    assert bad.exit_code == EXIT_FAILURE
    assert "--roster-key: 'not-hex' is not a key fingerprint" in _one_error_line(bad.stderr)
    assert not (tmp_path / "state" / "identity.key").exists()
