"""The server side of rounds 0 to 3 as pure functions of (config, stored messages).

Bonawitz et al. 2017, Fig. 4. The coordinator keeps every accepted message in its database;
each stage is closed by calling one function over the messages it accepted before the
deadline, so any process can (re)compute a stage's result at any time and a killed process
loses nothing. `check_*` functions validate one incoming message (call them on receipt
and answer 4xx on error); `close_*` functions end a stage, re-validate what they are given
and raise ThresholdNotMet when too few remain, in which case the round fails cleanly.
Round 4 (unmasking) is in `unmask.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Protocol, TypeVar

from privacy.secagg.config import RoundConfig
from privacy.secagg.consistency import ConsistencyProof, ConsistencySignature, SurvivorSet
from privacy.secagg.errors import InvalidArgument, ProtocolViolation, expect
from privacy.secagg.keys import check_agreement_public_key
from privacy.secagg.messages import (
    KeyAdvert,
    KeyBroadcast,
    MaskedInput,
    ShareBundle,
    ShareKeysMessage,
)
from privacy.secagg.ring import check_ring_vector
from privacy.secagg.thresholds import check_survivors, require_subset, require_threshold


class _FromSender(Protocol):
    @property
    def round_id(self) -> bytes: ...

    @property
    def sender(self) -> int: ...


M = TypeVar("M", bound=_FromSender)


def _check_origin(config: RoundConfig, message: _FromSender, kind: type, what: str) -> None:
    expect(config, RoundConfig, "the round config")
    expect(message, kind, f"the {what}")
    if message.round_id != config.digest:
        raise ProtocolViolation(
            f"the {what} of participant {message.sender} belongs to another round",
            participant=message.sender,
        )
    config.participant(message.sender)


def _one_per_sender(messages: Iterable[M], check: Callable[[M], None], what: str) -> list[M]:
    """Validate each message; identical repeats collapse, conflicting ones are a violation."""
    by_sender: dict[int, M] = {}
    for message in messages:
        check(message)
        previous = by_sender.get(message.sender)
        if previous is not None and previous != message:
            raise ProtocolViolation(
                f"participant {message.sender} sent two different {what}s",
                participant=message.sender,
            )
        by_sender[message.sender] = message
    return [by_sender[pid] for pid in sorted(by_sender)]


# Round 0: AdvertiseKeys ---------------------------------------------------------------------
def check_advert(config: RoundConfig, advert: KeyAdvert) -> None:
    """A known participant's advert for this round, signed by its enrolled identity key,
    with two distinct X25519 keys of full order (BadSignature / ProtocolViolation)."""
    _check_origin(config, advert, KeyAdvert, "key advert")
    identity = config.participant(advert.sender).identity
    identity.verify(
        advert.signature, advert.signed_payload(), participant=advert.sender, what="advert"
    )
    if advert.c_public == advert.s_public:
        raise ProtocolViolation(
            f"participant {advert.sender} advertised the same key twice", participant=advert.sender
        )
    check_agreement_public_key(advert.c_public, participant=advert.sender)
    check_agreement_public_key(advert.s_public, participant=advert.sender)


def close_advertise(config: RoundConfig, adverts: Iterable[KeyAdvert]) -> KeyBroadcast:
    """End round 0: the adverts received in time (U1), to relay to every participant in U1.

    With a neighbour graph U1 must be everyone (ThresholdNotMet otherwise): the graph seed
    is a hash over all the adverts, so the server cannot pick a subset that suits it."""
    accepted = _one_per_sender(adverts, lambda a: check_advert(config, a), "key advert")
    keys = [key for a in accepted for key in (a.c_public, a.s_public)]
    if len(set(keys)) != len(keys):
        raise ProtocolViolation("two participants advertised the same public key")
    require_threshold(config, [a.sender for a in accepted], "advertised keys")
    broadcast = KeyBroadcast(config.digest, tuple(accepted))
    config.bind_graph(broadcast)  # refuses a graph round with a missing advert
    return broadcast


# Round 1: ShareKeys -------------------------------------------------------------------------
def check_share_keys(
    config: RoundConfig, broadcast: KeyBroadcast, message: ShareKeysMessage
) -> None:
    """From a participant in U1, with exactly one ciphertext per other holder in U1."""
    expect(broadcast, KeyBroadcast, "the key broadcast")
    expect(config, RoundConfig, "the round config")
    _check_share_keys(config.bind_graph(broadcast), broadcast, message)


def _check_share_keys(
    config: RoundConfig, broadcast: KeyBroadcast, message: ShareKeysMessage
) -> None:
    _check_origin(config, message, ShareKeysMessage, "share keys message")
    require_subset([message.sender], broadcast.senders, "share keys")
    expected = sorted((config.holders(message.sender) & set(broadcast.senders)) - {message.sender})
    receivers = [share.receiver for share in message.shares]
    if receivers != expected:
        raise ProtocolViolation(
            f"participant {message.sender} did not send one share to each of its holders",
            participant=message.sender,
        )


def route_shares(
    config: RoundConfig, broadcast: KeyBroadcast, messages: Iterable[ShareKeysMessage]
) -> dict[int, ShareBundle]:
    """End round 1: U2 = who shared keys; for each v in U2, the ciphertexts addressed to v.

    The server only relays ciphertext (it cannot read the shares).
    """
    expect(broadcast, KeyBroadcast, "the key broadcast")
    expect(config, RoundConfig, "the round config")
    config = config.bind_graph(broadcast)
    accepted = _one_per_sender(
        messages, lambda m: _check_share_keys(config, broadcast, m), "share keys message"
    )
    senders = tuple(m.sender for m in accepted)
    require_threshold(config, senders, "shared keys")
    inbox: dict[int, list[tuple[int, int, int]]] = {pid: [] for pid in senders}
    for sender_index, message in enumerate(accepted):
        for share_index, share in enumerate(message.shares):
            if share.receiver in inbox:
                inbox[share.receiver].append((share.sender, sender_index, share_index))
    bundles = {}
    for receiver, entries in inbox.items():
        shares = tuple(accepted[i].shares[j] for _, i, j in sorted(entries))
        bundles[receiver] = ShareBundle(config.digest, receiver, senders, shares)
    return bundles


# Round 2: MaskedInputCollection ---------------------------------------------------------------
def check_masked_input(
    config: RoundConfig, share_senders: Collection[int], message: MaskedInput
) -> None:
    """From a participant in U2, with a vector of the round's length and bits."""
    _check_origin(config, message, MaskedInput, "masked input")
    require_subset([message.sender], share_senders, "masked input")
    check_ring_vector(message.vector, config.bits, config.vector_length, "the masked input")


