"""A client's per-round state and its canonical byte form (`ClientRound.export_state`).

The agent persists this blob (encrypted at rest) after every step, so a restarted agent
continues its round where it stopped. It holds secrets: the two X25519 private keys, the
self-mask seed b_u, and the shares received from peers. The long-term identity key is
not in it; `ClientRound.restore` takes it separately.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from privacy.secagg.config import MAX_PARTICIPANTS, RoundConfig
from privacy.secagg.errors import InvalidShare, MalformedMessage
from privacy.secagg.keys import PRIVATE_KEY_SIZE, SEED_SIZE
from privacy.secagg.messages import KeyBroadcast, ShareKeysMessage
from privacy.secagg.shamir import SHARE_SIZE, share_from_bytes, share_to_bytes
from privacy.secagg.wire import Reader, Writer

_TAG: Final = b"SAST"


class ClientStage(enum.IntEnum):
    """The last step a client completed (Bonawitz et al. 2017, Fig. 4, rounds 0 to 4)."""

    ADVERTISED = 0  # made its key pairs; its advert can be (re)sent
    SHARED = 1  # sent its encrypted shares
    MASKED = 2  # sent its masked input
    SIGNED = 3  # signed the survivor set
    UNMASKED = 4  # revealed its unmask shares: done


@dataclass(frozen=True)
class HeldShares:
    """The shares of one participant's secrets that this client holds (from round 1)."""

    owner: int
    self_seed: int = field(repr=False)
    mask_key: int = field(repr=False)


@dataclass
class ClientState:
    """Everything a client must remember between steps; fields fill in as stages complete."""

    config: RoundConfig
    me: int
    stage: ClientStage
    c_private: bytes = field(repr=False)
    s_private: bytes = field(repr=False)
    broadcast: KeyBroadcast | None = None
    self_seed: bytes | None = field(default=None, repr=False)
    share_keys: ShareKeysMessage | None = None
    held: tuple[HeldShares, ...] = field(default=(), repr=False)
    share_senders: tuple[int, ...] = ()
    survivors: tuple[int, ...] = ()

    def to_bytes(self) -> bytes:
        writer = Writer(_TAG).blob(self.config.to_bytes()).u32(self.me).u8(self.stage)
        writer.fixed(self.c_private).fixed(self.s_private)
        if self.stage >= ClientStage.SHARED:
            assert self.broadcast is not None
            assert self.self_seed is not None
            assert self.share_keys is not None
            writer.blob(self.broadcast.to_bytes()).fixed(self.self_seed)
            writer.blob(self.share_keys.to_bytes())
            writer.u32(len(self.held))
            for held in self.held:
                writer.u32(held.owner)
                writer.fixed(share_to_bytes(held.self_seed)).fixed(share_to_bytes(held.mask_key))
        if self.stage >= ClientStage.MASKED:
            writer.u32(len(self.share_senders))
            for pid in self.share_senders:
                writer.u32(pid)
        if self.stage >= ClientStage.SIGNED:
            writer.u32(len(self.survivors))
            for pid in self.survivors:
                writer.u32(pid)
        return writer.finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientState:
        try:
            return cls._read(data)
        except InvalidShare as exc:  # a share value outside the field: a damaged blob
            raise MalformedMessage("client state: a held share is not a field element") from exc

    @classmethod
    def _read(cls, data: bytes) -> ClientState:
        reader = Reader(data, _TAG, "client state")
        config = RoundConfig.from_bytes(reader.blob("config"))
        me = reader.u32("me")
        raw_stage = reader.u8("stage")
        try:
            stage = ClientStage(raw_stage)
        except ValueError as exc:
            raise MalformedMessage(f"client state: unknown stage {raw_stage}") from exc
        state = cls(
            config,
            me,
            stage,
            reader.fixed(PRIVATE_KEY_SIZE, "c_private"),
            reader.fixed(PRIVATE_KEY_SIZE, "s_private"),
        )
        if stage >= ClientStage.SHARED:
            state.broadcast = KeyBroadcast.from_bytes(reader.blob("broadcast"))
            state.self_seed = reader.fixed(SEED_SIZE, "self_seed")
            state.share_keys = ShareKeysMessage.from_bytes(reader.blob("share_keys"))
            state.held = tuple(
                HeldShares(
                    reader.u32("owner"),
                    share_from_bytes(reader.fixed(SHARE_SIZE, "held b share"), sender=me),
                    share_from_bytes(reader.fixed(SHARE_SIZE, "held sk share"), sender=me),
                )
                for _ in range(reader.count("held shares", MAX_PARTICIPANTS))
            )
        if stage >= ClientStage.MASKED:
            count = reader.count("share senders", MAX_PARTICIPANTS)
            state.share_senders = tuple(reader.u32("share sender") for _ in range(count))
        if stage >= ClientStage.SIGNED:
            count = reader.count("survivors", MAX_PARTICIPANTS)
            state.survivors = tuple(reader.u32("survivor") for _ in range(count))
        reader.done()
        return state
