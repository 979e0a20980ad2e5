"""The errors of secure aggregation: one small hierarchy, so callers can tell causes apart.

A caller (the coordinator's HTTP layer, the agent) maps them once: `InvalidArgument` and its
subclass `MalformedMessage` are bad input (4xx, nothing changed); `BadSignature`,
`InvalidShare` and `ProtocolViolation` name a participant that misbehaved (or a tampered
message); `ThresholdNotMet` means the round cannot go on with the participants that remain
and must fail cleanly. No message ever contains key material, seeds, shares or vector values.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base of every secure-aggregation error.

    `participant` is the id of the participant the error is about, when there is one (the
    sender of a bad message, the owner of a secret that could not be reconstructed).
    """

    def __init__(self, message: str, *, participant: int | None = None) -> None:
        super().__init__(message)
        self.participant = participant


class InvalidArgument(SecAggError, ValueError):
    """An argument is wrong: a length, a dtype, NaN/Inf, a threshold out of range, an id."""


class MalformedMessage(InvalidArgument):
    """Bytes that are not a well-formed message of the expected kind and version."""


class ThresholdNotMet(SecAggError):
    """Fewer than the threshold of participants remain (or hold shares) for this step."""


class InvalidShare(SecAggError):
    """A share failed authentication or does not reconstruct the committed secret."""


class BadSignature(SecAggError):
    """A signature by a participant's identity key does not verify."""


class ProtocolViolation(SecAggError):
    """A well-formed message that the protocol does not allow here.

    Examples: a message of another round, a step taken out of order, a duplicate sender, an
    unknown participant id, a survivor set that differs from the one already signed.
    """


def expect(value: object, kind: type, what: str) -> None:
    """Raise InvalidArgument unless `value` is a `kind`: public entry points check their
    arguments' types, so a caller's mix-up is a typed error, not an AttributeError."""
    if not isinstance(value, kind):
        raise InvalidArgument(f"{what} must be a {kind.__name__}, got {type(value).__name__}")
