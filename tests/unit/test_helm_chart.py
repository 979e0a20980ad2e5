"""The Helm chart lints, renders valid manifests, and keeps the security settings operators rely on.

Rendering uses Helm's own Go SDK (through helm-python-sdk), so what is checked here is what
`helm install` would apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "fmtl-coordinator"
RELEASE = "fl"
FULL = "fl-fmtl-coordinator"


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace="prod")
    documents: list[dict[str, Any]] = []
    for path, text in manifests.items():
        if not path.endswith(".yaml"):
            continue
        documents.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return documents


def _kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == kind}


def _containers(documents: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in documents:
        if doc["kind"] in {"Deployment", "Job"}:
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc["metadata"]["name"], container


def test_chart_lints_without_errors() -> None:
    report = helm.lint(str(CHART))
    assert report["errors"] == []
    assert not [m for m in report["messages"] if m["severity"] >= 3]


def test_default_render_has_api_worker_single_beat_and_migration_hook() -> None:
    documents = _render({})
    deployments = _kind(documents, "Deployment")
    assert set(deployments) == {
        f"{FULL}-api",
        f"{FULL}-worker",
        f"{FULL}-beat",
    }
    assert deployments[f"{FULL}-beat"]["spec"]["replicas"] == 1
    assert deployments[f"{FULL}-beat"]["spec"]["strategy"]["type"] == "Recreate"
    job = next(iter(_kind(documents, "Job").values()))
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["coordinator", "migrate"]
    api = deployments[f"{FULL}-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_every_container_runs_unprivileged_with_secrets_from_a_secret() -> None:
    documents = _render({"existingSecret": "coordinator-secrets"})
    seen = 0
    for _name, container in _containers(documents):
        seen += 1
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert container["envFrom"] == [{"secretRef": {"name": "coordinator-secrets"}}]
        plain = {item["name"] for item in container.get("env", [])}
        assert not plain & {
            "FMTL_DATABASE_URL",
            "FMTL_BROKER_URL",
            "FMTL_TOKEN_PEPPER",
            "FMTL_SIGNING_KEY",
        }
    assert seen == 4
    for doc in documents:
        if doc["kind"] in {"Deployment", "Job"}:
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["automountServiceAccountToken"] is False


def test_api_and_workers_share_the_blob_volume() -> None:
    documents = _render({})
    claims = {
        doc["metadata"]["name"]: {
            volume["persistentVolumeClaim"]["claimName"]
            for volume in doc["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in volume
        }
        for doc in documents
        if doc["kind"] == "Deployment"
    }
    assert claims[f"{FULL}-api"] == claims[f"{FULL}-worker"] == {f"{FULL}-blobs"}
    pvc = _kind(documents, "PersistentVolumeClaim")[f"{FULL}-blobs"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_blobs_in_an_s3_bucket_need_no_shared_volume() -> None:
    documents = _render(
        {"blobs": {"s3": {"url": "s3://fl-blobs/prod", "endpointUrl": "http://minio:9000"}}}
    )
    assert "PersistentVolumeClaim" not in {doc["kind"] for doc in documents}
    for _name, container in _containers(documents):
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        assert env["FMTL_BLOB_URL"] == "s3://fl-blobs/prod"
        assert env["FMTL_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert "FMTL_BLOB_DIR" not in env
        assert "FMTL_S3_SECRET_ACCESS_KEY" not in env  # from the secret only
        assert "blobs" not in {m["name"] for m in container["volumeMounts"]}


def test_ingress_terminates_tls_when_enabled() -> None:
    documents = _render({"ingress": {"enabled": True, "host": "fl.hospital.example"}})
    ingress = _kind(documents, "Ingress")[FULL]
    assert ingress["spec"]["tls"][0]["hosts"] == ["fl.hospital.example"]
    assert ingress["spec"]["rules"][0]["host"] == "fl.hospital.example"


def test_autoscaled_workers_get_an_hpa_and_no_fixed_replicas() -> None:
    documents = _render({"worker": {"autoscaling": {"enabled": True}}})
    assert f"{FULL}-worker" in _kind(documents, "HorizontalPodAutoscaler")
    assert "replicas" not in _kind(documents, "Deployment")[f"{FULL}-worker"]["spec"]


@pytest.mark.parametrize(
    "values",
    [
        {"api": {"replicas": 0}},
        {"env": {"DATABASE_URL": "x"}},
        {"blobs": {"size": "lots"}},
        {"blobs": {"s3": {"url": "/var/blobs"}}},
        {"existingSecret": ""},
    ],
)
def test_invalid_values_are_refused_by_the_schema(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        _render(values)
