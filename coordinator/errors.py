"""The coordinator's error types.

Services raise these; `coordinator/api/problems.py` maps them, in one table, to HTTP
statuses and `application/problem+json` bodies (RFC 9457). Every message is written for
the caller and never contains a secret (tokens, keys, peppers are never interpolated).
Anything that is not a `CoordinatorError` is our fault and becomes a 500 without detail.
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base of every error the coordinator raises on purpose."""

    #: Short machine-readable name, used as the problem `type` (urn:fmtl:problem:<slug>).
    slug = "coordinator-error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigurationError(CoordinatorError):
    """A setting is missing or contradictory; the process cannot start."""

    slug = "configuration"


class DatabaseNotReady(CoordinatorError):
    """The database is unreachable or its schema is not at the code's migration head."""

    slug = "database-not-ready"


class InvalidInput(CoordinatorError):
    """The request is well-formed but its content is unacceptable; nothing was changed."""

    slug = "invalid-input"


class PayloadTooLarge(InvalidInput):
    """A body or upload is larger than allowed."""

    slug = "payload-too-large"


class NotFound(CoordinatorError):
    """The named resource does not exist (or the caller may not know it exists)."""

    slug = "not-found"


class AlreadyExists(CoordinatorError):
    """A resource with that name already exists."""

    slug = "already-exists"


class StateConflict(CoordinatorError):
    """The resource is in a state that does not allow this (revoked, used, wrong stage)."""

    slug = "state-conflict"


class EnrollmentRefused(StateConflict):
    """The enrollment token is used, expired or revoked, or the proof does not verify."""

    slug = "enrollment-refused"


class AuthenticationFailed(CoordinatorError):
    """No valid credentials: missing, unknown, expired or revoked token; bad signature."""

    slug = "unauthenticated"


class SignatureRejected(AuthenticationFailed):
    """An agent's HTTP message signature is missing, malformed, stale or does not verify."""

    slug = "signature-rejected"


class ReplayDetected(SignatureRejected):
    """A signature's nonce was already used: the request is a replay."""

    slug = "replay-detected"


class PermissionDenied(CoordinatorError):
    """Valid credentials whose role this endpoint does not admit."""

    slug = "forbidden"
