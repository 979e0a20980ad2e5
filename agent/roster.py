"""The signed roster, checked by the agent: no peer the federation's admin did not sign for.

The institution pinned the fingerprint of the federation admin's roster key at enrollment
(`fmtl agent enroll --roster-key`, kept in profile.json, shown by `fmtl agent status`).
For each round, `SignedRosterCheck` fetches the newest roster the coordinator relays and
takes it only if it is signed by the pinned key, names this federation, and is not older
than the version this agent already holds (it never goes back; a newer version is logged
with who was added and removed, and kept in the ledger). Then every participant of the
round must be on it with exactly its identity key and name: a key the admin did not sign
for is a sybil, and the round is refused (agent.round_policy).

The roster's policy (federation/roster.py): the admin publishes version v+1 for every
change; nothing but the pinned key can sign one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.coordinator_client import Rejected
from agent.logging import event, get_logger
from federation.roster import Roster, SignedRoster, roster_changes
from privacy.secagg import RoundConfig

#: The ledger memo holding the newest roster this agent verified (its signed JSON).
ROSTER_MEMO: Final = "signed_roster"

_log = get_logger("roster")


class Memory(Protocol):
    """Where the agent keeps small JSON values (the ledger's memos)."""

    def remembered(self, key: str) -> dict[str, Any] | None: ...

    def remember(self, key: str, value: dict[str, Any]) -> None: ...


class RosterProblem(Exception):
    """A roster this agent cannot take (why, in one line)."""


def verify(signed: SignedRoster, pinned: str, federation: str) -> Roster:
    """The roster, if signed by the pinned key for this federation; else `RosterProblem`."""
    if signed.admin_fingerprint != pinned:
        raise RosterProblem(
            f"the roster is signed by key {signed.admin_fingerprint[:16]}, the pinned admin key "
            f"is {pinned[:16]}"
        )
    try:
        Ed25519PublicKey.from_public_bytes(signed.admin_key).verify(
            signed.signature, signed.signed_bytes
        )
    except (InvalidSignature, ValueError):
        raise RosterProblem("the roster's signature does not verify with the pinned key") from None
    if signed.roster.federation != federation:
        raise RosterProblem(f"the roster is for federation '{signed.roster.federation}'")
    return signed.roster


class SignedRosterCheck:
    """`agent.round_policy.RosterCheck` against the roster signed by the pinned admin key."""

    def __init__(
        self,
        pinned: str,
        federation: str,
        fetch: Callable[[], SignedRoster],
        memory: Memory,
    ) -> None:
        self.pinned = pinned
        self.federation = federation
        self._fetch = fetch
        self._memory = memory
        self._held: Roster | None = None
        self._verdicts: dict[bytes, str | None] = {}
        kept = memory.remembered(ROSTER_MEMO)
        if kept is not None:
            try:
                signed = SignedRoster.model_validate(kept["signed"])
                self._held = verify(signed, pinned, federation)
            except (KeyError, ValueError, RosterProblem):
                self._held = None  # a kept roster that no longer verifies is not used

    @property
    def held(self) -> Roster | None:
        return self._held

    def check_members(self, config: RoundConfig) -> str | None:
        """Why the round's participants are not all on the signed roster, or None.

        The newest roster is fetched once per round (per config digest)."""
        if config.digest not in self._verdicts:
            self._verdicts = {config.digest: self._judge(config)}
        return self._verdicts[config.digest]

    def _judge(self, config: RoundConfig) -> str | None:
        try:
            roster = self._newest()
        except RosterProblem as exc:
            return str(exc)
        listed = roster.by_key()
        for member in config.participants:
            name = listed.get(member.identity.to_bytes())
            if name is None:
                return (
                    f"participant {member.id} ('{member.name}') is not on the signed roster "
                    f"(version {roster.version})"
                )
            if name != member.name:
                return (
                    f"participant {member.id} is '{member.name}' in the round, '{name}' on the "
                    f"signed roster"
                )
        return None

    def _newest(self) -> Roster:
        try:
            signed = self._fetch()
        except Rejected as exc:
            if exc.status == 404 and self._held is None:
                raise RosterProblem(
                    "the federation has no signed roster yet (its admin publishes one: "
                    "fmtl admin publish-roster)"
                ) from None
            if exc.status == 404:
                raise RosterProblem(
                    f"the coordinator no longer shows the signed roster (version "
                    f"{self._held.version if self._held else 0} held)"
                ) from None
            raise
        roster = verify(signed, self.pinned, self.federation)
        held = self._held
        if held is not None:
            if roster.version < held.version:
                raise RosterProblem(
                    f"the coordinator shows roster version {roster.version}, older than "
                    f"version {held.version} held"
                )
            if roster.version == held.version:
                if roster != held:
                    raise RosterProblem(
                        f"two different rosters are signed as version {roster.version}"
                    )
                return roster
        event(
            _log,
            "roster_accepted",
            version=roster.version,
            members=len(roster.members),
            changes="; ".join(roster_changes(held, roster)) or "none",
        )
        self._memory.remember(ROSTER_MEMO, {"signed": signed.model_dump(mode="json")})
        self._held = roster
        return roster


__all__ = ["ROSTER_MEMO", "RosterProblem", "SignedRosterCheck", "verify"]
