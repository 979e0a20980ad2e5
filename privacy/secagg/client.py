"""The client (participant) side of one round: a state machine over typed messages.

Bonawitz et al. 2017, Fig. 4 (with the SecAgg+ neighbour graph of Bell et al. 2020 as an
option). The agent drives it and does all I/O:

    client = ClientRound.start(config, my_id, identity)       # round 0: AdvertiseKeys
    send(client.advert())
    send(client.share_keys(broadcast))                         # round 1: ShareKeys
    send(client.masked_input(bundle, encoded))                 # round 2: MaskedInputCollection
    send(client.sign_survivors(survivor_set))                  # round 3: ConsistencyCheck
    send(client.unmask(proof))                                 # round 4: Unmasking

After each step the agent persists `client.export_state()`; `ClientRound.restore(blob,
identity)` continues from there. Steps are idempotent where that is safe: calling a step
again with the same message returns the same answer; a *different* message for a step
already taken (another broadcast, another survivor set) is a ProtocolViolation, which is
what stops a lying server from collecting both shares of one peer's secrets.
`masked_input` is never repeated: masking two inputs with the same masks would reveal their
difference, so the agent must keep the upload it made (or drop out).
"""

from __future__ import annotations

import secrets
from dataclasses import replace

import numpy as np

from privacy.secagg.client_state import ClientStage, ClientState, HeldShares
from privacy.secagg.config import RoundConfig
from privacy.secagg.consistency import (
    ConsistencyProof,
    ConsistencySignature,
    RevealedShare,
    SurvivorSet,
    UnmaskResponse,
)
from privacy.secagg.errors import (
    InvalidArgument,
    InvalidShare,
    MalformedMessage,
    ProtocolViolation,
    ThresholdNotMet,
    expect,
)
from privacy.secagg.keys import (
    SEED_SIZE,
    AgreementKey,
    IdentityKey,
    channel_key,
    decrypt_share,
    encrypt_share,
    pairwise_seed,
    self_seed_commitment,
)
from privacy.secagg.messages import (
    EncryptedShare,
    KeyAdvert,
    KeyBroadcast,
    MaskedInput,
    ShareBundle,
    ShareKeysMessage,
    SharePlaintext,
    advert_payload,
)
from privacy.secagg.prg import MaskPurpose, MaskStream, apply_masks, mask_key, pairwise_sign
from privacy.secagg.ring import RingVector, check_ring_vector
from privacy.secagg.shamir import split_secret
from privacy.secagg.thresholds import check_survivors, require_subset, require_threshold


