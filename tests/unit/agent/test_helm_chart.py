"""The agent's Helm chart lints, renders one unprivileged agent with its secrets from a
Secret, and its agent.toml is one the agent accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from agent.config import AgentEnvironment, load_config

CHART = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "fmtl-agent"
FULL = "hospital-fmtl-agent"


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name="hospital", namespace="fl")
    documents: list[dict[str, Any]] = []
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            documents.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return documents


def _one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents if doc["kind"] == kind]
    return found


def test_chart_lints_without_errors() -> None:
    report = helm.lint(str(CHART))
    assert report["errors"] == []
    assert not [m for m in report["messages"] if m["severity"] >= 3]


def test_one_agent_never_two_with_enrollment_before_it_runs() -> None:
    deployment = _one(_render({"rosterKey": "ab" * 32}), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"][:2] == ["agent", "enroll"]
    assert {"--existing-key", "--skip-if-enrolled"} <= set(init["args"])
    # The admin's roster key fingerprint is pinned at enrollment.
    assert init["args"][init["args"].index("--roster-key") + 1] == "ab" * 32
    (agent,) = pod["containers"]
    assert agent["args"][:2] == ["agent", "run"]
    assert "json" in agent["args"]
    assert pod["terminationGracePeriodSeconds"] > 20  # longer than the shutdown grace


def test_identity_key_and_passphrase_come_from_the_secret() -> None:
    documents = _render({"identity": {"existingSecret": "cleveland-identity"}})
    pod = _one(documents, "Deployment")["spec"]["template"]["spec"]
    identity = next(v for v in pod["volumes"] if v["name"] == "identity")
    assert identity["secret"]["secretName"] == "cleveland-identity"
    assert identity["secret"]["defaultMode"] == 0o400
    for container in [*pod["initContainers"], *pod["containers"]]:
        env = {item["name"]: item for item in container["env"]}
        reference = env["FMTL_AGENT_KEY_PASSPHRASE"]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "cleveland-identity"
        assert all("value" not in item for item in container["env"])  # nothing inline
    config_map = _one(documents, "ConfigMap")
    assert "passphrase" not in config_map["data"]["agent.toml"].split("[identity]")[1].split("[")[0]


def test_every_container_is_unprivileged_and_state_is_a_kept_claim() -> None:
    documents = _render({})
    pod = _one(documents, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in [*pod["initContainers"], *pod["containers"]]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
    claim = _one(documents, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"{FULL}-state"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    policy = _one(documents, "NetworkPolicy")
    assert policy["spec"]["ingress"] == []


def test_rendered_agent_toml_is_accepted_by_the_agent(tmp_path: Path) -> None:
    values = {
        "coordinatorUrl": "https://fl.hospital.example",
        "privacy": {"epsilon": 4.5, "delta": 1e-6, "accountant": "prv"},
        "training": {"device": "cpu"},
    }
    data = _one(_render(values), "ConfigMap")["data"]
    (tmp_path / "mapping.toml").write_text(data["mapping.toml"])
    text = data["agent.toml"].replace("/etc/fmtl/mapping.toml", str(tmp_path / "mapping.toml"))
    (tmp_path / "agent.toml").write_text(text)
    config = load_config(tmp_path / "agent.toml", environment=AgentEnvironment(key_passphrase=None))
    assert config.coordinator.url == "https://fl.hospital.example"
    assert config.privacy.epsilon == 4.5
    assert config.privacy.accountant == "prv"
    assert str(config.key_file) == "/etc/fmtl-identity/identity.key"
    assert str(config.state_dir) == "/var/lib/fmtl-agent"
    assert config.data.features[0] == "age"


@pytest.mark.parametrize(
    "values",
    [
        {"privacy": {"epsilon": 0}},
        {"privacy": {"epsilon": 1, "accountant": "gdp"}},
        {"coordinatorUrl": "fl.example.org"},
        {"identity": {"existingSecret": ""}},
        {"training": {"device": "tpu"}},
        {"data": {"existingClaim": "", "volume": {}}},
    ],
)
def test_invalid_values_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        _render(values)
