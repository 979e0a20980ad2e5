"""Round state at rest, encrypted: what a restarted agent needs to continue its round.

Between stages an agent keeps secrets (its X25519 secret keys, its self-mask seed, the
shares peers sent it, its trained contribution). `EncryptedFileStore` keeps each under a
key name in its own file:

- AES-256-GCM (`cryptography`), with a fresh random 96-bit nonce per write;
- the AES key is derived with HKDF-SHA256 from the identity private key's bytes and a
  domain-separation label, so only the holder of the identity key can read the state, and
  a state folder copied elsewhere is useless without the key;
- the key *name* is bound as associated data, so a file renamed or moved to another name
  (e.g. last round's state offered as this round's) fails to decrypt instead of being used;
- files are 0600 in a 0700 folder, written atomically (temp file, fsync, rename), named
  by a keyed hash of the name so a directory listing shows no round numbers.

A file that fails authentication raises `StateCorrupted`: the agent never continues from
state it cannot trust (the round goes on without it, as after a crash).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.errors import AgentError
from agent.identity import ensure_private_dir, write_private_file

#: HKDF `info` labels: one for the encryption key, one for file names. Versioned so a
#: future format never reuses a key for another purpose.
_ENCRYPTION_LABEL: Final = b"fmtl/agent/round-state/aes-256-gcm/v1"
_NAMING_LABEL: Final = b"fmtl/agent/round-state/file-names/v1"
#: File header: format magic and version (authenticated as associated data with the name).
_MAGIC: Final = b"FMTLRS\x01"
_NONCE_BYTES: Final = 12  # the GCM nonce size NIST SP 800-38D recommends
_KEY_BYTES: Final = 32
_SUFFIX: Final = ".state"
_MAX_KEY_NAME: Final = 256


class StateCorrupted(AgentError):
    """A stored round state failed authentication (tampered, truncated, or another key's)."""


def _derive(identity: Ed25519PrivateKey, label: bytes) -> bytes:
    secret = identity.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=label).derive(secret)


class EncryptedFileStore:
    """A `RoundStateStore` of AES-GCM-encrypted files in one private folder."""

    def __init__(self, folder: Path, identity: Ed25519PrivateKey) -> None:
        self.folder = ensure_private_dir(folder)
        self._aead = AESGCM(_derive(identity, _ENCRYPTION_LABEL))
        self._naming_key = _derive(identity, _NAMING_LABEL)

    def __repr__(self) -> str:
        return f"EncryptedFileStore({str(self.folder)!r})"

    def _path(self, key: str) -> Path:
        if not key or len(key) > _MAX_KEY_NAME:
            raise ValueError(f"a state key is 1..{_MAX_KEY_NAME} characters")
        digest = hmac.new(self._naming_key, key.encode("utf-8"), hashlib.sha256).hexdigest()
        return self.folder / f"{digest[:40]}{_SUFFIX}"

    @staticmethod
    def _associated(key: str) -> bytes:
        return _MAGIC + key.encode("utf-8")

    def save(self, key: str, data: bytes) -> None:
        """Encrypt `data` under a fresh nonce and replace the file of `key` atomically."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, bytes(data), self._associated(key))
        write_private_file(self._path(key), _MAGIC + nonce + sealed)

    def load(self, key: str) -> bytes | None:
        """The bytes last saved under `key`, or None; `StateCorrupted` if they were altered."""
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        header = len(_MAGIC) + _NONCE_BYTES
        if len(blob) < header + 16 or not blob.startswith(_MAGIC):
            raise StateCorrupted(f"round state '{key}' ({path.name}) is not a state file")
        nonce = blob[len(_MAGIC) : header]
        try:
            return self._aead.decrypt(nonce, blob[header:], self._associated(key))
        except InvalidTag:
            raise StateCorrupted(
                f"round state '{key}' ({path.name}) failed authentication: it was altered, "
                "or written under another identity key"
            ) from None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def clear(self) -> int:
        """Remove every state file (after a new enrollment); returns how many were removed."""
        removed = 0
        for path in self.folder.glob(f"*{_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed


__all__ = ["EncryptedFileStore", "StateCorrupted"]
