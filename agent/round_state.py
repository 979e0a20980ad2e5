"""What an agent keeps between the stages of a round, and where it keeps it.

`RoundParticipant.step()` may run in a fresh process after a crash: everything it needs from
earlier stages (the decision, the secure-aggregation client state with its secrets, the
exact masked upload it made, its training report) is in a `ParticipantState`, saved to a
`RoundStateStore` *before* the message that depends on it is sent. The daemon's store
encrypts at rest; `InMemoryRoundStateStore` is for tests.

Never restore an older state (Bonawitz et al.'s guarantees assume a client never masks twice
or signs two survivor sets): stores must replace atomically and never roll back.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

_MAGIC: Final = b"FMRS\x01"
_LENGTH = struct.Struct(">I")


class RoundStateStore(Protocol):
    """Durable key -> bytes storage for round state (atomic replace, no rollback)."""

    def load(self, key: str) -> bytes | None: ...

    def save(self, key: str, data: bytes) -> None: ...

    def delete(self, key: str) -> None: ...


class InMemoryRoundStateStore:
    """A `RoundStateStore` in a dict (tests; a crash loses it)."""

    def __init__(self) -> None:
        self._items: dict[str, bytes] = {}

    def load(self, key: str) -> bytes | None:
        return self._items.get(key)

    def save(self, key: str, data: bytes) -> None:
        self._items[key] = bytes(data)

    def delete(self, key: str) -> None:
        self._items.pop(key, None)

    def keys(self) -> list[str]:
        return sorted(self._items)


class DamagedState(ValueError):
    """A stored round state cannot be read."""


@dataclass(frozen=True)
class ParticipantState:
    """One round, from this agent's side. Secrets included: store it encrypted."""

    federation: str
    round: int
    #: "join" or "decline" once decided.
    decision: str | None = None
    decline_reason: str | None = None
    #: `privacy.secagg.ClientRound.export_state()` (holds the round's private keys).
    client_state: bytes | None = field(default=None, repr=False)
    #: The exact bytes of the masked update (re-sent as is, never re-masked).
    masked_update: bytes | None = field(default=None, repr=False)
    #: The JSON training report, sent after the upload.
    report: bytes | None = None
    #: Why this agent gave up on the round (protocol error), if it did.
    abandoned: str | None = None

    @staticmethod
    def key(federation: str, number: int) -> str:
        return f"{federation}/round-{number:06d}"

    def to_bytes(self) -> bytes:
        header = {
            "federation": self.federation,
            "round": self.round,
            "decision": self.decision,
            "decline_reason": self.decline_reason,
            "client_state": _b64(self.client_state),
            "report": _b64(self.report),
            "abandoned": self.abandoned,
            "has_masked_update": self.masked_update is not None,
        }
        encoded = json.dumps(header, sort_keys=True).encode()
        return _MAGIC + _LENGTH.pack(len(encoded)) + encoded + (self.masked_update or b"")

    @classmethod
    def from_bytes(cls, data: bytes) -> ParticipantState:
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + _LENGTH.size:
            raise DamagedState("not a round state (wrong magic)")
        start = len(_MAGIC) + _LENGTH.size
        (length,) = _LENGTH.unpack(data[len(_MAGIC) : start])
        try:
            header = json.loads(data[start : start + length])
            masked = data[start + length :] if header["has_masked_update"] else None
            return cls(
                federation=str(header["federation"]),
                round=int(header["round"]),
                decision=header["decision"],
                decline_reason=header["decline_reason"],
                client_state=_unb64(header["client_state"]),
                masked_update=masked,
                report=_unb64(header["report"]),
                abandoned=header["abandoned"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DamagedState(f"damaged round state: {exc}") from None

    def with_(self, **changes: object) -> ParticipantState:
        return replace(self, **changes)  # type: ignore[arg-type]


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode("ascii")


def _unb64(value: object) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected base64 text")
    return base64.b64decode(value, validate=True)
