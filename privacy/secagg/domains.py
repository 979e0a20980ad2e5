"""Domain-separation labels, in one place so an auditor can check that none is reused.

Every hash, key derivation and signature in the protocol starts from one of these labels,
so a value computed for one purpose can never be accepted for another (a share-encryption
key is never a mask seed; a signature on keys is never a signature on a survivor set). The
version suffix changes whenever the meaning of the derived value changes.
"""

from __future__ import annotations

from typing import Final

# SHA-256 of a round's configuration: the id every message of the round carries.
CONFIG_DIGEST: Final = b"fmtl/secagg/v1/round-config"
# Ed25519 signature of a participant's two advertised X25519 public keys (Bonawitz Fig. 4, round 0).
ADVERT_SIGNATURE: Final = b"fmtl/secagg/v1/advertise-keys"
# Ed25519 signature of the survivor set (Bonawitz Fig. 4, round 3, consistency check).
SURVIVOR_SIGNATURE: Final = b"fmtl/secagg/v1/survivor-set"
# HKDF info: AES-GCM key of the channel between two participants (from their c keys).
CHANNEL_KEY: Final = b"fmtl/secagg/v1/channel-key"
# AES-GCM associated data of an encrypted share.
SHARE_AD: Final = b"fmtl/secagg/v1/encrypted-share"
# HKDF info: pairwise mask seed s_uv agreed between two participants (from their s keys).
PAIRWISE_SEED: Final = b"fmtl/secagg/v1/pairwise-seed"
# HKDF info: AES-256 key of the mask keystream expanded from a 32-byte seed.
MASK_KEY: Final = b"fmtl/secagg/v1/mask-key"
# SHA-256 commitment to a participant's self-mask seed b_u.
SELF_SEED_COMMITMENT: Final = b"fmtl/secagg/v1/self-seed-commitment"
# SHA-256 ordering key of the SecAgg+ neighbour graph.
GRAPH_ORDER: Final = b"fmtl/secagg/v1/neighbour-graph"
# SHA-256 of every participant's signed key advert: the seed of the neighbour graph.
GRAPH_SEED: Final = b"fmtl/secagg/v1/graph-seed-from-adverts"
