"""Every endpoint x every kind of caller, against the live coordinator: only what an endpoint
declares gets through.

The endpoints come from the application itself (`coordinator.api.deps.endpoints`, which
reads the access each route declares), checked against the served OpenAPI document, so a
new endpoint is in this matrix the moment it exists. Callers: nobody, a garbage token, each
role, a revoked and an expired admin token, a correctly signed agent, an agent signature that
is too old, a replayed agent request, and a revoked institution's signature.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import httpx
import sqlalchemy as sa

from agent.http_signing import RequestSigner
from coordinator.api.deps import AccessKind, Endpoint, endpoints
from coordinator.app import create_app
from coordinator.audit.service import Actor, ActorKind
from coordinator.auth import service as tokens
from coordinator.auth.models import ApiToken, Role
from coordinator.db import Database, utcnow

from .conftest import AgentIdentity, CoordinatorServer, enroll_over_http

ADMIN_ONLY_SIDE_EFFECT_FREE = "spare"  # an institution the matrix may revoke


@dataclass(frozen=True)
class Caller:
    name: str
    #: Builds the request headers for (method, absolute url, body).
    headers: Callable[[str, str, bytes], dict[str, str]]
    role: Role | None = None  # the role of a valid bearer token
    agent: bool = False  # a valid, fresh agent signature


def _bearer(token: str) -> Callable[[str, str, bytes], dict[str, str]]:
    return lambda method, url, body: {"Authorization": f"Bearer {token}"}


def _signed(
    signer: RequestSigner, *, age_s: int = 0
) -> Callable[[str, str, bytes], dict[str, str]]:
    def headers(method: str, url: str, body: bytes) -> dict[str, str]:
        created = utcnow() - timedelta(seconds=age_s) if age_s else None
        return signer.signature_headers(method, url, body, created=created)

    return headers


def _replayed(signer: RequestSigner) -> Callable[[str, str, bytes], dict[str, str]]:
    def headers(method: str, url: str, body: bytes) -> dict[str, str]:
        signed = signer.signature_headers(method, url, body)
        httpx.request(method, url, content=body, headers=signed, timeout=10)  # first use
        return signed  # the replay

    return headers


def _token_in_db(server: CoordinatorServer, role: Role, *, expired: bool) -> str:
    settings = server.env.settings()
    database = Database(settings.resolved_database_url)
    with database.scope() as session:
        issued = tokens.create_token(
            session,
            settings.pepper,
            name=f"matrix-{role.value}",
            role=role,
            expires_at=utcnow() + timedelta(days=1),
            actor=Actor(ActorKind.CLI, "matrix"),
        )
        if expired:
            session.execute(
                sa.update(ApiToken)
                .where(ApiToken.id == issued.record.id)
                .values(expires_at=utcnow() - timedelta(minutes=1))
            )
            session.commit()
    database.dispose()
    return issued.secret


def _issue(server: CoordinatorServer, admin: str, role: Role) -> tuple[int, str]:
    made = httpx.post(
        f"{server.url}/api/v1/tokens",
        json={"name": f"matrix {role.value}", "role": role.value},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    )
    assert made.status_code == 201, made.text
    return int(made.json()["id"]), str(made.json()["token"])


def _body(endpoint: Endpoint, counter: int) -> bytes:
    """A well-formed body for each POST, so that only authorization can refuse the request."""
    import json

    path = endpoint.path
    if path == "/api/v1/tokens":
        document: object = {"name": f"m{counter}", "role": "auditor"}
    elif path == "/api/v1/federations":
        document = {
            "name": f"matrix_{counter}",
            "tasks": [{"name": "t", "kind": "binary"}],
            "model": {"encoder": {"kind": "mlp", "input_dim": 3}},
        }
    elif path.endswith("/institutions"):
        document = {"name": f"matrix_{counter}", "tasks": ["disease"]}
    elif path.endswith("/invitation"):
        document = {}
    elif path.endswith("/decline"):
        document = {"reason": "budget"}
    elif path.endswith("/report"):
        document = {"tasks": {}}
    elif path.endswith("/keys") or path.endswith("/shares"):
        document = {"advert": "AA"} if path.endswith("/keys") else {"message": "AA"}
    elif path.endswith("/consistency"):
        document = {"signature": "AA"}
    elif path.endswith("/unmask"):
        document = {"response": "AA"}
    elif path.endswith("/enroll"):
        document = {"token": "fmtl_enroll_" + "x" * 43, "public_key": "A" * 43, "proof": "A" * 86}
    else:
        return b""
    return json.dumps(document).encode()


def _url(server: CoordinatorServer, endpoint: Endpoint, values: dict[str, str]) -> str:
    def fill(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return server.url + re.sub(r"\{(\w+)\}", fill, endpoint.path)


def _admitted(endpoint: Endpoint, caller: Caller) -> bool:
    access = endpoint.access
    if access.kind is AccessKind.PUBLIC:
        return True
    if access.kind is AccessKind.PEOPLE:
        return caller.role is not None and caller.role in access.roles
    if access.kind is AccessKind.AGENT:
        return caller.agent
    return False  # enrollment with a bogus one-time token: nobody


def test_only_the_declared_callers_get_through(
    coordinator_server: CoordinatorServer,
    admin_token: str,
    federation_name: str,
    agent_identity: AgentIdentity,
) -> None:
    server = coordinator_server
    app_endpoints = endpoints(create_app(server.env.settings(), start_embedded_worker=False))
    served = httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    served_operations = {(method.upper(), path) for path, item in served.items() for method in item}
    assert {(e.method, e.path) for e in app_endpoints} == served_operations

    revoked_agent = enroll_over_http(
        server.url, admin_token, federation_name, "revoked", ["disease"]
    )
    revoked = httpx.post(
        f"{server.url}/api/v1/federations/{federation_name}/institutions/revoked/revoke",
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert revoked.status_code == 200
    spare_invited = httpx.post(
        f"{server.url}/api/v1/federations/{federation_name}/institutions",
        json={"name": ADMIN_ONLY_SIDE_EFFECT_FREE, "tasks": ["disease"]},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert spare_invited.status_code == 201
    spare_token_id, _ = _issue(server, admin_token, Role.AUDITOR)
    revoked_token_id, revoked_token = _issue(server, admin_token, Role.ADMIN)
    assert httpx.post(
        f"{server.url}/api/v1/tokens/{revoked_token_id}/revoke",
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    ).is_success

    callers = [
        Caller("nobody", lambda m, u, b: {}),
        Caller("garbage bearer", _bearer("fmtl_api_not-a-token")),
        Caller("admin", _bearer(admin_token), role=Role.ADMIN),
        Caller(
            "operator", _bearer(_issue(server, admin_token, Role.OPERATOR)[1]), role=Role.OPERATOR
        ),
        Caller("auditor", _bearer(_issue(server, admin_token, Role.AUDITOR)[1]), role=Role.AUDITOR),
        Caller("revoked admin token", _bearer(revoked_token)),
        Caller("expired admin token", _bearer(_token_in_db(server, Role.ADMIN, expired=True))),
        Caller("signed agent", _signed(agent_identity.signer), agent=True),
        Caller("stale agent signature", _signed(agent_identity.signer, age_s=600)),
        Caller("replayed agent request", _replayed(agent_identity.signer)),
        Caller("revoked institution", _signed(revoked_agent.signer)),
    ]
    values = {
        "federation": federation_name,
        "institution": ADMIN_ONLY_SIDE_EFFECT_FREE,
        "token_id": str(spare_token_id),
        "number": "1",
        "version": "0",
    }
    wrong: list[str] = []
    counter = 0
    for endpoint in app_endpoints:
        for caller in callers:
            counter += 1
            url = _url(server, endpoint, values)
            body = _body(endpoint, counter)
            headers = caller.headers(endpoint.method, url, body)
            if body:
                headers["Content-Type"] = "application/json"
            response = httpx.request(
                endpoint.method, url, content=body, headers=headers, timeout=30
            )
            refused = response.status_code in (401, 403)
            if _admitted(endpoint, caller) == refused:
                wrong.append(
                    f"{endpoint.method} {endpoint.path} as {caller.name}: {response.status_code} "
                    f"(declared {endpoint.access.kind.value} "
                    f"{sorted(role.value for role in endpoint.access.roles)})"
                )
            elif refused:
                people_endpoint = endpoint.access.kind is AccessKind.PEOPLE
                expected = 403 if people_endpoint and caller.role is not None else 401
                if response.status_code != expected:
                    wrong.append(
                        f"{endpoint.method} {endpoint.path} as {caller.name}: "
                        f"{response.status_code}, expected {expected}"
                    )
                assert response.headers["content-type"] == "application/problem+json"
    assert not wrong, "\n".join(wrong)
    assert counter == len(app_endpoints) * len(callers)
