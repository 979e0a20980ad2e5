"""Schemathesis over the whole OpenAPI schema of the live coordinator, on loopback.

For every operation, schema-conforming (positive) and schema-violating (negative) requests
are generated, sent as an admin (and, on agent endpoints, correctly signed as an agent so
the handlers behind the signature are reached too). Two properties must hold for each:

- no response is a server error (5xx);
- a rejected request (4xx) changes nothing: the content of every table is the same before
  and after it. (The exceptions: `signature_nonces`, since a nonce is remembered as soon as a
  signature verifies, so that even a request that fails later cannot be replayed; and
  `audit_checkpoints`, which the coordinator's own tick writes, not a request.)

The number of examples is bounded so that the run takes about a minute or two.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from agent.http_signing import SIGNATURE_HEADERS, RequestSigner
from coordinator.schema import metadata
from federation.wire import AGENT_API_PREFIX

from .conftest import AgentIdentity, CoordinatorServer, enroll_over_http

#: Examples per operation and generation mode (and again with real path names filled in).
EXAMPLES = 15
#: Tables a rejected request may still change (see the module docstring).
MAY_CHANGE_ON_REJECTION = frozenset({"signature_nonces", "audit_checkpoints"})


class _AgentSigning(requests.auth.AuthBase):
    """Signs requests to the agent API the way an agent does (enrollment excepted)."""

    def __init__(self, signer: RequestSigner) -> None:
        self.signer = signer

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        url = str(request.url)
        path = requests.utils.urlparse(url).path
        if path.startswith(AGENT_API_PREFIX) and not path.endswith("/enroll"):
            body = request.body or b""
            if isinstance(body, str):
                body = body.encode()
            for name in SIGNATURE_HEADERS:
                request.headers.pop(name, None)
            request.headers.update(self.signer.signature_headers(str(request.method), url, body))
        return request


class _Snapshot:
    """A digest of every row of every table (but those a rejection may touch)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.tables = [t for t in metadata.sorted_tables if t.name not in MAY_CHANGE_ON_REJECTION]

    def take(self) -> dict[str, str]:
        digests = {}
        with self.engine.connect() as connection:
            for table in self.tables:
                order = list(table.primary_key.columns)
                rows = connection.execute(sa.select(table).order_by(*order)).all()
                digests[table.name] = hashlib.sha256(repr(rows).encode()).hexdigest()
        return digests

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture
def snapshot(coordinator_server: CoordinatorServer) -> Iterator[_Snapshot]:
    taker = _Snapshot(coordinator_server.env.settings().resolved_database_url)
    yield taker
    taker.close()


def test_no_server_errors_and_rejected_requests_change_nothing(
    coordinator_server: CoordinatorServer,
    admin_token: str,
    federation_name: str,
    agent_identity: AgentIdentity,
    snapshot: _Snapshot,
) -> None:
    url = coordinator_server.url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    admin = {"Authorization": f"Bearer {admin_token}"}
    spare = requests.post(
        f"{url}/api/v1/tokens", json={"name": "spare", "role": "auditor"}, headers=admin, timeout=10
    )
    assert spare.status_code == 201
    spare_institution = requests.post(
        f"{url}/api/v1/federations/{federation_name}/institutions",
        json={"name": "spare", "tasks": ["disease"]},
        headers=admin,
        timeout=10,
    )
    assert spare_institution.status_code == 201
    # A round the fuzzed agent takes part in, so the round endpoints' handlers are reached
    # (with `number` fixed to it) and not only their 404s.
    for name in ("hungary", "basel"):
        enroll_over_http(url, admin_token, federation_name, name, ["disease"])
    started = requests.post(
        f"{url}/api/v1/federations/{federation_name}/rounds", headers=admin, timeout=30
    )
    assert started.status_code == 201, started.text
    assert started.json()["stage"] == "advertise_keys"
    http = requests.Session()
    http.auth = _AgentSigning(agent_identity.signer)
    failures: list[str] = []
    calls = 0

    def exercise(operation: Any, mode: GenerationMode, fixed: dict[str, Any]) -> None:
        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            nonlocal calls
            before = snapshot.take()
            response = case.call(base_url=url, session=http, headers=admin)
            calls += 1
            case.validate_response(response, checks=[not_a_server_error])
            if 400 <= response.status_code < 500:
                after = snapshot.take()
                changed = sorted(name for name in before if before[name] != after[name])
                if changed:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code} "
                        f"changed {', '.join(changed)}"
                    )

        try:
            run()
        except Unsatisfiable:
            # Only for negative mode on an operation with nothing to get wrong (no parameters,
            # no body): there is no invalid request to make.
            assert mode is GenerationMode.NEGATIVE, f"no examples for {operation.path}"

    for result in schema.get_all_operations():
        operation = result.ok()
        fixed: dict[str, Any] = {}
        if "{token_id}" in operation.path:
            fixed["token_id"] = spare.json()["id"]  # never the admin token we fuzz with
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            exercise(operation, mode, fixed)
        if "{number}" in operation.path and operation.path.startswith(AGENT_API_PREFIX):
            exercise(operation, GenerationMode.POSITIVE, {**fixed, "number": 1})
            exercise(operation, GenerationMode.NEGATIVE, {**fixed, "number": 1})
        if "{federation}" in operation.path:
            named = {**fixed, "federation": federation_name}
            if "{institution}" in operation.path:
                named["institution"] = "spare"  # may be revoked; the agent must stay enrolled
            exercise(operation, GenerationMode.POSITIVE, named)

    assert not failures, "\n".join(failures)
    assert calls >= 2 * EXAMPLES
