"""The signed roster as the agent checks it: the pinned admin key, never older, no sybils."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.coordinator_client import Rejected
from agent.roster import SignedRosterCheck
from federation.roster import SignedRoster, normalise_fingerprint, roster_changes
from fmtl.admin.roster import next_roster, public_fingerprint, sign_roster
from privacy.secagg import IdentityPublicKey, RoundConfig, RoundContext, RoundMember

FEDERATION = "heart"


class Memo:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def remembered(self, key: str) -> dict[str, Any] | None:
        return self.values.get(key)

    def remember(self, key: str, value: dict[str, Any]) -> None:
        self.values[key] = dict(value)


def _b64(key: Ed25519PrivateKey) -> str:
    return base64.urlsafe_b64encode(key.public_key().public_bytes_raw()).decode().rstrip("=")


class Federation:
    def __init__(self, n: int = 4) -> None:
        self.admin = Ed25519PrivateKey.generate()
        self.keys = {f"site_{i}": Ed25519PrivateKey.generate() for i in range(n)}
        self.published: SignedRoster | None = None

    def publish(self, version: int, names: list[str] | None = None) -> SignedRoster:
        members = {name: _b64(self.keys[name]) for name in names or list(self.keys)}
        roster = next_roster(FEDERATION, version, members, now=datetime.now(UTC))
        self.published = sign_roster(roster, self.admin)
        return self.published

    def fetch(self) -> SignedRoster:
        if self.published is None:
            raise Rejected(404, {"detail": "no signed roster"})
        return self.published

    def config(
        self, keys: dict[str, Ed25519PrivateKey] | None = None, number: int = 1
    ) -> RoundConfig:
        members = tuple(
            RoundMember(i + 1, name, IdentityPublicKey(key.public_key().public_bytes_raw()))
            for i, (name, key) in enumerate((keys or self.keys).items())
        )
        return RoundConfig(RoundContext(FEDERATION, number), members, 3, 10)

    def check(self, memo: Memo | None = None) -> SignedRosterCheck:
        return SignedRosterCheck(
            public_fingerprint(self.admin), FEDERATION, self.fetch, memo or Memo()
        )


def test_every_member_on_the_roster_signed_by_the_pinned_key_passes() -> None:
    federation = Federation()
    federation.publish(1)
    assert federation.check().check_members(federation.config()) is None


def test_a_sybil_is_refused() -> None:
    federation = Federation()
    federation.publish(1)
    keys = dict(federation.keys)
    keys["site_2"] = Ed25519PrivateKey.generate()  # the coordinator's own key
    problem = federation.check().check_members(federation.config(keys))
    assert problem == "participant 3 ('site_2') is not on the signed roster (version 1)"


def test_a_member_under_another_name_is_refused() -> None:
    federation = Federation()
    federation.publish(1)
    keys = {("site_9" if k == "site_1" else k): v for k, v in federation.keys.items()}
    problem = federation.check().check_members(federation.config(keys))
    assert problem is not None
    assert "'site_9' in the round, 'site_1' on the signed roster" in problem


def test_a_roster_signed_by_another_key_is_refused() -> None:
    federation = Federation()
    federation.publish(1)
    impostor = Federation()
    impostor.keys = federation.keys
    impostor.publish(1)  # the coordinator signs a roster with a key of its own
    check = SignedRosterCheck(
        public_fingerprint(federation.admin), FEDERATION, impostor.fetch, Memo()
    )
    problem = check.check_members(federation.config())
    assert problem is not None
    assert "the pinned admin key is" in problem


def test_a_tampered_roster_is_refused() -> None:
    federation = Federation()
    signed = federation.publish(1, ["site_0", "site_1", "site_2"])
    sybil = Ed25519PrivateKey.generate()
    members = {
        m.institution: base64.urlsafe_b64encode(m.public_key).decode()
        for m in signed.roster.members
    }
    members["site_3"] = _b64(sybil)
    forged = next_roster(FEDERATION, 1, members, now=signed.roster.issued_at)
    federation.published = SignedRoster(
        roster=forged, admin_key=signed.admin_key, signature=signed.signature
    )
    problem = federation.check().check_members(federation.config())
    assert problem == "the roster's signature does not verify with the pinned key"


def test_no_roster_yet_is_refused_with_what_to_do() -> None:
    federation = Federation()
    problem = federation.check().check_members(federation.config())
    assert problem is not None
    assert "fmtl admin publish-roster" in problem


def test_a_newer_version_is_taken_an_older_one_never() -> None:
    federation = Federation()
    memo = Memo()
    federation.publish(1, ["site_0", "site_1", "site_2"])
    check = federation.check(memo)
    assert check.check_members(federation.config()) is not None  # site_3 not listed yet
    federation.publish(2)
    assert check.check_members(federation.config(number=2)) is None
    assert check.held is not None
    assert check.held.version == 2
    # The coordinator goes back to version 1 (where site_3 was missing): refused, and a
    # restarted agent (the same ledger) still holds version 2.
    federation.publish(1, ["site_0", "site_1", "site_2"])
    restarted = federation.check(memo)
    problem = restarted.check_members(federation.config(number=3))
    assert problem == "the coordinator shows roster version 1, older than version 2 held"


def test_changes_are_one_line_each() -> None:
    federation = Federation()
    old = federation.publish(1, ["site_0", "site_1"]).roster
    new = federation.publish(2, ["site_1", "site_2"]).roster
    lines = roster_changes(old, new)
    assert lines[0].startswith("+ site_2 (key ")
    assert lines[1] == "- site_0"


@pytest.mark.parametrize("text", ["AB" * 32, ":".join(["abcd"] * 16), " ".join(["ab12"] * 16)])
def test_fingerprints_are_read_as_people_type_them(text: str) -> None:
    assert normalise_fingerprint(text) == text.replace(":", "").replace(" ", "").lower()
