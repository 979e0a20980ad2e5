"""The coordinator's signing key: where it comes from, that it signs, and that it stays secret."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.errors import ConfigurationError
from coordinator.settings import Settings
from coordinator.signing import (
    SIGNING_KEY_FILE_NAME,
    generate_signing_key,
    load_signing_key,
    signing_key_pem,
    verify_signature,
)
from federation.attestation import AUDIT_CHECKPOINT_DOMAIN, key_id

OTHER_DOMAIN = b"fmtl/test-statement/v1"


def test_the_embedded_key_is_generated_once_into_a_0600_file(tmp_path: Path) -> None:
    first = load_signing_key(Settings(state_dir=tmp_path))
    path = tmp_path / SIGNING_KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_signing_key(Settings(state_dir=tmp_path))
    assert again.public_key == first.public_key
    assert first.key_id == key_id(first.public_key)


def test_a_signature_verifies_under_its_domain_only() -> None:
    key = generate_signing_key()
    signature = key.sign(AUDIT_CHECKPOINT_DOMAIN, b"head 42")
    assert verify_signature(key.public_key, AUDIT_CHECKPOINT_DOMAIN, b"head 42", signature)
    assert not verify_signature(key.public_key, AUDIT_CHECKPOINT_DOMAIN, b"head 43", signature)
    assert not verify_signature(key.public_key, OTHER_DOMAIN, b"head 42", signature)
    other = generate_signing_key()
    assert not verify_signature(other.public_key, AUDIT_CHECKPOINT_DOMAIN, b"head 42", signature)


@pytest.mark.parametrize("form", ["pem", "base64", "base64url"])
def test_the_key_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    key = generate_signing_key()
    value = {
        "pem": signing_key_pem(key).decode(),
        "base64": base64.b64encode(key.seed()).decode(),
        "base64url": base64.urlsafe_b64encode(key.seed()).decode().rstrip("="),
    }[form]
    monkeypatch.setenv("FMTL_SIGNING_KEY", value)
    loaded = load_signing_key(Settings(state_dir=tmp_path))
    assert loaded.public_key == key.public_key
    assert not (tmp_path / SIGNING_KEY_FILE_NAME).exists()  # nothing generated


def test_the_key_can_come_from_a_mounted_file(tmp_path: Path) -> None:
    key = generate_signing_key()
    mounted = tmp_path / "secret" / "key.pem"
    mounted.parent.mkdir()
    mounted.write_bytes(signing_key_pem(key))
    loaded = load_signing_key(Settings(state_dir=tmp_path, signing_key_file=mounted))
    assert loaded.public_key == key.public_key


def test_a_missing_mounted_file_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="FMTL_SIGNING_KEY_FILE"):
        load_signing_key(Settings(state_dir=tmp_path, signing_key_file=tmp_path / "absent.pem"))
    assert not (tmp_path / "absent.pem").exists()


@pytest.mark.parametrize(
    "value",
    [
        "not a key",
        base64.b64encode(b"\x01" * 31).decode(),  # one byte short
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ],
)
def test_a_bad_key_is_refused_without_echoing_it(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_signing_key(Settings(state_dir=tmp_path, signing_key=SecretStr(value)))
    assert value.strip() not in caught.value.detail


def test_the_key_never_shows_its_secret() -> None:
    key = generate_signing_key()
    seed = key.seed()
    shown = repr(key) + str(key)
    for form in (seed.hex(), base64.b64encode(seed).decode(), signing_key_pem(key).decode()):
        assert form not in shown
    assert key.key_id[:16] in repr(key)


def test_a_non_ed25519_pem_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    with pytest.raises(ConfigurationError, match="not an Ed25519 key"):
        load_signing_key(Settings(state_dir=tmp_path, signing_key=SecretStr(pem)))


def test_cli_prints_the_public_key_and_a_fresh_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMTL_STATE_DIR", str(tmp_path))
    shown = CliRunner().invoke(app, ["signing-key"])
    assert shown.exit_code == 0, shown.output
    key = load_signing_key(Settings(state_dir=tmp_path))
    assert key.key_id in shown.output
    fresh = CliRunner().invoke(app, ["signing-key", "--new"])
    assert fresh.exit_code == 0
    seed = base64.b64decode(fresh.output.strip())
    Ed25519PrivateKey.from_private_bytes(seed)  # a usable key
    assert key.key_id not in fresh.output
