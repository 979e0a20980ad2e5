"""Every message, the client state and the unmask plan have a canonical byte form; malformed
bytes raise a typed error and nothing else; secrets never show in a repr."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import (
    ClientRound,
    ClientStage,
    ConsistencyProof,
    ConsistencySignature,
    IdentityKey,
    InvalidArgument,
    KeyAdvert,
    KeyBroadcast,
    MalformedMessage,
    MaskedInput,
    SecAggError,
    ShareBundle,
    ShareKeysMessage,
    SurvivorSet,
    UnmaskPlan,
    UnmaskResponse,
    plan_unmask,
)

from .roundsim import Progress, make_federation


@pytest.fixture(scope="module")
def finished() -> tuple[Progress, list[UnmaskResponse], UnmaskPlan]:
    federation = make_federation(7, 4, 33, degree=4, graph_threshold=3)
    progress = Progress.start(federation).masked_input(dropped=frozenset({7}))
    responses = progress.responses()
    plan = plan_unmask(
        progress.config, progress.broadcast, progress.share_messages, progress.proof, responses
    )
    return progress, responses, plan


def _all_messages(finished) -> list[object]:
    progress, responses, plan = finished
    signature = progress.proof.signatures[0]
    return [
        progress.broadcast.adverts[0],
        progress.broadcast,
        progress.share_messages[0],
        progress.bundles[1],
        progress.survivor_set,
        signature,
        progress.proof,
        responses[0],
        plan,
    ]


def test_every_message_round_trips_canonically(finished) -> None:
    for message in _all_messages(finished):
        raw = message.to_bytes()
        again = type(message).from_bytes(raw)
        assert again == message, type(message).__name__
        assert again.to_bytes() == raw


def test_masked_input_round_trips_and_slices_without_parsing_the_rest(finished) -> None:
    progress = finished[0]
    upload = progress.uploads[1]
    raw = upload.to_bytes()
    again = MaskedInput.from_bytes(raw)
    np.testing.assert_array_equal(again.vector, upload.vector)
    np.testing.assert_array_equal(MaskedInput.slice_from_bytes(raw, 5, 20), upload.vector[5:20])
    with pytest.raises(InvalidArgument):
        MaskedInput.slice_from_bytes(raw, 20, 5)


KINDS = [
    KeyAdvert,
    KeyBroadcast,
    ShareKeysMessage,
    ShareBundle,
    MaskedInput,
    SurvivorSet,
    ConsistencySignature,
    ConsistencyProof,
    UnmaskResponse,
    UnmaskPlan,
]


def test_truncated_extended_or_mislabelled_bytes_are_malformed(finished) -> None:
    for message in [*_all_messages(finished), finished[0].uploads[1]]:
        raw = message.to_bytes()
        kind = type(message)
        damaged = [raw[:cut] for cut in range(0, len(raw), max(1, len(raw) // 40))]
        damaged += [raw + b"\x00", b"ZZZZ" + raw[4:], raw[:4] + b"\x09" + raw[5:]]
        for data in damaged:
            with pytest.raises(MalformedMessage):
                kind.from_bytes(data)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(KINDS), data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_typed_errors(kind, data) -> None:
    with contextlib.suppress(SecAggError):
        kind.from_bytes(data)


@settings(max_examples=100, deadline=None)
@given(index=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255), data=st.data())
def test_corrupted_messages_parse_or_raise_typed_errors(finished, index, flip, data) -> None:
    message = data.draw(st.sampled_from(_all_messages(finished)))
    raw = bytearray(message.to_bytes())
    raw[index % len(raw)] ^= flip
    with contextlib.suppress(SecAggError):
        type(message).from_bytes(bytes(raw))


def test_client_state_round_trips_at_every_stage() -> None:
    federation = make_federation(5, 3, 16)
    progress = Progress.start(federation)
    seen = []
    for advance in (
        lambda: None,
        progress.share_keys,
        progress.masked_input,
        progress.consistency,
        progress.responses,
    ):
        advance()
        client = progress.clients[2]
        state = client.export_state()
        restored = ClientRound.restore(state, federation.identities[2])
        assert restored.stage == client.stage
        assert restored.export_state() == state
        seen.append(client.stage)
    assert seen == list(ClientStage)


def test_client_state_needs_the_enrolled_identity_and_intact_bytes() -> None:
    federation = make_federation(5, 3, 16)
    progress = Progress.start(federation).share_keys()
    state = progress.clients[2].export_state()
    with pytest.raises(InvalidArgument, match="identity"):
        ClientRound.restore(state, IdentityKey.generate())
    with pytest.raises(MalformedMessage):
        ClientRound.restore(state[:-3], federation.identities[2])


def test_reprs_never_show_secrets(finished) -> None:
    progress, responses, plan = finished
    client = progress.clients[1]
    secrets_hex = [entry.seed.hex() for entry in plan.entries]
    secrets_hex += [str(share.value) for share in responses[0].self_seed_shares]
    secrets_hex.append(progress.federation.identities[1].private_bytes().hex())
    texts = [repr(client), repr(plan), repr(responses[0]), repr(progress.federation.identities[1])]
    texts += [repr(progress.share_messages[0]), repr(plan.streams)]
    for text in texts:
        for secret in secrets_hex:
            assert secret[:16] not in text
