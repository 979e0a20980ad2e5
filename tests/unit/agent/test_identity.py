"""The identity key file: 0600 from birth, optional passphrase, refused when exposed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.identity import (
    IdentityError,
    IdentityExists,
    generate_identity,
    load_identity,
    save_identity,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_is_private_and_round_trips(tmp_path: Path) -> None:
    key = generate_identity()
    path = tmp_path / "state" / "identity.key"
    save_identity(path, key, None)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    loaded = load_identity(path, None)
    assert loaded.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


def test_passphrase_encrypts_the_key(tmp_path: Path) -> None:
    key = generate_identity()
    path = tmp_path / "identity.key"
    save_identity(path, key, b"correct horse")
    text = path.read_text()
    assert "ENCRYPTED PRIVATE KEY" in text
    assert load_identity(path, b"correct horse").public_key().public_bytes_raw() == (
        key.public_key().public_bytes_raw()
    )
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_identity(path, b"wrong")
    with pytest.raises(IdentityError, match="FMTL_AGENT_KEY_PASSPHRASE"):
        load_identity(path, None)


def test_existing_key_is_not_overwritten_without_force(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    first = generate_identity()
    save_identity(path, first, None)
    with pytest.raises(IdentityExists, match="--force"):
        save_identity(path, generate_identity(), None)
    assert load_identity(path, None).public_key().public_bytes_raw() == (
        first.public_key().public_bytes_raw()
    )
    second = generate_identity()
    save_identity(path, second, None, force=True)
    assert load_identity(path, None).public_key().public_bytes_raw() == (
        second.public_key().public_bytes_raw()
    )


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    save_identity(path, generate_identity(), None)
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_identity(path, None)


def test_missing_key_says_to_enroll(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="fmtl agent enroll"):
        load_identity(tmp_path / "identity.key", None)


def test_a_file_that_is_not_a_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    path.write_text("hello")
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="not a PEM private key"):
        load_identity(path, None)
