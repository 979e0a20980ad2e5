"""Identity signatures, key agreement and share encryption (Bonawitz et al. 2017, §4 and Fig. 4).

- Every participant holds a long-term Ed25519 identity key; the coordinator knows the
  public half from enrollment. It signs the round's advertised keys (round 0) and the
  survivor set (round 3), so a server cannot substitute keys or lie about survivors.
- Each round a participant makes two fresh X25519 key pairs: (c_PK, c_SK) to agree on the
  AES-GCM key that encrypts its shares to each peer, and (s_PK, s_SK) to agree on the
  pairwise mask seed s_uv. Agreed secrets go through HKDF-SHA256 with a domain label, the
  round's configuration digest and the unordered pair of ids, so every derived key is bound
  to one purpose, one round and one pair.
- Shares travel as AES-256-GCM ciphertexts with a fresh random nonce; the associated data
  binds the round, the sender and the receiver, so a relayed ciphertext cannot be replayed
  to another participant, another direction or another round.
"""

from __future__ import annotations

import hmac
import os
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from privacy.secagg import domains
from privacy.secagg.errors import BadSignature, InvalidArgument, InvalidShare, ProtocolViolation

PUBLIC_KEY_SIZE: Final = 32  # Ed25519 and X25519 public keys
PRIVATE_KEY_SIZE: Final = 32  # Ed25519 seed, X25519 scalar
SIGNATURE_SIZE: Final = 64  # Ed25519
SEED_SIZE: Final = 32  # self-mask seeds b_u and pairwise seeds s_uv (256-bit security)
DIGEST_SIZE: Final = 32  # SHA-256
NONCE_SIZE: Final = 12  # AES-GCM nonce: random, 96 bits, one key encrypts two messages
TAG_SIZE: Final = 16  # AES-GCM tag


def _check_size(value: object, size: int, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise InvalidArgument(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) != size:
        raise InvalidArgument(f"{what} must be {size} bytes, got {len(value)}")
    return bytes(value)


class IdentityPublicKey:
    """A participant's long-term Ed25519 public key, as enrolled with the coordinator."""

    __slots__ = ("_key", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = _check_size(raw, PUBLIC_KEY_SIZE, "an identity public key")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(self._raw)
        except ValueError as exc:
            raise InvalidArgument("an identity public key is not a valid Ed25519 key") from exc

    def to_bytes(self) -> bytes:
        return self._raw

    def verify(self, signature: bytes, message: bytes, *, participant: int, what: str) -> None:
        """Raise `BadSignature` unless `signature` is this key's signature of `message`."""
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
            raise BadSignature(
                f"{what} of participant {participant} is not a signature", participant=participant
            )
        try:
            self._key.verify(signature, message)
        except InvalidSignature as exc:
            raise BadSignature(
                f"{what} of participant {participant} does not verify with its identity key",
                participant=participant,
            ) from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdentityPublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"IdentityPublicKey({self._raw.hex()[:16]}…)"


class IdentityKey:
    """A participant's long-term Ed25519 private key (held by the agent, never sent)."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> IdentityKey:
        return cls(Ed25519PrivateKey.from_private_bytes(_check_size(raw, 32, "an identity key")))

    def private_bytes(self) -> bytes:
        """The raw 32-byte seed, for the agent to store encrypted at rest."""
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def public_key(self) -> IdentityPublicKey:
        return IdentityPublicKey(
            self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"IdentityKey(public={self.public_key()!r})"


class AgreementKey:
    """One fresh X25519 key pair of a round (c_u or s_u in the paper)."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self._public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> AgreementKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> AgreementKey:
        checked = _check_size(raw, PRIVATE_KEY_SIZE, "an X25519 private key")
        return cls(X25519PrivateKey.from_private_bytes(checked))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def public_bytes(self) -> bytes:
        return self._public

    def agree(self, peer_public: bytes, *, peer: int) -> bytes:
        """X25519 with a peer's advertised public key; a low-order key is a violation."""
        try:
            return self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:
            raise ProtocolViolation(
                f"participant {peer} advertised an X25519 key of low order", participant=peer
            ) from exc

    def __repr__(self) -> str:
        return f"AgreementKey(public={self._public.hex()[:16]}…)"


def check_agreement_public_key(raw: bytes, *, participant: int) -> None:
    """Reject a public key that is not 32 bytes or has low order (agreement would be zero)."""
    if len(raw) != PUBLIC_KEY_SIZE:
        raise ProtocolViolation(
            f"participant {participant} advertised a key of {len(raw)} bytes",
            participant=participant,
        )
    AgreementKey.generate().agree(raw, peer=participant)


def _pair_info(label: bytes, config_digest: bytes, a: int, b: int) -> bytes:
    low, high = min(a, b), max(a, b)
    return label + config_digest + low.to_bytes(4, "big") + high.to_bytes(4, "big")


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def channel_key(shared: bytes, config_digest: bytes, a: int, b: int) -> bytes:
    """AES-256-GCM key of the channel between participants a and b (from c_a, c_b)."""
    return _hkdf(shared, _pair_info(domains.CHANNEL_KEY, config_digest, a, b))


def pairwise_seed(shared: bytes, config_digest: bytes, a: int, b: int) -> bytes:
    """Pairwise mask seed s_ab (Bonawitz Fig. 4, round 2), from s_a and s_b."""
    return _hkdf(shared, _pair_info(domains.PAIRWISE_SEED, config_digest, a, b))


def _share_ad(config_digest: bytes, sender: int, receiver: int) -> bytes:
    return (
        domains.SHARE_AD + config_digest + sender.to_bytes(4, "big") + receiver.to_bytes(4, "big")
    )


def encrypt_share(
    key: bytes, config_digest: bytes, sender: int, receiver: int, plaintext: bytes
) -> tuple[bytes, bytes]:
    """Encrypt shares from `sender` to `receiver`; returns (nonce, ciphertext with tag)."""
    nonce = os.urandom(NONCE_SIZE)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _share_ad(config_digest, sender, receiver))
    return nonce, ciphertext


def decrypt_share(
    key: bytes, config_digest: bytes, sender: int, receiver: int, nonce: bytes, ciphertext: bytes
) -> bytes:
    """Decrypt and authenticate; a tampered or misaddressed ciphertext raises `InvalidShare`."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, _share_ad(config_digest, sender, receiver))
    except (InvalidTag, ValueError) as exc:
        raise InvalidShare(
            f"the shares from participant {sender} do not authenticate", participant=sender
        ) from exc


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare secrets (or commitments to them) without leaking where they differ."""
    return hmac.compare_digest(a, b)


def self_seed_commitment(round_id: bytes, owner: int, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed b_u; lets the server check its reconstruction."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(domains.SELF_SEED_COMMITMENT + round_id + owner.to_bytes(4, "big") + seed)
    return digest.finalize()
