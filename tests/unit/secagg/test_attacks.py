"""What a tampering relay, a forger, a lying server or a cheating participant gets: a typed
error, never a wrong sum and never both kinds of share for one participant."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import (
    BadSignature,
    ClientRound,
    ConsistencyProof,
    IdentityKey,
    InvalidShare,
    KeyBroadcast,
    ProtocolViolation,
    RevealedShare,
    ShareBundle,
    SurvivorSet,
    ThresholdNotMet,
    check_advert,
    close_masked_input,
    plan_unmask,
)
from privacy.secagg.messages import advert_payload

from .roundsim import Progress, make_federation

GRAPH_OR_NOT = pytest.mark.parametrize("degree", [None, 4], ids=["full", "graph"])


def _federation(n: int, degree: int | None):
    local = None if degree is None else degree // 2 + 1
    return make_federation(n, n // 2 + 1, 10, degree=degree, graph_threshold=local)


def _flip(data: bytes, index: int) -> bytes:
    index %= len(data)
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(min_value=6, max_value=14),
    graph=st.booleans(),
    field=st.sampled_from(["ciphertext", "nonce"]),
    data=st.data(),
)
def test_tampered_share_ciphertext_is_rejected_by_its_receiver(n, graph, field, data) -> None:
    progress = Progress.start(_federation(n, 4 if graph else None)).share_keys()
    receiver = data.draw(st.sampled_from(sorted(progress.bundles)))
    bundle = progress.bundles[receiver]
    victim = data.draw(st.integers(0, len(bundle.shares) - 1))
    share = bundle.shares[victim]
    tampered = dataclasses.replace(
        share, **{field: _flip(getattr(share, field), data.draw(st.integers(0, 10**6)))}
    )
    shares = (*bundle.shares[:victim], tampered, *bundle.shares[victim + 1 :])
    forged = ShareBundle(bundle.round_id, receiver, bundle.share_senders, shares)
    with pytest.raises(InvalidShare) as caught:
        progress.clients[receiver].masked_input(forged, progress.inputs[receiver])
    assert caught.value.participant == share.sender


@GRAPH_OR_NOT
def test_share_readdressed_to_another_receiver_does_not_decrypt(degree) -> None:
    progress = Progress.start(_federation(8, degree)).share_keys()
    message = progress.share_messages[0]  # from participant 1
    stolen = message.shares[0]
    thief = next(
        pid
        for pid in progress.bundles[stolen.receiver].share_senders
        if pid not in (stolen.sender, stolen.receiver) and pid in progress.config.holders(1)
    )
    bundle = progress.bundles[thief]
    moved = dataclasses.replace(stolen, receiver=thief)
    shares = tuple(moved if s.sender == 1 else s for s in bundle.shares)
    forged = ShareBundle(bundle.round_id, thief, bundle.share_senders, shares)
    with pytest.raises(InvalidShare):
        progress.clients[thief].masked_input(forged, progress.inputs[thief])


@settings(max_examples=10, deadline=None)
@given(n=st.integers(min_value=6, max_value=12), graph=st.booleans(), data=st.data())
def test_forged_key_advert_is_rejected_by_server_and_clients(n, graph, data) -> None:
    progress = Progress.start(_federation(n, 4 if graph else None)).advertise()
    assert progress.broadcast is not None
    adverts = list(progress.broadcast.adverts)
    index = data.draw(st.integers(0, len(adverts) - 1))
    victim = adverts[index]
    # The server (or a relay) swaps in its own key pair and signs it with a key it owns.
    attacker = ClientRound.start(
        progress.config, victim.sender, progress.federation.identities[victim.sender]
    )
    own = attacker.advert()
    outsider = IdentityKey.generate()
    payload = advert_payload(victim.round_id, victim.sender, own.c_public, own.s_public)
    forged = dataclasses.replace(own, signature=outsider.sign(payload))
    with pytest.raises(BadSignature) as caught:
        check_advert(progress.config, forged)
    assert caught.value.participant == victim.sender
    adverts[index] = forged
    relayed = KeyBroadcast(victim.round_id, tuple(adverts))
    honest = next(pid for pid in progress.config.ids if pid != victim.sender)
    with pytest.raises(BadSignature):
        progress.clients[honest].share_keys(relayed)


@GRAPH_OR_NOT
def test_client_refuses_a_second_survivor_set(degree) -> None:
    progress = Progress.start(_federation(9, degree)).masked_input(dropped=frozenset({9}))
    assert progress.survivor_set is not None
    client = progress.clients[1]
    client.sign_survivors(progress.survivor_set)
    smaller = tuple(pid for pid in progress.survivor_set.survivors if pid != 2)
    with pytest.raises(ProtocolViolation):
        client.sign_survivors(SurvivorSet(progress.config.digest, smaller))
    restored = ClientRound.restore(client.export_state(), progress.federation.identities[1])
    with pytest.raises(ProtocolViolation):
        restored.sign_survivors(SurvivorSet(progress.config.digest, smaller))


@GRAPH_OR_NOT
def test_inconsistent_survivor_sets_stop_the_unmasking(degree) -> None:
    """The server tells half the survivors that participant 2 dropped: nobody unmasks."""
    progress = Progress.start(_federation(9, degree)).masked_input()
    config = progress.config
    full = progress.survivor_set
    assert full is not None
    told_dropped = SurvivorSet(config.digest, tuple(pid for pid in full.survivors if pid != 2))
    lied_to = [1, 3, 5]  # fewer than t = 5: the lie cannot gather t signatures
    signatures = {pid: progress.clients[pid].sign_survivors(told_dropped) for pid in lied_to}
    honest = {
        pid: progress.clients[pid].sign_survivors(full)
        for pid in full.survivors
        if pid not in lied_to
    }
    # A proof for the lie, padded with signatures the others made on the true set.
    padded = ConsistencyProof(
        config.digest,
        told_dropped.survivors,
        tuple(
            sorted(
                (signatures | {pid: s for pid, s in honest.items() if pid != 2}).values(),
                key=lambda s: s.sender,
            )
        ),
    )
    with pytest.raises(BadSignature):
        progress.clients[lied_to[0]].unmask(padded)
    # A proof with only the lied-to signatures is below the threshold.
    short = ConsistencyProof(config.digest, told_dropped.survivors, tuple(signatures.values()))
    with pytest.raises(ThresholdNotMet):
        progress.clients[lied_to[0]].unmask(short)
    # Participants who signed the true set refuse a proof about the other one.
    with pytest.raises(ProtocolViolation):
        progress.clients[4].unmask(short)


@GRAPH_OR_NOT
def test_server_cannot_obtain_both_shares_of_one_participant(degree) -> None:
    progress = Progress.start(_federation(9, degree)).masked_input(dropped=frozenset({9}))
    progress.consistency()
    responses = progress.responses()
    for response in responses:
        assert not {s.owner for s in response.self_seed_shares} & {
            s.owner for s in response.mask_key_shares
        }
        survivors = set(progress.survivor_set.survivors)
        assert {s.owner for s in response.self_seed_shares} <= survivors
        assert not {s.owner for s in response.mask_key_shares} & survivors
    # Asking again, even after a restart, yields the same shares and never the other kind.
    client = ClientRound.restore(
        progress.clients[1].export_state(), progress.federation.identities[1]
    )
    assert client.unmask(progress.proof) == responses[0]
    other = SurvivorSet(
        progress.config.digest, tuple(p for p in progress.survivor_set.survivors if p != 3)
    )
    with pytest.raises(ProtocolViolation):
        client.sign_survivors(other)


@GRAPH_OR_NOT
def test_wrong_unmask_share_is_caught_not_summed(degree) -> None:
    progress = Progress.start(_federation(9, degree)).masked_input(dropped=frozenset({9}))
    responses = progress.responses()
    cheat = responses[0]
    bad = tuple(RevealedShare(s.owner, (s.value + 1) % 2**256) for s in cheat.self_seed_shares)
    responses[0] = dataclasses.replace(cheat, self_seed_shares=bad)
    with pytest.raises(InvalidShare):
        plan_unmask(
            progress.config, progress.broadcast, progress.share_messages, progress.proof, responses
        )


def test_response_revealing_a_mask_key_of_a_survivor_is_a_violation() -> None:
    progress = Progress.start(_federation(7, None)).masked_input(dropped=frozenset({7}))
    responses = progress.responses()
    cheat = responses[0]
    leaked = (RevealedShare(2, 12345), *cheat.mask_key_shares)
    responses[0] = dataclasses.replace(
        cheat,
        self_seed_shares=tuple(s for s in cheat.self_seed_shares if s.owner != 2),
        mask_key_shares=tuple(sorted(leaked, key=lambda s: s.owner)),
    )
    with pytest.raises(ProtocolViolation):
        plan_unmask(
            progress.config, progress.broadcast, progress.share_messages, progress.proof, responses
        )


def test_messages_of_another_round_are_refused() -> None:
    first = Progress.start(_federation(5, None)).share_keys()
    second = make_federation(5, 3, 10)
    other = ClientRound.start(second.config, 1, second.identities[1])
    with pytest.raises(ProtocolViolation):
        other.share_keys(first.broadcast)
    with pytest.raises(ProtocolViolation):
        close_masked_input(second.config, [1, 2, 3, 4, 5], [9])


def test_masking_twice_is_refused_even_with_the_same_input() -> None:
    progress = Progress.start(_federation(5, None)).share_keys()
    client = progress.clients[1]
    client.masked_input(progress.bundles[1], progress.inputs[1])
    with pytest.raises(ProtocolViolation):
        client.masked_input(progress.bundles[1], np.zeros_like(progress.inputs[1]))
