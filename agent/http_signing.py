"""Signing the agent's requests with HTTP Message Signatures (RFC 9421).

Every request after enrollment carries a `Content-Digest` of its body (RFC 9530) and an
Ed25519 signature over the profile in `federation.wire`: method, path, query and that
digest, with a creation time, the institution's key id and a fresh random nonce. The
coordinator verifies it against the identity key registered at enrollment and refuses
stale, replayed or altered requests.

This module imports nothing of the coordinator (they meet only over HTTP and
`federation/`). Use `SignatureAuth` with an httpx client, or `RequestSigner` directly.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

from federation.wire import (
    COVERED_COMPONENTS,
    NONCE_BYTES,
    SIGNATURE_LABEL,
    SIGNATURE_TAG,
    enrollment_proof_message,
)

#: The headers a signature adds to a request.
SIGNATURE_HEADERS = ("Content-Digest", "Signature-Input", "Signature")


class _OneKey(HTTPSignatureKeyResolver):
    def __init__(self, key_id: str, private_key: Ed25519PrivateKey) -> None:
        self._key_id = key_id
        self._private_key = private_key

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        if key_id != self._key_id:
            raise KeyError("unknown key id")
        return self._private_key

    def resolve_public_key(self, key_id: str) -> None:
        return None


class _HeaderDict(MutableMapping[str, str]):
    """Case-preserving header mapping the signing library writes its headers into."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __setitem__(self, name: str, value: str) -> None:
        self._values[name] = value

    def __delitem__(self, name: str) -> None:
        del self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@dataclass
class _Message:
    method: str
    url: str
    headers: _HeaderDict


@dataclass(frozen=True)
class RequestSigner:
    """Signs requests as one institution (`key_id` is the id the coordinator assigned)."""

    private_key: Ed25519PrivateKey = field(repr=False)
    key_id: str

    def signature_headers(
        self,
        method: str,
        url: str,
        body: bytes,
        *,
        created: datetime | None = None,
        nonce: str | None = None,
    ) -> dict[str, str]:
        """The `Content-Digest`, `Signature-Input` and `Signature` headers for a request.

        `url` is the absolute, percent-encoded URL the request goes to. `created` and
        `nonce` default to now and a fresh random nonce; set them only in tests.
        """
        message = _Message(method=method.upper(), url=url, headers=_HeaderDict())
        signer = HTTPMessageSigner(
            signature_algorithm=algorithms.ED25519,
            key_resolver=_OneKey(self.key_id, self.private_key),
        )
        signer.sign(
            message,
            key_id=self.key_id,
            created=created,
            nonce=nonce if nonce is not None else secrets.token_hex(NONCE_BYTES),
            label=SIGNATURE_LABEL,
            tag=SIGNATURE_TAG,
            covered_component_ids=COVERED_COMPONENTS,
            body=body,
        )
        return dict(message.headers)


class SignatureAuth(httpx.Auth):
    """httpx authentication that signs every request it sends (`httpx.Client(auth=...)`)."""

    requires_request_body = True

    def __init__(self, signer: RequestSigner) -> None:
        self.signer = signer

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        for name in SIGNATURE_HEADERS:
            request.headers.pop(name, None)
        request.headers.update(
            self.signer.signature_headers(request.method, str(request.url), request.content)
        )
        yield request


def enrollment_proof(private_key: Ed25519PrivateKey, token: str) -> bytes:
    """The proof-of-possession signature an agent sends with its enrollment request."""
    public_key = private_key.public_key().public_bytes_raw()
    return private_key.sign(enrollment_proof_message(token, public_key))
