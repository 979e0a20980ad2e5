"""Publishing the signed roster: only a valid next version, signed by the same admin key."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from agent.http_signing import SignatureAuth
from coordinator.federations.models import Federation
from coordinator.settings import Settings
from federation.roster import SignedRoster
from fmtl.admin.client import AdminClient
from fmtl.admin.roster import draft_next, next_roster, publish_next, sign_roster

from .conftest import enroll_agent

PATH = "/api/v1/federations/heart/roster"


def _admin_client(client: TestClient, admin: dict[str, str]) -> AdminClient:
    return AdminClient("http://testserver", admin["Authorization"][7:], http=client)


def _put(client: TestClient, admin: dict[str, str], signed: SignedRoster) -> tuple[int, str]:
    answer = client.put(PATH, json=signed.model_dump(mode="json"), headers=admin)
    return answer.status_code, answer.text


def test_the_admin_publishes_versions_agents_read_the_newest(
    client: TestClient,
    admin: dict[str, str],
    session: Session,
    settings: Settings,
    federation: Federation,
) -> None:
    first = enroll_agent(session, settings, "heart", "cleveland", ("disease",))
    key = Ed25519PrivateKey.generate()
    with _admin_client(client, admin) as api:
        assert publish_next(api, "heart", key) == 1
        enroll_agent(session, settings, "heart", "hungarian", ("disease",))
        draft, current = draft_next(api, "heart")
        assert current is not None
        assert [m.institution for m in draft.members] == ["cleveland", "hungarian"]
        assert publish_next(api, "heart", key) == 2
    # The agent reads the newest over its signed API, exactly as the admin signed it.
    answer = client.get("/agent/v1/roster", auth=SignatureAuth(first.signer))
    assert answer.status_code == 200, answer.text
    signed = SignedRoster.model_validate_json(answer.content)
    assert signed.roster.version == 2
    assert signed.admin_key == key.public_key().public_bytes_raw()


def test_a_roster_that_does_not_hold_is_refused_and_changes_nothing(
    client: TestClient,
    admin: dict[str, str],
    session: Session,
    settings: Settings,
    federation: Federation,
) -> None:
    agent = enroll_agent(session, settings, "heart", "cleveland", ("disease",))
    public = base64.urlsafe_b64encode(agent.institution.public_key or b"").decode()
    key = Ed25519PrivateKey.generate()
    good = sign_roster(next_roster("heart", 1, {"cleveland": public}), key)

    forged = SignedRoster(  # another key claims the admin's signature
        roster=good.roster,
        admin_key=Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
        signature=good.signature,
    )
    status, text = _put(client, admin, forged)
    assert status == 422, text
    assert "signature does not verify" in text

    sybil = base64.urlsafe_b64encode(
        Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    ).decode()
    substituted = sign_roster(next_roster("heart", 1, {"cleveland": sybil}), key)
    status, text = _put(client, admin, substituted)
    assert status == 422, text
    assert "'cleveland' is listed with another identity key" in text

    skipped = sign_roster(next_roster("heart", 2, {"cleveland": public}), key)
    status, text = _put(client, admin, skipped)
    assert status == 409, text
    assert "the next roster version is 1" in text

    assert _put(client, admin, good)[0] == 201
    other_admin = Ed25519PrivateKey.generate()
    status, text = _put(
        client, admin, sign_roster(next_roster("heart", 2, {"cleveland": public}), other_admin)
    )
    assert status == 422, text
    assert "another admin key" in text
    # Only people with the admin role publish.
    from coordinator.auth.models import Role

    from .conftest import bearer

    auditor = bearer(session, settings, Role.AUDITOR)
    assert _put(client, auditor, good)[0] == 403
    assert client.get(PATH, headers=auditor).status_code == 200