def close_masked_input(
    config: RoundConfig, share_senders: Collection[int], uploaded: Iterable[int]
) -> SurvivorSet:
    """End round 2: U3 = who uploaded a masked input in time, to be signed by each of them.

    With a neighbour graph, `config` must be bound to the key broadcast (`bind_graph`)."""
    expect(config, RoundConfig, "the round config")
    survivors = tuple(sorted(set(uploaded)))
    check_survivors(config, share_senders, survivors)
    return SurvivorSet(config.digest, survivors)


# Round 3: ConsistencyCheck -------------------------------------------------------------------
def check_consistency_signature(
    config: RoundConfig, survivors: SurvivorSet, signature: ConsistencySignature
) -> None:
    """A survivor's valid identity-key signature of exactly this survivor set."""
    expect(survivors, SurvivorSet, "the survivor set")
    _check_origin(config, signature, ConsistencySignature, "consistency signature")
    require_subset([signature.sender], survivors.survivors, "consistency signature")
    config.participant(signature.sender).identity.verify(
        signature.signature,
        survivors.signed_payload(),
        participant=signature.sender,
        what="survivor signature",
    )


def close_consistency(
    config: RoundConfig, survivors: SurvivorSet, signatures: Iterable[ConsistencySignature]
) -> ConsistencyProof:
    """End round 3: U4 = the survivors that signed; at least t, or the round fails."""
    expect(config, RoundConfig, "the round config")
    expect(survivors, SurvivorSet, "the survivor set")
    if survivors.round_id != config.digest:
        raise InvalidArgument("the survivor set belongs to another round")
    accepted = _one_per_sender(
        signatures,
        lambda s: check_consistency_signature(config, survivors, s),
        "consistency signature",
    )
    require_threshold(config, [s.sender for s in accepted], "signed the survivor set")
    return ConsistencyProof(config.digest, survivors.survivors, tuple(accepted))
