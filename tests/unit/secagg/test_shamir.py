"""Shamir sharing: any t shares give back the exact 32-byte secret, fewer give a typed error."""

from __future__ import annotations

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import InvalidArgument, InvalidShare, ThresholdNotMet
from privacy.secagg.shamir import PRIME, reconstruct_secret, split_secret


def test_field_is_prime_and_holds_every_32_byte_secret() -> None:
    assert sympy.isprime(PRIME)
    assert PRIME > 2**256


@settings(max_examples=50, deadline=None)
@given(
    secret=st.one_of(
        st.binary(min_size=32, max_size=32), st.sampled_from([bytes(32), b"\xff" * 32])
    ),
    holders=st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=30, unique=True),
    data=st.data(),
)
def test_any_threshold_of_shares_reconstructs_the_secret(secret, holders, data) -> None:
    threshold = data.draw(st.integers(1, len(holders)))
    shares = split_secret(secret, holders, threshold)
    chosen = data.draw(st.permutations(holders))[: data.draw(st.integers(threshold, len(holders)))]
    assert reconstruct_secret({x: shares[x] for x in chosen}, threshold, owner=1) == secret


def test_fewer_than_threshold_shares_fail_with_a_typed_error() -> None:
    shares = split_secret(b"k" * 32, [1, 2, 3, 4, 5], 3)
    with pytest.raises(ThresholdNotMet) as caught:
        reconstruct_secret({1: shares[1], 4: shares[4]}, 3, owner=9)
    assert caught.value.participant == 9


def test_threshold_minus_one_shares_are_consistent_with_any_secret() -> None:
    """t-1 shares fix nothing: for every candidate secret some polynomial explains them."""
    shares = split_secret(b"s" * 32, [1, 2, 3], 3)
    for candidate in (bytes(32), b"\x01" * 32):
        value = int.from_bytes(candidate, "big")
        # The degree-2 polynomial through (0, candidate), (1, y1), (2, y2) exists and passes
        # through some third point, which with it reconstructs the candidate.
        y1, y2 = shares[1], shares[2]
        third = (value - 3 * y1 + 3 * y2) % PRIME  # f(3) from f(0), f(1), f(2) (finite diffs)
        assert reconstruct_secret({1: y1, 2: y2, 3: third}, 3, owner=1) == candidate


def test_out_of_field_share_is_invalid() -> None:
    shares = split_secret(b"k" * 32, [1, 2], 2)
    with pytest.raises(InvalidShare):
        reconstruct_secret({1: shares[1], 2: PRIME + 1}, 2, owner=1)


@pytest.mark.parametrize(
    ("secret", "holders", "threshold", "message"),
    [
        (b"short", [1, 2], 2, "32 bytes"),
        (b"k" * 32, [1, 1], 1, "distinct"),
        (b"k" * 32, [0, 1], 1, "positive"),
        (b"k" * 32, [1, 2], 3, "between 1 and 2"),
        (b"k" * 32, [1, 2], 0, "between 1 and 2"),
    ],
)
def test_bad_sharing_parameters_are_refused(secret, holders, threshold, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        split_secret(secret, holders, threshold)
