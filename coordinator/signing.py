"""The coordinator's signing key: Ed25519, kept outside the database, never logged.

Whoever can write the database can rewrite anything in it, hash chains included; what they
cannot do without this key is sign. The coordinator signs statements that must survive a
database writer (audit checkpoints, `coordinator/audit/checkpoints.py`; an auditor's report)
with it, framed by `federation.attestation.signed_message(domain, message)` so that each kind
of statement has its own domain and anyone holding the public key can check it.

Where the key comes from (`Settings`):

- `FMTL_SIGNING_KEY`: the key itself, as PKCS#8 PEM or as URL-safe/standard base64 of the
  32-byte Ed25519 seed (`head -c 32 /dev/urandom | base64`): production, the same value in
  every process (API, workers, beat), from a secret store;
- else `FMTL_SIGNING_KEY_FILE`: a PKCS#8 PEM file (e.g. a mounted secret); it must exist;
- else `<state_dir>/signing_key.pem`, generated once (mode 0600) like the token pepper:
  the embedded deployment.

Interface (what other modules use):

    key = runtime.signing_key                       # a SigningKey, loaded once per process
    signature = key.sign(DOMAIN, message)           # 64 bytes
    key.public_key, key.key_id                      # 32 raw bytes; SHA-256 hex of them
    verify_signature(public_key, DOMAIN, message, signature) -> bool

`SigningKey` never shows its secret: `repr()` names the key id only, and errors never
include key material.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from coordinator.errors import ConfigurationError
from coordinator.settings import Settings, read_or_create_private_file
from federation.attestation import key_id, signed_message

#: The generated key file in the state dir (embedded deployment).
SIGNING_KEY_FILE_NAME: Final = "signing_key.pem"
ED25519_SEED_BYTES: Final = 32


class SigningKey:
    """The coordinator's Ed25519 private key, with its public half and key id."""

    __slots__ = ("_private", "key_id", "public_key")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_key: bytes = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id: str = key_id(self.public_key)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id[:16]}...)"

    def sign(self, domain: bytes, message: bytes) -> bytes:
        """Ed25519 signature of `domain || 0x00 || message`."""
        return self._private.sign(signed_message(domain, message))

    def seed(self) -> bytes:
        """The 32-byte private seed: only for handing a new key to a secret store."""
        return self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def verify(self, domain: bytes, message: bytes, signature: bytes) -> bool:
        return verify_signature(self.public_key, domain, message, signature)


def verify_signature(public_key: bytes, domain: bytes, message: bytes, signature: bytes) -> bool:
    """Whether `signature` is the holder of `public_key` signing `message` under `domain`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, signed_message(domain, message)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def generate_signing_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.generate())


def signing_key_pem(key: SigningKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (for a 0600 file or a secret store)."""
    return key._private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_signing_key(settings: Settings) -> SigningKey:
    """The key named by the settings (see the module doc for the order)."""
    if settings.signing_key is not None:
        return _parse(settings.signing_key.get_secret_value().encode(), "FMTL_SIGNING_KEY")
    if settings.signing_key_file is not None:
        path = settings.signing_key_file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"FMTL_SIGNING_KEY_FILE {path}: cannot read it ({exc.strerror or exc})"
            ) from None
        return _parse(data, f"FMTL_SIGNING_KEY_FILE {path}")
    path = settings.state_dir / SIGNING_KEY_FILE_NAME
    data = read_or_create_private_file(path, lambda: signing_key_pem(generate_signing_key()))
    return _parse(data, str(path))


def _parse(data: bytes, where: str) -> SigningKey:
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            private = serialization.load_pem_private_key(text, password=None)
        except (ValueError, TypeError):
            raise ConfigurationError(
                f"{where}: not an unencrypted PKCS#8 PEM private key"
            ) from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigurationError(f"{where}: the key is not an Ed25519 key")
        return SigningKey(private)
    try:
        seed = base64.b64decode(
            text.replace(b"-", b"+").replace(b"_", b"/") + b"=" * (-len(text) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != ED25519_SEED_BYTES:
        raise ConfigurationError(
            f"{where}: expected a PKCS#8 PEM Ed25519 key or base64 of a {ED25519_SEED_BYTES}-byte "
            "seed (e.g. `head -c 32 /dev/urandom | base64`)"
        )
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed))
