"""Console unit-test fixtures: the real coordinator app on SQLite, seeded, and signed-in clients."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from coordinator.auth import service as tokens
from coordinator.auth.models import Role
from coordinator.federations.models import Federation
from coordinator.settings import Settings
from tests.console_seed import Seeded, seed
from tests.unit.coordinator.conftest import (  # noqa: F401 - fixtures, re-exported
    TEST_ACTOR,
    app,
    federation,
    runtime,
    session,
    settings,
)


@pytest.fixture
def seeded(session: Session, federation: Federation) -> Seeded:  # noqa: F811
    return seed(session, federation, institutions=5, rounds=6)


@pytest.fixture
def issue(session: Session, settings: Settings) -> Callable[[Role], tuple[int, str]]:  # noqa: F811
    def make(role: Role) -> tuple[int, str]:
        issued = tokens.create_token(
            session,
            settings.pepper,
            name=f"{role.value}-person",
            role=role,
            expires_at=None,
            actor=TEST_ACTOR,
        )
        return issued.record.id, issued.secret

    return make


class Browser:
    """A TestClient signed in to the console, with the CSRF token of its pages."""

    def __init__(self, app: FastAPI, token: str) -> None:  # noqa: F811
        self.client = TestClient(app, base_url="http://testserver")
        signed = self.client.post("/console/sign-in", data={"token": token}, follow_redirects=False)
        assert signed.status_code == 303, signed.text
        page = self.client.get("/console/federations")
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert found is not None
        self.csrf = found.group(1)
        self.set_cookie = signed.headers["set-cookie"]


@pytest.fixture
def browser(app: FastAPI, issue: Callable[[Role], tuple[int, str]]) -> Callable[[Role], Browser]:  # noqa: F811
    return lambda role: Browser(app, issue(role)[1])
