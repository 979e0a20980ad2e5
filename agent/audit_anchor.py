"""The agent's anchor on the coordinator's audit log: the last signed checkpoint it saw.

Each round assignment carries the coordinator's latest audit checkpoint
(`federation.attestation.AuditCheckpoint`: "entry `audit_seq` has hash `head_hash`",
signed with the coordinator's key and chained to the checkpoint before it). The agent keeps
the last one it accepted (`<state dir>/audit_checkpoint.json`) and accepts a newer one only
if it extends the kept one: it fetches every checkpoint in between and checks each link
(`federation.attestation.check_extends`) and each signature against the coordinator key it
pinned at enrollment (`AgentProfile.coordinator_key`). An older, different or unlinked
checkpoint means the history the agent saw was rewritten or rolled back: the agent takes
no further part in the round (`HistoryRewritten`, logged as an error).

An agent enrolled before coordinators handed out their key checks links and monotonicity
only (a database writer with the key's holder's cooperation could still re-sign; one
without it cannot extend the chain so that the links hold).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from agent.errors import AgentError
from agent.identity import write_private_file
from federation.attestation import (
    AuditCheckpoint,
    BrokenCheckpoints,
    check_extends,
    key_id,
)

#: The kept checkpoint, in the agent's state folder.
ANCHOR_FILE: Final = "audit_checkpoint.json"

#: Checkpoints numbered above `after`, oldest first (one page).
FetchCheckpoints = Callable[[int], Sequence[AuditCheckpoint]]


class HistoryRewritten(AgentError):
    """The checkpoint the coordinator shows does not extend the one this agent kept."""


class AuditAnchor:
    """Keeps the last accepted checkpoint and checks that each new one extends it."""

    def __init__(self, path: Path, coordinator_key: bytes | None, fetch: FetchCheckpoints) -> None:
        self.path = path
        self.coordinator_key = coordinator_key
        self._fetch = fetch

    @property
    def kept(self) -> AuditCheckpoint | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return AuditCheckpoint.model_validate_json(text)
        except ValidationError:
            raise HistoryRewritten(f"{self.path}: the kept audit checkpoint is damaged") from None

    def check(self, shown: AuditCheckpoint | None) -> None:
        """Accept `shown` (and keep it) if it extends the kept checkpoint; else raise."""
        kept = self.kept
        if shown is None:
            if kept is not None:
                raise HistoryRewritten(
                    f"the coordinator shows no audit checkpoint; this agent saw checkpoint "
                    f"{kept.number}"
                )
            return
        if kept is not None:
            if shown.number < kept.number:
                raise HistoryRewritten(
                    f"the coordinator shows audit checkpoint {shown.number}; this agent saw "
                    f"checkpoint {kept.number} already"
                )
            if shown.number == kept.number:
                if shown.checkpoint_hash != kept.checkpoint_hash:
                    raise HistoryRewritten(
                        f"audit checkpoint {shown.number} is not the one this agent saw"
                    )
                return
        newer = [shown] if kept is None else self._between(kept.number, shown)
        try:
            check_extends(kept, newer)
        except BrokenCheckpoints as exc:
            raise HistoryRewritten(str(exc)) from None
        for checkpoint in newer:
            self._check_signature(checkpoint)
        write_private_file(
            self.path, json.dumps(shown.model_dump(mode="json"), sort_keys=True).encode()
        )

    def _between(self, after: int, shown: AuditCheckpoint) -> list[AuditCheckpoint]:
        found: list[AuditCheckpoint] = []
        cursor = after
        while cursor < shown.number:
            page = [c for c in self._fetch(cursor) if c.number <= shown.number]
            if not page:
                break
            found += page
            cursor = page[-1].number
        if not found or found[-1].checkpoint_hash != shown.checkpoint_hash:
            raise HistoryRewritten(
                f"the coordinator does not show the audit checkpoints between {after} and "
                f"{shown.number} that lead to the one it hands out"
            )
        return found

    def _check_signature(self, checkpoint: AuditCheckpoint) -> None:
        if self.coordinator_key is None:
            return
        if checkpoint.key_id != key_id(self.coordinator_key):
            raise HistoryRewritten(
                f"audit checkpoint {checkpoint.number} is signed by another key than the "
                "coordinator key pinned at enrollment"
            )
        try:
            Ed25519PublicKey.from_public_bytes(self.coordinator_key).verify(
                checkpoint.signature, checkpoint.signed_bytes
            )
        except InvalidSignature:
            raise HistoryRewritten(
                f"audit checkpoint {checkpoint.number} does not verify with the coordinator "
                "key pinned at enrollment"
            ) from None
