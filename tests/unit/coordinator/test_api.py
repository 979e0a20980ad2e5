"""The HTTP API in-process: problem documents, roles, the body limit, the agent endpoints."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from agent.http_signing import RequestSigner, SignatureAuth, enrollment_proof
from coordinator.api.deps import AccessKind, endpoints
from coordinator.auth.models import Role
from coordinator.settings import Settings

from .conftest import EnrolledAgent, bearer, heart_spec

SPEC = json.loads(heart_spec().model_dump_json())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _problem(response: object, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert str(body["type"]).startswith("urn:fmtl:problem:")
    assert body["detail"]
    return body


def test_every_endpoint_declares_who_may_call_it(app: FastAPI) -> None:
    declared = endpoints(app)  # raises if any operation declares none, or two
    public = {(e.method, e.path) for e in declared if e.access.kind is AccessKind.PUBLIC}
    assert public == {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        # the console's style sheet and script, its front door and its sign-in form
        ("GET", "/console/static/{name}"),
        ("GET", "/console"),
        ("GET", "/console/sign-in"),
    }
    people = (AccessKind.PEOPLE, AccessKind.CONSOLE)
    assert all(e.access.roles for e in declared if e.access.kind in people)


def test_admin_creates_and_everyone_reads_a_federation(
    client: TestClient, session: Session, settings: Settings, admin: dict[str, str]
) -> None:
    created = client.post("/api/v1/federations", json=SPEC, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["fingerprint"] == heart_spec().fingerprint()
    for role in Role:
        listed = client.get("/api/v1/federations", headers=bearer(session, settings, role))
        assert [item["name"] for item in listed.json()] == ["heart"]
    _problem(client.post("/api/v1/federations", json=SPEC, headers=admin), 409)


def test_roles_are_enforced_with_401_and_403(
    client: TestClient, session: Session, settings: Settings
) -> None:
    body = _problem(client.post("/api/v1/federations", json=SPEC), 401)
    assert "API token" in str(body["detail"])
    operator = bearer(session, settings, Role.OPERATOR)
    body = _problem(client.post("/api/v1/federations", json=SPEC, headers=operator), 403)
    assert "operator role may not" in str(body["detail"])
    auditor = bearer(session, settings, Role.AUDITOR)
    assert client.get("/api/v1/audit/verify", headers=auditor).status_code == 200
    _problem(client.get("/api/v1/audit/verify", headers=operator), 403)
    _problem(client.get("/api/v1/me", headers={"Authorization": "Bearer fmtl_api_nope"}), 401)


def test_validation_errors_name_the_field_but_never_echo_values(
    client: TestClient, admin: dict[str, str]
) -> None:
    secretish = "fmtl_enroll_" + "s" * 43
    response = client.post(
        "/agent/v1/enroll", json={"token": secretish, "public_key": "!!", "proof": "AAAA"}
    )
    body = _problem(response, 422)
    assert secretish not in response.text
    locations = [issue["loc"] for issue in body["errors"]]  # type: ignore[union-attr]
    assert ["body", "public_key"] in locations


def test_unknown_things_are_404_problems(client: TestClient, admin: dict[str, str]) -> None:
    _problem(client.get("/api/v1/federations/nowhere", headers=admin), 404)
    _problem(client.get("/no/such/path"), 404)
    _problem(client.delete("/api/v1/federations", headers=admin), 405)


def test_oversized_bodies_are_refused_before_anything_happens(
    client: TestClient, settings: Settings, admin: dict[str, str]
) -> None:
    huge = {"name": "x", "description": "x" * (settings.max_body_bytes + 1)}
    _problem(client.post("/api/v1/federations", json=huge, headers=admin), 413)

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(settings.max_body_bytes // 4096 + 2):
            yield b" " * 4096

    streamed = client.post(
        "/api/v1/federations",
        content=chunks(),
        headers={**admin, "content-type": "application/json"},
    )
    _problem(streamed, 413)
    assert client.get("/api/v1/federations", headers=admin).json() == []


def test_invite_then_enroll_then_signed_profile_over_http(
    client: TestClient, admin: dict[str, str]
) -> None:
    assert client.post("/api/v1/federations", json=SPEC, headers=admin).status_code == 201
    invited = client.post(
        "/api/v1/federations/heart/institutions",
        json={"name": "hungarian", "tasks": ["disease", "max_heart_rate"]},
        headers=admin,
    )
    assert invited.status_code == 201, invited.text
    token = invited.json()["enrollment_token"]
    key = Ed25519PrivateKey.generate()
    enrollment = {
        "token": token,
        "public_key": _b64(key.public_key().public_bytes_raw()),
        "proof": _b64(enrollment_proof(key, token)),
    }
    enrolled = client.post("/agent/v1/enroll", json=enrollment)
    assert enrolled.status_code == 201, enrolled.text
    profile = enrolled.json()
    assert profile["tasks_held"] == ["disease", "max_heart_rate"]
    assert profile["spec_fingerprint"] == heart_spec().fingerprint()
    _problem(client.post("/agent/v1/enroll", json=enrollment), 409)  # used token

    signer = RequestSigner(key, profile["key_id"])
    me = client.get("/agent/v1/me", auth=SignatureAuth(signer))
    assert me.status_code == 200, me.text
    assert me.json()["institution"] == "hungarian"
    listed = client.get("/api/v1/federations/heart/institutions", headers=admin).json()
    assert listed[0]["state"] == "enrolled"
    assert listed[0]["key_fingerprint"]


def test_agent_endpoints_refuse_unsigned_replayed_and_bearer_requests(
    client: TestClient, enrolled_agent: EnrolledAgent, admin: dict[str, str]
) -> None:
    _problem(client.get("/agent/v1/me"), 401)
    _problem(client.get("/agent/v1/me", headers=admin), 401)
    headers = enrolled_agent.signer.signature_headers("GET", "http://testserver/agent/v1/me", b"")
    assert client.get("/agent/v1/me", headers=headers).status_code == 200
    replay = _problem(client.get("/agent/v1/me", headers=headers), 401)
    assert replay["type"] == "urn:fmtl:problem:replay-detected"


def test_tokens_are_issued_listed_and_revoked_by_admins(
    client: TestClient, admin: dict[str, str]
) -> None:
    issued = client.post(
        "/api/v1/tokens", json={"name": "auditor one", "role": "auditor"}, headers=admin
    )
    assert issued.status_code == 201, issued.text
    secret = issued.json()["token"]
    auditor = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/me", headers=auditor).json()["role"] == "auditor"
    listed = client.get("/api/v1/tokens", headers=admin)
    assert secret not in listed.text
    revoked = client.post(f"/api/v1/tokens/{issued.json()['id']}/revoke", headers=admin)
    assert revoked.status_code == 200
    _problem(client.get("/api/v1/me", headers=auditor), 401)


def test_operations_endpoints(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    # Without the lifespan's embedded worker the broker is reported down: not ready.
    assert ready.status_code == 503
    assert ready.json()["database"] == "ok"
    metrics = client.get("/metrics")
    assert 'fmtl_http_requests_total{method="GET",route="/healthz",status="200"}' in metrics.text
    assert client.get("/docs").status_code == 200
    assert "/agent/v1/enroll" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.AUDITOR])
def test_non_admins_cannot_mint_tokens(
    client: TestClient, session: Session, settings: Settings, role: Role
) -> None:
    headers = bearer(session, settings, role)
    _problem(
        client.post("/api/v1/tokens", json={"name": "x", "role": "admin"}, headers=headers), 403
    )
