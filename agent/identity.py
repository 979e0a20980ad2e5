"""The institution's long-term Ed25519 identity key, in a file only the agent can read.

The key is made once, at enrollment, from the operating system's random source
(`Ed25519PrivateKey.generate`). It is stored as PKCS#8 PEM, encrypted with the
passphrase from FMTL_AGENT_KEY_PASSPHRASE when that is set (`BestAvailableEncryption`),
in a file created with mode 0600 and moved into place atomically. Loading refuses a key
file others can read or write, and says how to fix it.

The same key signs every request (RFC 9421) and the secure-aggregation key adverts, and
(through HKDF, see `agent.state_store`) protects the round state at rest.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import PASSPHRASE_ENV
from agent.errors import AgentError
from agent.logging import event, get_logger

KEY_FILE_MODE: Final = 0o600
STATE_DIR_MODE: Final = 0o700
#: Permission bits a key file must not have: any access by others, group write/execute.
#: Group read is tolerated (Kubernetes secret volumes with an fsGroup) with a warning.
_FORBIDDEN_BITS: Final = stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP

_log = get_logger("identity")


class IdentityError(AgentError):
    """The identity key is missing, unreadable, exposed, or its passphrase is wrong."""


class IdentityExists(IdentityError):
    """An identity key (or enrollment) is already there and would be overwritten."""


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700 if missing; tighten it if it is ours."""
    path.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(STATE_DIR_MODE)
        except PermissionError:
            raise IdentityError(
                f"{path}: the state folder is accessible to others (mode {mode:o}) and cannot "
                f"be changed; run: chmod 700 {path}"
            ) from None
    return path


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file, fsync, rename), mode 0600 from birth."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, KEY_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as sink:
            sink.write(data)
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(tmp, KEY_FILE_MODE)  # an umask cannot loosen it, a stale file cannot keep more
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def generate_identity() -> Ed25519PrivateKey:
    """A fresh Ed25519 key from the operating system's random source."""
    return Ed25519PrivateKey.generate()


def identity_pem(private_key: Ed25519PrivateKey, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM of the key, encrypted with `passphrase` when given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def save_identity(
    path: Path, private_key: Ed25519PrivateKey, passphrase: bytes | None, *, force: bool = False
) -> None:
    """Store the key at `path` (mode 0600); refuses to replace one unless `force`."""
    if path.exists() and not force:
        raise IdentityExists(
            f"{path}: an identity key is already there; enrolling again makes a new identity "
            "(the old one stops working): pass --force to replace it"
        )
    ensure_private_dir(path.parent)
    write_private_file(path, identity_pem(private_key, passphrase))
    event(_log, "identity_key_written", file=str(path), encrypted=bool(passphrase))


def check_key_file_mode(path: Path) -> None:
    """Refuse a key file that others may read or that anyone but its owner may change."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & _FORBIDDEN_BITS:
        raise IdentityError(
            f"{path}: the identity key is accessible to others (mode {mode:o}); "
            f"run: chmod 600 {path}"
        )
    if mode & stat.S_IRGRP:
        event(_log, "identity_key_group_readable", level=30, file=str(path), mode=f"{mode:o}")


def load_identity(path: Path, passphrase: bytes | None) -> Ed25519PrivateKey:
    """Read the key (checking the file's mode); clear errors for every way it can fail."""
    try:
        check_key_file_mode(path)
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(
            f"{path}: no identity key; enroll first: fmtl agent enroll --coordinator URL "
            "--token TOKEN --config agent.toml"
        ) from None
    except PermissionError:
        raise IdentityError(f"{path}: cannot read the identity key (permission denied)") from None
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise IdentityError(f"{path}: the identity key is encrypted; set {PASSPHRASE_ENV}")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except (ValueError, TypeError):
        if encrypted:
            raise IdentityError(
                f"{path}: wrong passphrase for the identity key ({PASSPHRASE_ENV})"
            ) from None
        raise IdentityError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path}: the identity key must be Ed25519")
    return key


def public_key_bytes(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes_raw()


__all__ = [
    "KEY_FILE_MODE",
    "STATE_DIR_MODE",
    "IdentityError",
    "IdentityExists",
    "check_key_file_mode",
    "ensure_private_dir",
    "generate_identity",
    "identity_pem",
    "load_identity",
    "public_key_bytes",
    "save_identity",
    "write_private_file",
]
