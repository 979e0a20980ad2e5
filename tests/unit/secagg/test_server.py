"""Server functions: every stage recomputable from stored messages, sliced unmasking, and
typed errors for bad uploads, bad signatures and conflicting repeats."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from privacy.secagg import (
    BadSignature,
    ConsistencySignature,
    InvalidArgument,
    InvalidShare,
    MaskedInput,
    ProtocolViolation,
    UnmaskPlan,
    add_masked,
    check_masked_input,
    close_advertise,
    close_consistency,
    plan_unmask,
    route_shares,
    unmask_slice,
)
from privacy.secagg.keys import decrypt_share, encrypt_share

from .roundsim import Progress, exact_sum, make_federation


@pytest.fixture(scope="module")
def finished():
    federation = make_federation(8, 5, 1000, degree=4, graph_threshold=3)
    progress = Progress.start(federation).masked_input(dropped=frozenset({3}))
    responses = progress.responses()
    plan = plan_unmask(
        progress.config, progress.broadcast, progress.share_messages, progress.proof, responses
    )
    masked_sum = np.zeros(1000, dtype=np.uint32)
    for upload in progress.uploads.values():
        add_masked(masked_sum, upload.vector)
    return progress, responses, plan, masked_sum


def test_workers_unmask_disjoint_slices_from_the_stored_plan(finished) -> None:
    progress, _, plan, masked_sum = finished
    stored = plan.to_bytes()
    expected = exact_sum(progress.config, progress.inputs, plan.survivors)
    pieces = []
    for start, stop in [(0, 1), (1, 333), (333, 999), (999, 1000)]:
        worker_plan = UnmaskPlan.from_bytes(stored)  # each worker loads the plan itself
        pieces.append(unmask_slice(worker_plan, masked_sum[start:stop], start, stop))
    np.testing.assert_array_equal(np.concatenate(pieces), expected)
    untouched = masked_sum.copy()
    unmask_slice(plan, masked_sum, 0, 1000)
    np.testing.assert_array_equal(masked_sum, untouched)  # not in place unless asked
    in_place = masked_sum.copy()
    unmask_slice(plan, in_place, 0, 1000, in_place=True)
    np.testing.assert_array_equal(in_place, expected)


def test_every_stage_closes_again_with_the_same_result(finished) -> None:
    progress, responses, plan, _ = finished
    config = progress.config
    adverts = list(progress.broadcast.adverts)
    assert close_advertise(config, reversed(adverts + adverts)) == progress.broadcast
    again = route_shares(config, progress.broadcast, list(reversed(progress.share_messages)))
    assert again == progress.bundles
    replanned = plan_unmask(
        config, progress.broadcast, progress.share_messages, progress.proof, reversed(responses)
    )
    assert replanned == plan


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros(10, dtype=np.float64), 0, 10), "dtype"),
        ((np.zeros(10, dtype=np.uint64), 0, 10), "dtype"),
        ((np.zeros(9, dtype=np.uint32), 0, 10), "shape"),
        ((np.zeros(10, dtype=np.uint32), -1, 9), "slice"),
        ((np.zeros(10, dtype=np.uint32), 995, 1005), "slice"),
        ((np.zeros(0, dtype=np.uint32), 5, 5), "slice"),
        ((np.zeros(10, dtype=np.uint32), 0.0, 10), "integers"),
        ((np.zeros((2, 5), dtype=np.uint32), 0, 10), "shape"),
    ],
)
def test_bad_slices_are_refused(finished, args, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        unmask_slice(finished[2], *args)


def test_bad_uploads_are_refused_on_receipt(finished) -> None:
    progress = finished[0]
    config, u2 = progress.config, [m.sender for m in progress.share_messages]
    upload = progress.uploads[1]
    with pytest.raises(InvalidArgument, match="shape"):
        check_masked_input(config, u2, MaskedInput(upload.round_id, 1, upload.vector[:-1]))
    with pytest.raises(InvalidArgument, match="dtype"):
        check_masked_input(
            config, u2, MaskedInput(upload.round_id, 1, upload.vector.astype(np.uint64))
        )
    with pytest.raises(ProtocolViolation):
        check_masked_input(config, [2, 4, 5, 6, 7, 8], upload)
    with pytest.raises(ProtocolViolation):
        check_masked_input(config, u2, MaskedInput(bytes(32), 1, upload.vector))


def test_bad_or_conflicting_signatures_are_refused(finished) -> None:
    progress = finished[0]
    config, survivors = progress.config, progress.survivor_set
    good = list(progress.proof.signatures)
    forged = ConsistencySignature(config.digest, good[0].sender, good[1].signature)
    with pytest.raises(BadSignature):
        close_consistency(config, survivors, [*good[1:], forged])
    adverts = list(progress.broadcast.adverts)
    other = dataclasses.replace(adverts[0], signature=adverts[1].signature)
    with pytest.raises(BadSignature):
        close_advertise(config, [*adverts, other])


def test_a_wrong_mask_key_share_is_caught_against_the_public_key(finished) -> None:
    progress, responses, _, _ = finished
    victim = next(i for i, r in enumerate(responses) if r.mask_key_shares)
    cheat = responses[victim]
    bad = tuple(dataclasses.replace(s, value=s.value ^ 1) for s in cheat.mask_key_shares)
    tampered = [
        *responses[:victim],
        dataclasses.replace(cheat, mask_key_shares=bad),
        *responses[victim + 1 :],
    ]
    with pytest.raises(InvalidShare) as caught:
        plan_unmask(
            progress.config, progress.broadcast, progress.share_messages, progress.proof, tampered
        )
    assert caught.value.participant == 3


def test_share_encryption_binds_sender_receiver_and_round() -> None:
    key, digest = bytes(32), bytes(range(32))
    nonce, ciphertext = encrypt_share(key, digest, 1, 2, b"secret shares")
    assert decrypt_share(key, digest, 1, 2, nonce, ciphertext) == b"secret shares"
    for sender, receiver, round_id in [(2, 1, digest), (1, 3, digest), (1, 2, bytes(32))]:
        with pytest.raises(InvalidShare):
            decrypt_share(key, round_id, sender, receiver, nonce, ciphertext)


def test_mixed_up_arguments_are_typed_errors(finished) -> None:
    progress, responses, plan, masked_sum = finished
    config, broadcast, proof = progress.config, progress.broadcast, progress.proof
    calls = [
        lambda: close_advertise(config, [progress.share_messages[0]]),
        lambda: close_advertise(config.to_bytes(), list(broadcast.adverts)),
        lambda: route_shares(config, proof, progress.share_messages),
        lambda: check_masked_input(config, [1], progress.share_messages[0]),
        lambda: close_consistency(config, proof, proof.signatures),
        lambda: plan_unmask(
            config, broadcast, progress.share_messages, progress.survivor_set, responses
        ),
        lambda: plan_unmask(config, broadcast, [b"bytes"], proof, responses),
        lambda: unmask_slice(plan.to_bytes(), masked_sum, 0, 1000),
        lambda: progress.clients[1].unmask(progress.survivor_set),
        lambda: progress.clients[1].sign_survivors(proof),
        lambda: progress.clients[1].share_keys(broadcast.to_bytes()),
        lambda: progress.config.participant(True),
    ]
    for call in calls:
        with pytest.raises(InvalidArgument):
            call()


def test_the_benchmark_checks_its_own_sums() -> None:
    from benchmarks.secagg import measure

    row = measure(6, 3000, 0.2, graph=True)  # raises SystemExit if a sum came out wrong
    assert row.graph == "k=4"
    assert row.client_streams == 5  # its self mask and its 4 neighbours
    assert row.server_streams == 9  # 5 survivors' self masks + the dropped one's 4 pairs
