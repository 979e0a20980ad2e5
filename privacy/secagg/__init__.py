"""Secure aggregation: Bonawitz et al. 2017 with the SecAgg+ neighbour graph (Bell et al. 2020).

Pure and I/O-free (numpy and `cryptography` only): the agent drives a `ClientRound`, the
coordinator calls the server functions over the messages it stored, workers call
`unmask_slice`. See docs/secagg.md for the protocol mapping, parameters and threat model.

    codec = FixedPointCodec([FloatSegment("encoder", d, clip=1.0)], max_participants=n)
    encoded = codec.encode({"encoder": update}).vector
    ...  # rounds 0-4 between ClientRound and the server functions
    plan = plan_unmask(config, broadcast, share_messages, proof, responses)
    total = unmask_slice(plan, masked_sum, 0, d)
    codec.decode_sum(total)["encoder"]
"""

from privacy.secagg.client import ClientRound
from privacy.secagg.client_state import ClientStage
from privacy.secagg.config import NeighbourGraph, RoundConfig, RoundContext, RoundMember
from privacy.secagg.consistency import (
    ConsistencyProof,
    ConsistencySignature,
    RevealedShare,
    SurvivorSet,
    UnmaskResponse,
)
from privacy.secagg.encoding import (
    DecodedSum,
    EncodedUpdate,
    FixedPointCodec,
    FloatSegment,
    IntSegment,
    Segment,
)
from privacy.secagg.errors import (
    BadSignature,
    InvalidArgument,
    InvalidShare,
    MalformedMessage,
    ProtocolViolation,
    SecAggError,
    ThresholdNotMet,
)
from privacy.secagg.graph import recommended_degree
from privacy.secagg.graph_security import (
    GraphPolicy,
    GraphRisk,
    check_graph,
    graph_risk,
    recommended_graph,
)
from privacy.secagg.keys import IdentityKey, IdentityPublicKey
from privacy.secagg.messages import (
    EncryptedShare,
    KeyAdvert,
    KeyBroadcast,
    MaskedInput,
    MaskedInputHeader,
    ShareBundle,
    ShareKeysMessage,
)
from privacy.secagg.ring import add_masked, ring_dtype
from privacy.secagg.server import (
    check_advert,
    check_consistency_signature,
    check_masked_input,
    check_share_keys,
    close_advertise,
    close_consistency,
    close_masked_input,
    route_shares,
)
from privacy.secagg.unmask import (
    PlanEntry,
    UnmaskPlan,
    check_unmask_response,
    plan_unmask,
    unmask_slice,
)

__all__ = [
    "BadSignature",
    "ClientRound",
    "ClientStage",
    "ConsistencyProof",
    "ConsistencySignature",
    "DecodedSum",
    "EncodedUpdate",
    "EncryptedShare",
    "FixedPointCodec",
    "FloatSegment",
    "GraphPolicy",
    "GraphRisk",
    "IdentityKey",
    "IdentityPublicKey",
    "IntSegment",
    "InvalidArgument",
    "InvalidShare",
    "KeyAdvert",
    "KeyBroadcast",
    "MalformedMessage",
    "MaskedInput",
    "MaskedInputHeader",
    "NeighbourGraph",
    "PlanEntry",
    "ProtocolViolation",
    "RevealedShare",
    "RoundConfig",
    "RoundContext",
    "RoundMember",
    "SecAggError",
    "Segment",
    "ShareBundle",
    "ShareKeysMessage",
    "SurvivorSet",
    "ThresholdNotMet",
    "UnmaskPlan",
    "UnmaskResponse",
    "add_masked",
    "check_advert",
    "check_consistency_signature",
    "check_graph",
    "check_masked_input",
    "check_share_keys",
    "check_unmask_response",
    "close_advertise",
    "close_consistency",
    "close_masked_input",
    "graph_risk",
    "plan_unmask",
    "recommended_degree",
    "recommended_graph",
    "ring_dtype",
    "route_shares",
    "unmask_slice",
]
