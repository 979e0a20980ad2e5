"""The encrypted round-state store: private files, tamper evidence, survives a restart."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.identity import generate_identity
from agent.state_store import EncryptedFileStore, StateCorrupted

SECRET = b"x25519 secret key and self-mask seed " * 4


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def test_a_restarted_agent_reads_what_it_saved(tmp_path: Path) -> None:
    identity = generate_identity()
    EncryptedFileStore(tmp_path / "rounds", identity).save("heart/round-000001", SECRET)
    again = EncryptedFileStore(tmp_path / "rounds", identity)  # a new process, same key
    assert again.load("heart/round-000001") == SECRET
    assert again.load("heart/round-000002") is None


def test_files_are_private_encrypted_and_unnamed(tmp_path: Path) -> None:
    store = EncryptedFileStore(tmp_path / "rounds", generate_identity())
    store.save("heart/round-000007", SECRET)
    (path,) = _files(tmp_path / "rounds")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "rounds").stat().st_mode) == 0o700
    assert SECRET[:16] not in path.read_bytes()
    assert "round" not in path.name


def test_every_write_uses_a_fresh_nonce(tmp_path: Path) -> None:
    store = EncryptedFileStore(tmp_path, generate_identity())
    store.save("k", SECRET)
    first = _files(tmp_path)[0].read_bytes()
    store.save("k", SECRET)
    assert _files(tmp_path)[0].read_bytes() != first
    assert store.load("k") == SECRET


def test_a_flipped_bit_is_detected(tmp_path: Path) -> None:
    store = EncryptedFileStore(tmp_path, generate_identity())
    store.save("k", SECRET)
    (path,) = _files(tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StateCorrupted, match="failed authentication"):
        store.load("k")


def test_state_moved_to_another_name_is_refused(tmp_path: Path) -> None:
    store = EncryptedFileStore(tmp_path, generate_identity())
    store.save("heart/round-000001", b"old round")
    store.save("heart/round-000002", b"new round")
    old, new = (store._path("heart/round-000001"), store._path("heart/round-000002"))
    new.write_bytes(old.read_bytes())  # last round's state offered as this round's
    with pytest.raises(StateCorrupted):
        store.load("heart/round-000002")


def test_another_identity_cannot_read_the_state(tmp_path: Path) -> None:
    EncryptedFileStore(tmp_path, generate_identity()).save("k", SECRET)
    other = EncryptedFileStore(tmp_path, generate_identity())
    (path,) = _files(tmp_path)
    other._path("k").write_bytes(path.read_bytes())
    with pytest.raises(StateCorrupted):
        other.load("k")


def test_truncated_file_is_not_a_state_file(tmp_path: Path) -> None:
    store = EncryptedFileStore(tmp_path, generate_identity())
    store.save("k", SECRET)
    (path,) = _files(tmp_path)
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(StateCorrupted, match="not a state file"):
        store.load("k")


def test_delete_and_clear(tmp_path: Path) -> None:
    store = EncryptedFileStore(tmp_path, generate_identity())
    store.save("a", b"1")
    store.save("b", b"2")
    store.delete("a")
    store.delete("a")  # idempotent
    assert store.load("a") is None
    assert store.clear() == 1
    assert _files(tmp_path) == []