class ClientRound:
    """One participant's view of one round. Create with `start` or `restore`."""

    def __init__(self, state: ClientState, identity: IdentityKey) -> None:
        expect(identity, IdentityKey, "the identity")
        if state.config.participant(state.me).identity != identity.public_key():
            raise InvalidArgument(
                f"the identity key is not the one enrolled for participant {state.me}"
            )
        self._state = state
        self._identity = identity
        # The neighbour graph is known once the key broadcast is (its seed hashes the adverts).
        self._config = (
            state.config if state.broadcast is None else state.config.bind_graph(state.broadcast)
        )
        self._c_key = AgreementKey.from_private_bytes(state.c_private)
        self._s_key = AgreementKey.from_private_bytes(state.s_private)

    @classmethod
    def start(cls, config: RoundConfig, participant: int, identity: IdentityKey) -> ClientRound:
        """Round 0: make the two fresh X25519 key pairs (c_u, s_u) of this round."""
        expect(config, RoundConfig, "the round config")
        config.participant(participant)
        c_key, s_key = AgreementKey.generate(), AgreementKey.generate()
        state = ClientState(
            config,
            participant,
            ClientStage.ADVERTISED,
            c_key.private_bytes(),
            s_key.private_bytes(),
        )
        return cls(state, identity)

    @classmethod
    def restore(cls, state: bytes, identity: IdentityKey) -> ClientRound:
        """Continue a round from `export_state()` bytes (MalformedMessage if corrupt)."""
        return cls(ClientState.from_bytes(state), identity)

    def export_state(self) -> bytes:
        """Everything needed to continue this round, secrets included: encrypt it at rest."""
        return self._state.to_bytes()

    @property
    def stage(self) -> ClientStage:
        return self._state.stage

    @property
    def participant(self) -> int:
        return self._state.me

    @property
    def config(self) -> RoundConfig:
        """The round's config; after `share_keys`, bound to the graph seed of the adverts."""
        return self._config

    def __repr__(self) -> str:
        return f"ClientRound(participant={self._state.me}, stage={self._state.stage.name})"

    def _check_round(self, round_id: bytes, what: str) -> None:
        if round_id != self.config.digest:
            raise ProtocolViolation(f"the {what} belongs to another round")

    # Round 0 -----------------------------------------------------------------------------
    def advert(self) -> KeyAdvert:
        """Round 0: c_u^PK and s_u^PK signed with the identity key (always the same advert)."""
        me, digest = self._state.me, self.config.digest
        c_pub, s_pub = self._c_key.public_bytes, self._s_key.public_bytes
        signature = self._identity.sign(advert_payload(digest, me, c_pub, s_pub))
        return KeyAdvert(digest, me, c_pub, s_pub, signature)

    # Round 1 -----------------------------------------------------------------------------
    def share_keys(self, broadcast: KeyBroadcast) -> ShareKeysMessage:
        """Round 1: check every advert, draw b_u, share b_u and s_u^SK, encrypt per holder.

        Raises BadSignature for a forged advert, ProtocolViolation for a foreign or
        duplicated key, ThresholdNotMet when fewer than t advertised or fewer than the share
        threshold of this client's holders did. With a neighbour graph, the graph seed is
        the hash of every participant's advert (`RoundConfig.bind_graph`): a broadcast that
        lacks one is ThresholdNotMet, a config that came with another seed ProtocolViolation.
        """
        expect(broadcast, KeyBroadcast, "the key broadcast")
        state, config, me = self._state, self.config, self._state.me
        if state.stage >= ClientStage.SHARED:
            if broadcast != state.broadcast:
                raise ProtocolViolation("share_keys was already answered for another broadcast")
            assert state.share_keys is not None
            return state.share_keys
        self._check_round(broadcast.round_id, "key broadcast")
        self._check_broadcast(broadcast)
        config = config.bind_graph(broadcast)
        holders = sorted(config.holders(me) & set(broadcast.senders))
        if len(holders) < config.share_threshold:
            raise ThresholdNotMet(
                f"{len(holders)} of participant {me}'s share holders advertised keys, "
                f"{config.share_threshold} needed",
                participant=me,
            )
        self_seed = secrets.token_bytes(SEED_SIZE)
        seed_shares = split_secret(self_seed, holders, config.share_threshold)
        key_shares = split_secret(self._s_key.private_bytes(), holders, config.share_threshold)
        encrypted = []
        for peer in holders:
            if peer == me:
                continue
            advert = broadcast.advert(peer)
            assert advert is not None
            key = channel_key(
                self._c_key.agree(advert.c_public, peer=peer), config.digest, me, peer
            )
            plaintext = SharePlaintext(me, peer, seed_shares[peer], key_shares[peer])
            nonce, ciphertext = encrypt_share(key, config.digest, me, peer, plaintext.to_bytes())
            encrypted.append(EncryptedShare(me, peer, nonce, ciphertext))
        commitment = self_seed_commitment(config.digest, me, self_seed)
        message = ShareKeysMessage(config.digest, me, commitment, tuple(encrypted))
        own = HeldShares(me, seed_shares[me], key_shares[me])
        self._state = replace(
            state,
            stage=ClientStage.SHARED,
            broadcast=broadcast,
            self_seed=self_seed,
            share_keys=message,
            held=(own,),
        )
        self._config = config
        return message

    def _check_broadcast(self, broadcast: KeyBroadcast) -> None:
        config, me = self.config, self._state.me
        senders = broadcast.senders
        require_subset(senders, config.ids, "key broadcast")
        require_threshold(config, senders, "advertised keys")
        mine = broadcast.advert(me)
        if mine is None or mine != self.advert():
            raise ProtocolViolation("the key broadcast does not carry this client's own advert")
        seen: set[bytes] = set()
        for advert in broadcast.adverts:
            identity = config.participant(advert.sender).identity
            identity.verify(
                advert.signature, advert.signed_payload(), participant=advert.sender, what="advert"
            )
            for key in (advert.c_public, advert.s_public):
                if key in seen:  # Bonawitz Fig. 4, round 1: all public keys distinct
                    raise ProtocolViolation(
                        f"participant {advert.sender} re-used an advertised key",
                        participant=advert.sender,
                    )
                seen.add(key)

    # Round 2 -----------------------------------------------------------------------------
    def masked_input(self, bundle: ShareBundle, encoded: RingVector) -> MaskedInput:
        """Round 2: store peers' shares, then y_u = x_u + PRG(b_u) + Σ_v Δ_uv·PRG(s_uv).

        `encoded` is this client's encoded update (a uint32/uint64 array of the round's
        length, e.g. from FixedPointCodec.encode); it is not modified. The sum runs over
        the neighbours v that shared keys (U2). Raises InvalidShare for a ciphertext that
        does not authenticate, ProtocolViolation for a bundle that is missing or adds
        shares, ThresholdNotMet when fewer than t shared keys.
        """
        expect(bundle, ShareBundle, "the share bundle")
        state, config, me = self._state, self.config, self._state.me
        if state.stage >= ClientStage.MASKED:
            raise ProtocolViolation(
                "this client already produced its masked input; masking again would reveal "
                "the difference of two inputs (resend the stored upload, or drop out)"
            )
        if state.stage < ClientStage.SHARED:
            raise ProtocolViolation("masked_input before share_keys")
        check_ring_vector(encoded, config.bits, config.vector_length, "the encoded input")
        self._check_round(bundle.round_id, "share bundle")
        if bundle.receiver != me:
            raise ProtocolViolation(f"the share bundle is addressed to {bundle.receiver}")
        assert state.broadcast is not None
        assert state.self_seed is not None
        share_senders = frozenset(bundle.share_senders)
        require_subset(share_senders, state.broadcast.senders, "share senders")
        if me not in share_senders:
            raise ProtocolViolation("the server says this client never shared its keys")
        require_threshold(config, share_senders, "shared keys")
        held = list(state.held) + self._open_bundle(bundle, share_senders)
        streams = [MaskStream(self._mask_key(state.self_seed, MaskPurpose.SELF), 1)]
        for peer in sorted(config.neighbours(me) & share_senders):
            advert = state.broadcast.advert(peer)
            assert advert is not None
            shared = self._s_key.agree(advert.s_public, peer=peer)
            seed = pairwise_seed(shared, config.digest, me, peer)
            streams.append(
                MaskStream(self._mask_key(seed, MaskPurpose.PAIRWISE), pairwise_sign(me, peer))
            )
        masked = np.empty_like(encoded)
        apply_masks(masked, 0, streams, source=encoded)
        self._state = replace(
            state,
            stage=ClientStage.MASKED,
            held=tuple(sorted(held, key=lambda h: h.owner)),
            share_senders=tuple(sorted(share_senders)),
        )
        return MaskedInput(config.digest, me, masked)

    def _mask_key(self, seed: bytes, purpose: MaskPurpose) -> bytes:
        context = self.config.context
        return mask_key(seed, context.federation, context.round, purpose)

    def _open_bundle(self, bundle: ShareBundle, share_senders: frozenset[int]) -> list[HeldShares]:
        """Decrypt the shares from every peer in U2 that has this client as a holder."""
        state, config, me = self._state, self.config, self._state.me
        assert state.broadcast is not None
        expected = sorted(
            peer for peer in share_senders if peer != me and config.is_holder(me, peer)
        )
        received = [share.sender for share in bundle.shares]
        if received != expected:
            missing = sorted(set(expected) - set(received)) or sorted(set(received) - set(expected))
            raise ProtocolViolation(
                f"the share bundle has the wrong senders (first difference: {missing[0]})",
                participant=missing[0],
            )
        held = []
        for share in bundle.shares:
            advert = state.broadcast.advert(share.sender)
            assert advert is not None
            key = channel_key(
                self._c_key.agree(advert.c_public, peer=share.sender),
                config.digest,
                me,
                share.sender,
            )
            plaintext = decrypt_share(
                key, config.digest, share.sender, me, share.nonce, share.ciphertext
            )
            held.append(self._parse_plaintext(plaintext, share.sender))
        return held

    def _parse_plaintext(self, plaintext: bytes, sender: int) -> HeldShares:
        try:
            shares = SharePlaintext.from_bytes(plaintext, sender=sender)
        except MalformedMessage as exc:
            raise InvalidShare(
                f"participant {sender}'s shares are malformed", participant=sender
            ) from exc
        if (shares.sender, shares.receiver) != (sender, self._state.me):
            raise InvalidShare(
                f"participant {sender}'s shares name other participants", participant=sender
            )
        return HeldShares(sender, shares.self_seed_share, shares.mask_key_share)

    # Round 3 -----------------------------------------------------------------------------
    def sign_survivors(self, survivors: SurvivorSet) -> ConsistencySignature:
        """Round 3: sign U3 after checking it is a subset of U2 that still meets the threshold.

        Signing is once per round: a different survivor set later is a ProtocolViolation.
        """
        expect(survivors, SurvivorSet, "the survivor set")
        state, config, me = self._state, self.config, self._state.me
        if state.stage >= ClientStage.SIGNED:
            if survivors.survivors != state.survivors:
                raise ProtocolViolation("this client already signed a different survivor set")
        elif state.stage < ClientStage.MASKED:
            raise ProtocolViolation("sign_survivors before masked_input")
        self._check_round(survivors.round_id, "survivor set")
        if me not in survivors.survivors:
            raise ProtocolViolation("the survivor set does not include this client")
        check_survivors(config, state.share_senders, survivors.survivors)
        signature = self._identity.sign(survivors.signed_payload())
        if state.stage < ClientStage.SIGNED:
            self._state = replace(state, stage=ClientStage.SIGNED, survivors=survivors.survivors)
        return ConsistencySignature(config.digest, me, signature)

    # Round 4 -----------------------------------------------------------------------------
    def unmask(self, proof: ConsistencyProof) -> UnmaskResponse:
        """Round 4: given >= t valid signatures on the signed U3, reveal one share per peer.

        For each participant w whose shares this client holds: the share of b_w if w is in
        U3, the share of s_w^SK if w shared keys but is not in U3 — never both.
        """
        expect(proof, ConsistencyProof, "the consistency proof")
        state, config = self._state, self.config
        if state.stage < ClientStage.SIGNED:
            raise ProtocolViolation("unmask before sign_survivors")
        self._check_round(proof.round_id, "consistency proof")
        if proof.survivors != state.survivors:
            raise ProtocolViolation("the consistency proof is for another survivor set")
        require_subset(proof.signers, state.survivors, "consistency signers")
        payload = proof.survivor_set().signed_payload()
        for signature in proof.signatures:
            identity = config.participant(signature.sender).identity
            identity.verify(
                signature.signature,
                payload,
                participant=signature.sender,
                what="survivor signature",
            )
        require_threshold(config, proof.signers, "signed the survivor set")
        alive = frozenset(state.survivors)
        seeds = tuple(RevealedShare(h.owner, h.self_seed) for h in state.held if h.owner in alive)
        keys = tuple(RevealedShare(h.owner, h.mask_key) for h in state.held if h.owner not in alive)
        self._state = replace(state, stage=ClientStage.UNMASKED)
        return UnmaskResponse(config.digest, state.me, seeds, keys)
