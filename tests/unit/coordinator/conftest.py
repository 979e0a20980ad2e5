"""Coordinator unit-test fixtures: a fresh SQLite coordinator per test, no services.

`enrolled_agent` goes through the real invite and enroll services, so tests that need an
agent get one exactly as production makes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.orm import Session

import migrations
from agent.http_signing import RequestSigner, enrollment_proof
from coordinator.app import create_app
from coordinator.audit.service import Actor, ActorKind
from coordinator.auth import service as tokens
from coordinator.auth.models import Role
from coordinator.federations.models import Federation
from coordinator.federations.service import create_federation
from coordinator.institutions import service as institutions
from coordinator.institutions.models import Institution
from coordinator.runtime import Runtime
from coordinator.settings import Settings
from federation.spec import FederationSpec, MLPEncoderSpec, ModelSpec, TaskKind, TaskSpec
from federation.wire import EnrollmentRequest

TEST_ACTOR = Actor(ActorKind.CLI, "tests")
PEPPER = "unit-test-pepper-0123456789"


def heart_spec(name: str = "heart") -> FederationSpec:
    return FederationSpec(
        name=name,
        tasks=(
            TaskSpec(name="disease", kind=TaskKind.BINARY),
            TaskSpec(name="severity", kind=TaskKind.MULTICLASS, n_classes=5),
            TaskSpec(name="max_heart_rate", kind=TaskKind.REGRESSION),
        ),
        model=ModelSpec(encoder=MLPEncoderSpec(input_dim=13)),
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "var", token_pepper=SecretStr(PEPPER))


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    runtime = Runtime.from_settings(settings)
    yield runtime
    runtime.db.dispose()


@pytest.fixture
def session(runtime: Runtime) -> Iterator[Session]:
    with runtime.db.scope() as session:
        yield session


@pytest.fixture
def federation(session: Session) -> Federation:
    return create_federation(session, heart_spec(), actor=TEST_ACTOR)


@dataclass
class EnrolledAgent:
    institution: Institution
    private_key: Ed25519PrivateKey
    signer: RequestSigner


def enroll_agent(
    session: Session, settings: Settings, federation: str, name: str, tasks: tuple[str, ...]
) -> EnrolledAgent:
    from datetime import timedelta

    invitation = institutions.invite(
        session,
        settings.pepper,
        federation_name=federation,
        name=name,
        tasks=tasks,
        ttl=timedelta(hours=1),
        actor=TEST_ACTOR,
    )
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    institution = institutions.enroll(
        session,
        settings.pepper,
        EnrollmentRequest(
            token=invitation.token,
            public_key=public,
            proof=enrollment_proof(key, invitation.token),
        ),
    )
    return EnrolledAgent(institution, key, RequestSigner(key, institution.key_id))


@pytest.fixture
def enrolled_agent(session: Session, settings: Settings, federation: Federation) -> EnrolledAgent:
    return enroll_agent(session, settings, federation.name, "cleveland", ("disease", "severity"))


@pytest.fixture
def app(settings: Settings, runtime: Runtime) -> FastAPI:
    return create_app(settings, start_embedded_worker=False)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def bearer(session: Session, settings: Settings, role: Role) -> dict[str, str]:
    """Authorization headers of a fresh token with `role`."""
    from datetime import timedelta

    from coordinator.db import utcnow

    issued = tokens.create_token(
        session,
        settings.pepper,
        name=f"test-{role.value}",
        role=role,
        expires_at=utcnow() + timedelta(days=1),
        actor=TEST_ACTOR,
    )
    return {"Authorization": f"Bearer {issued.secret}"}


@pytest.fixture
def admin(session: Session, settings: Settings) -> dict[str, str]:
    return bearer(session, settings, Role.ADMIN)
