"""The agent keeps the last audit checkpoint it saw and accepts only extensions of it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.audit_anchor import AuditAnchor, HistoryRewritten
from federation.attestation import (
    AUDIT_CHECKPOINT_DOMAIN,
    GENESIS_HASH,
    AuditCheckpoint,
    checkpoint_payload,
    key_id,
    signed_message,
)


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _chain(
    key: Ed25519PrivateKey, count: int, *, heads: str = "a", after: AuditCheckpoint | None = None
) -> list[AuditCheckpoint]:
    out: list[AuditCheckpoint] = []
    previous = after
    for _ in range(count):
        number = 1 if previous is None else previous.number + 1
        fields = {
            "number": number,
            "audit_seq": number * 10,
            "head_hash": (heads * 64)[:63] + f"{number % 10}",
            "prev_checkpoint_hash": GENESIS_HASH if previous is None else previous.checkpoint_hash,
            "signed_at": datetime(2026, 12, 2, tzinfo=UTC),
            "key_id": key_id(_public(key)),
        }
        payload = checkpoint_payload(**fields)  # type: ignore[arg-type]
        signature = key.sign(signed_message(AUDIT_CHECKPOINT_DOMAIN, payload))
        previous = AuditCheckpoint(**fields, signature=signature)  # type: ignore[arg-type]
        out.append(previous)
    return out


class Coordinator:
    def __init__(self, chain: list[AuditCheckpoint]) -> None:
        self.chain = chain
        self.fetched: list[int] = []

    def fetch(self, after: int) -> list[AuditCheckpoint]:
        self.fetched.append(after)
        return [c for c in self.chain if c.number > after][:2]  # pages of two


def test_a_newer_checkpoint_is_accepted_after_every_link_between_is_checked(
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    chain = _chain(key, 5)
    coordinator = Coordinator(chain)
    anchor = AuditAnchor(tmp_path / "anchor.json", _public(key), coordinator.fetch)
    anchor.check(chain[0])
    anchor.check(chain[0])  # the same one again
    anchor.check(chain[4])
    assert coordinator.fetched == [1, 3]
    # Kept across restarts.
    assert AuditAnchor(tmp_path / "anchor.json", _public(key), coordinator.fetch).kept == chain[4]
    assert (tmp_path / "anchor.json").stat().st_mode & 0o777 == 0o600


def test_a_rolled_back_or_rewritten_checkpoint_chain_is_refused(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    chain = _chain(key, 3)
    coordinator = Coordinator(chain)
    anchor = AuditAnchor(tmp_path / "anchor.json", _public(key), coordinator.fetch)
    anchor.check(chain[1])
    with pytest.raises(HistoryRewritten, match="saw checkpoint 2 already"):
        anchor.check(chain[0])
    with pytest.raises(HistoryRewritten, match="shows no audit checkpoint"):
        anchor.check(None)
    # A fork from checkpoint 1: the same numbers over another history, signed by the key.
    fork = _chain(key, 2, heads="b", after=chain[0])
    with pytest.raises(HistoryRewritten, match="not the one this agent saw"):
        anchor.check(fork[0])
    coordinator.chain = [chain[0], *fork]
    with pytest.raises(HistoryRewritten, match="does not link to checkpoint 2"):
        anchor.check(fork[1])
    assert anchor.kept == chain[1]


def test_a_checkpoint_not_signed_by_the_pinned_key_is_refused(tmp_path: Path) -> None:
    pinned, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    anchor = AuditAnchor(tmp_path / "anchor.json", _public(pinned), Coordinator([]).fetch)
    with pytest.raises(HistoryRewritten, match="another key"):
        anchor.check(_chain(other, 1)[0])
    forged = _chain(pinned, 1)[0].model_copy(update={"signature": bytes(64)})
    with pytest.raises(HistoryRewritten, match="does not verify"):
        anchor.check(forged)
    assert anchor.kept is None
