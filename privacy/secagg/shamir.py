"""Shamir t-of-n secret sharing of 32-byte secrets (Shamir 1979; Bonawitz et al. 2017, §3.1).

Secrets (the self-mask seed b_u and the mask secret key s_u^SK) are read as integers below
2^256 and shared over the prime field GF(p) with p = 2^256 + 297, the smallest prime above
2^256, so every 32-byte string is a field element and round-trips exactly. The share of
holder x is f(x) for a random polynomial f of degree t-1 with f(0) = secret; the
x-coordinates are the participants' ids (positive, so never 0). Polynomial coefficients
come from `secrets`. Reconstruction uses Lagrange interpolation at 0 with coefficients
computed once per set of x-coordinates (all secrets answered by the same responders share
them, which is the common case at the unmask step).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Final

from privacy.secagg.errors import InvalidArgument, InvalidShare, ThresholdNotMet

PRIME: Final = 2**256 + 297
SECRET_SIZE: Final = 32
SHARE_SIZE: Final = 33  # bytes of a share value: an element of GF(p), p just above 2^256
_LAGRANGE_CACHE_SIZE: Final = 4096


def _check_threshold(threshold: int, holders: int) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise InvalidArgument(f"the threshold must be an int, got {type(threshold).__name__}")
    if not 1 <= threshold <= holders:
        raise InvalidArgument(f"the threshold {threshold} must be between 1 and {holders} holders")


def split_secret(secret: bytes, holders: Sequence[int], threshold: int) -> dict[int, int]:
    """Share a 32-byte secret among `holders` (distinct positive ids), any `threshold` recover it.

    Returns each holder's share value f(holder).
    """
    if not isinstance(secret, bytes) or len(secret) != SECRET_SIZE:
        raise InvalidArgument(f"a shared secret must be {SECRET_SIZE} bytes")
    if len(set(holders)) != len(holders) or any(x < 1 or x >= PRIME for x in holders):
        raise InvalidArgument("share holders must be distinct positive ids")
    _check_threshold(threshold, len(holders))
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares: dict[int, int] = {}
    for x in holders:
        value = 0
        for coefficient in reversed(coefficients):  # Horner
            value = (value * x + coefficient) % PRIME
        shares[x] = value
    return shares


@lru_cache(maxsize=_LAGRANGE_CACHE_SIZE)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients λ_i with f(0) = Σ λ_i f(x_i) for every f of degree < len(xs).

    λ_i = Π_{j≠i} x_j / (x_j - x_i); the denominators are inverted together with one
    modular inversion (Montgomery's trick), since inversions dominate the cost.
    """
    numerators, denominators = [], []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        numerators.append(numerator)
        denominators.append(denominator)
    prefix = [1]
    for denominator in denominators:
        prefix.append(prefix[-1] * denominator % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)  # 1 / (d_0 · d_1 · … · d_{m-1})
    coefficients = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        coefficients[i] = numerators[i] * inverse * prefix[i] % PRIME  # · 1/d_i
        inverse = inverse * denominators[i] % PRIME
    return tuple(coefficients)


def reconstruct_secret(shares: Mapping[int, int], threshold: int, *, owner: int) -> bytes:
    """Recover a secret from at least `threshold` shares (holder id -> share value).

    The `threshold` shares of the lowest holder ids are used. Fewer shares raise
    `ThresholdNotMet`; a value that is not a field element, or a result that is not a
    32-byte secret (what wrong shares almost always give), raises `InvalidShare`. Shares
    that are wrong yet still give a 32-byte result are caught by the caller's check
    against a commitment or public key. `owner` only names the secret in errors.
    """
    if len(shares) < threshold:
        raise ThresholdNotMet(
            f"{len(shares)} shares of participant {owner}'s secret remain, {threshold} needed",
            participant=owner,
        )
    xs = tuple(sorted(shares)[:threshold])
    total = 0
    for x, coefficient in zip(xs, lagrange_at_zero(xs), strict=True):
        value = shares[x]
        if not 0 <= value < PRIME:
            raise InvalidShare(
                f"participant {x} sent a share of {owner}'s secret outside the field",
                participant=x,
            )
        total += coefficient * value
    secret = total % PRIME
    if secret >= 1 << (8 * SECRET_SIZE):
        raise InvalidShare(
            f"the shares of participant {owner}'s secret are inconsistent", participant=owner
        )
    return secret.to_bytes(SECRET_SIZE, "big")


def share_to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_SIZE, "big")


def share_from_bytes(raw: bytes, *, sender: int) -> int:
    value = int.from_bytes(raw, "big")
    if len(raw) != SHARE_SIZE or value >= PRIME:
        raise InvalidShare(f"participant {sender} sent a malformed share", participant=sender)
    return value
