"""What agents and the coordinator agree on over HTTP, outside the round protocol itself.

Two things live here because both sides must share them byte for byte, and `federation/`
is the only package both may import:

- the profile of HTTP Message Signatures (RFC 9421) every agent request carries: the
  covered components, the label and tag, the allowed age and clock skew, the nonce size;
- enrollment: the proof-of-possession message an agent signs with its new Ed25519 identity
  key, and the request/response bodies of the enrollment and profile endpoints.

No cryptography happens here (`federation/` may not import `cryptography`): the agent signs
in `agent/http_signing.py` and the coordinator verifies in `coordinator/auth/signatures.py`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

from federation.spec import FederationSpec, Name

# --- RFC 9421 signature profile ------------------------------------------------------------

#: Path prefix of every endpoint an agent calls.
AGENT_API_PREFIX: Final = "/agent/v1"
#: Where agents upload masked updates (streamed bodies, exempt from the JSON body limit).
UPLOAD_PREFIX: Final = AGENT_API_PREFIX + "/uploads"

#: RFC 9421 algorithm identifier (section 3.3.6).
SIGNATURE_ALGORITHM: Final = "ed25519"

#: Signature dictionary label. Labels are not signed; the tag below is.
SIGNATURE_LABEL: Final = "fmtl"

#: Signed application tag (RFC 9421 section 2.3, `tag`): binds a signature to this profile,
#: so a signature made by the same key for another purpose is never accepted here.
SIGNATURE_TAG: Final = "fmtl-agent-v1"

#: Covered components, in signing order. `@method`, `@path` and the RFC 9530 digest of the
#: body make a signature valid for exactly one request; `@query` is covered too so that no
#: query parameter can be added or changed without breaking the signature.
COVERED_COMPONENTS: Final[tuple[str, ...]] = ("@method", "@path", "@query", "content-digest")

#: Body digest algorithm (RFC 9530 `Content-Digest`).
CONTENT_DIGEST_ALGORITHM: Final = "sha-256"

#: A signature older than this (by its signed `created` time) is refused. Five minutes is
#: long enough for a large upload on a slow link and short enough to bound the nonce store.
SIGNATURE_MAX_AGE_S: Final = 300

#: Tolerated clock difference between an agent and the coordinator, in either direction.
#: Institutions run their own clocks; NTP keeps them within seconds, 30 s is generous.
SIGNATURE_CLOCK_SKEW_S: Final = 30

#: Random bytes in the signed `nonce` (hex-encoded on the wire). The coordinator remembers
#: each (key, nonce) until the signature could no longer be accepted, and refuses repeats.
NONCE_BYTES: Final = 16

# --- Enrollment -----------------------------------------------------------------------------

#: Domain separation of the proof-of-possession signature, so it can never be mistaken for
#: any other signature made by an identity key (e.g. over secure-aggregation public keys).
ENROLLMENT_PROOF_CONTEXT: Final = b"fmtl/enrollment-proof/v1"

ED25519_PUBLIC_KEY_BYTES: Final = 32
ED25519_SIGNATURE_BYTES: Final = 64

#: Enrollment tokens are `fmtl_enroll_` followed by URL-safe base64 of 32 random bytes.
ENROLLMENT_TOKEN_PREFIX: Final = "fmtl_enroll_"  # noqa: S105 - a prefix, not a secret
ENROLLMENT_TOKEN_MAX_LENGTH: Final = 128


def _from_base64url(value: object) -> object:
    """Text is URL-safe base64 (padding optional) and is decoded; bytes pass through as raw."""
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid URL-safe base64") from None


def _to_base64url(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).decode("ascii").rstrip("=")


def _exact_length(size: int, what: str) -> Callable[[bytes], bytes]:
    def check(value: bytes) -> bytes:
        if len(value) != size:
            raise ValueError(f"{what} must be {size} bytes, got {len(value)}")
        return value

    return check


def _raw_bytes(size: int, what: str) -> tuple[object, ...]:
    """Validators, serializer and schema of a fixed-size binary field sent as base64url."""
    return (
        BeforeValidator(_from_base64url),
        AfterValidator(_exact_length(size, what)),
        PlainSerializer(_to_base64url, return_type=str, when_used="json"),
        WithJsonSchema(
            {
                "type": "string",
                "contentEncoding": "base64url",
                "description": f"{what[0].upper()}{what[1:]}: {size} raw bytes, URL-safe base64.",
            }
        ),
    )


Ed25519PublicKeyBytes = Annotated[
    bytes, *_raw_bytes(ED25519_PUBLIC_KEY_BYTES, "an Ed25519 public key")
]
Ed25519SignatureBytes = Annotated[
    bytes, *_raw_bytes(ED25519_SIGNATURE_BYTES, "an Ed25519 signature")
]


def enrollment_proof_message(token: str, public_key: bytes) -> bytes:
    """The bytes an agent signs with its new identity key to prove it holds the private key.

    context || 0x00 || token || 0x00 || public key: binding the one-time token means a proof
    observed for one enrollment cannot be replayed to enroll the same key elsewhere.
    """
    if len(public_key) != ED25519_PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {ED25519_PUBLIC_KEY_BYTES} bytes")
    return ENROLLMENT_PROOF_CONTEXT + b"\x00" + token.encode("utf-8") + b"\x00" + public_key


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EnrollmentRequest(_Wire):
    """What an agent sends once, to `POST {AGENT_API_PREFIX}/enroll`."""

    token: str = Field(
        min_length=1,
        max_length=ENROLLMENT_TOKEN_MAX_LENGTH,
        description="The one-time enrollment token an admin handed to the institution.",
    )
    public_key: Ed25519PublicKeyBytes
    #: Ed25519 signature of `enrollment_proof_message(token, public_key)`.
    proof: Ed25519SignatureBytes


class AgentProfile(_Wire):
    """Who the coordinator knows an agent as, and the federation it belongs to."""

    institution_id: int
    key_id: str = Field(description="The `keyid` to put in every request signature.")
    institution: Name
    federation: Name
    tasks_held: tuple[Name, ...]
    enrolled_at: datetime
    spec: FederationSpec
    spec_fingerprint: str
    coordinator_key: Ed25519PublicKeyBytes | None = Field(
        default=None,
        description="The coordinator's signing public key (audit checkpoints, reports): the "
        "agent pins the one it got at enrollment and checks every audit checkpoint with it.",
    )
