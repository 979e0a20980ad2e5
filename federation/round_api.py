"""The round protocol over HTTP: the typed messages of each stage, shared by both sides.

DESIGN.md, "One round, end to end". An agent polls `GET /agent/v1/work` and gets a
`RoundAssignment` (or none); then, depending on the round's stage, it exchanges the
messages below with `/agent/v1/rounds/{number}/...`. Secure-aggregation messages travel as
the canonical bytes of `privacy.secagg` (base64url inside JSON); this module never
interprets them, it only types the envelopes. Two bodies are binary:

- the global model (`GET .../model`): the model-layout vector as little-endian float32 or
  float64, described by the `MODEL_*` headers;
- the masked update (`PUT .../masked-update`): the bytes of a `privacy.secagg.MaskedInput`,
  whose exact size follows from the update layout and the secagg bits
  (`masked_update_size`); anything else is refused before it is stored.

Every request is idempotent: sending the same message again changes nothing and the answer
says so (`Receipt.outcome == "repeat"`); a different message for the same step is refused.
"""

from __future__ import annotations

import enum
import math
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
)

from federation.attestation import AuditCheckpoint
from federation.layout import ParameterLayout, SegmentKind
from federation.spec import FederationSpec, Name
from federation.wire import _from_base64url, _to_base64url
from privacy.secagg.encoding import FixedPointCodec, FloatSegment, IntSegment, Segment
from privacy.secagg.messages import MaskedInput

# Variable-length binary fields (secagg messages) ---------------------------------------------

#: Largest secure-aggregation message carried in JSON (a share-keys message of a round with
#: 100 000 participants stays far below; model and update vectors are binary bodies).
MAX_MESSAGE_BYTES: Final = 16 << 20

SecAggBytes = Annotated[
    bytes,
    BeforeValidator(_from_base64url),
    PlainSerializer(_to_base64url, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64url",
            "maxLength": MAX_MESSAGE_BYTES * 4 // 3 + 4,
            "description": "Canonical bytes of a privacy.secagg message, URL-safe base64.",
        }
    ),
    Field(max_length=MAX_MESSAGE_BYTES),
]

# Binary bodies ------------------------------------------------------------------------------

#: Media type of the binary bodies (model vectors and masked updates).
BINARY_MEDIA_TYPE: Final = "application/octet-stream"
#: Headers describing a global-model download.
MODEL_VERSION_HEADER: Final = "X-Fmtl-Model-Version"
MODEL_DTYPE_HEADER: Final = "X-Fmtl-Model-Dtype"
MODEL_LAYOUT_HEADER: Final = "X-Fmtl-Layout-Fingerprint"
MODEL_SHA256_HEADER: Final = "X-Fmtl-Model-Sha256"
ModelDtype = Literal["float32", "float64"]


def masked_update_size(vector_length: int, bits: int) -> int:
    """The exact size of a masked-update upload for a round (`privacy.secagg.MaskedInput`
    owns the format)."""
    if bits not in (32, 64):
        raise ValueError(f"bits must be 32 or 64, got {bits}")
    return MaskedInput.size(vector_length, bits)


def update_codec(spec: FederationSpec, participants: int) -> FixedPointCodec:
    """The fixed-point codec of the update layout for a round of `participants`.

    Float segments are clipped to `federation.aggregation.update_clip(spec)`; weight
    counters and validation counts are exact integers bounded by the layout; validation
    sums are fixed point, clipped to their layout bound. Both sides build it from the spec
    and the round's n, so they agree on every scale.
    """
    from federation.aggregation import update_clip

    layout = ParameterLayout.update(spec)
    clip = update_clip(spec)
    segments: list[Segment] = []
    for segment in layout.segments:
        if segment.kind is SegmentKind.FLOAT:
            segments.append(FloatSegment(segment.name, segment.length, clip))
        elif segment.kind is SegmentKind.STATISTIC_SUM:
            segments.append(FloatSegment(segment.name, segment.length, float(segment.bound)))
        else:
            segments.append(IntSegment(segment.name, segment.length, segment.bound))
    return FixedPointCodec(segments, bits=spec.secagg.bits, max_participants=participants)


# JSON envelopes --------------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Stage(enum.StrEnum):
    """A round's stage as agents see it (the coordinator's `RoundStage`)."""

    SCHEDULED = "scheduled"
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASKING = "unmasking"
    AGGREGATING = "aggregating"
    COMPLETED = "completed"
    FAILED = "failed"


class AggregationMode(enum.StrEnum):
    """`secure`: masked (the default, always in production); `plain`: unmasked sums,
    for benchmarks and tests, refused unless the coordinator allows it."""

    SECURE = "secure"
    PLAIN = "plain"


class MyStatus(enum.StrEnum):
    """Where the polling agent stands in the round."""

    SELECTED = "selected"
    DROPPED = "dropped"
    DECLINED = "declined"
    COMPLETED = "completed"


class MessageKind(enum.StrEnum):
    """What an agent sends in a round (one of each, idempotent)."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_UPDATE = "masked_update"
    CONSISTENCY_SIGNATURE = "consistency_signature"
    UNMASK_SHARES = "unmask_shares"
    TRAINING_REPORT = "training_report"
    DECLINE = "decline"


class RoundAssignment(_Wire):
    """The round an agent is selected for, and what it needs to take part."""

    federation: Name
    round: int = Field(ge=1)
    stage: Stage
    stage_deadline: datetime | None
    mode: AggregationMode
    status: MyStatus
    participant_id: int = Field(ge=1, description="This agent's secure-aggregation id.")
    participants: int = Field(ge=1)
    threshold: int = Field(ge=1)
    base_version: int = Field(ge=0, description="The model version to train from.")
    spec_fingerprint: str
    update_layout_fingerprint: str
    vector_length: int = Field(ge=1)
    bits: Literal[32, 64]
    #: The round's `privacy.secagg.RoundConfig` (its digest is the round id).
    config: SecAggBytes
    #: What the coordinator already holds from this agent.
    received: tuple[MessageKind, ...] = ()
    failure_reason: str | None = None
    #: The latest signed checkpoint of the coordinator's audit log: the agent checks that it
    #: extends the one it kept (a rewritten history would not), `agent/audit_anchor.py`.
    audit_checkpoint: AuditCheckpoint | None = None


#: Longest the coordinator holds a `GET /agent/v1/work?wait_s=...&seen=...` long poll.
MAX_WORK_WAIT_S: Final = 30.0
#: Header of a `/work` answer from a coordinator that holds long polls (its value: the
#: longest wait); an agent that does not see it falls back to polling.
LONG_POLL_HEADER: Final = "X-Fmtl-Long-Poll"


def work_state(assignment: RoundAssignment | None) -> str:
    """What an agent saw of its work, as `GET /agent/v1/work?seen=` carries it: a long poll
    answers as soon as the agent's round, stage or status is no longer this."""
    if assignment is None:
        return "none"
    return (
        f"{assignment.federation}/{assignment.round}/{assignment.stage.value}/"
        f"{assignment.status.value}"
    )


class WorkStatus(_Wire):
    """Answer of `GET /agent/v1/work`: the agent's current round, or none."""

    assignment: RoundAssignment | None = None
    #: Seconds to wait before polling again when there is nothing to do.
    poll_after_s: float = Field(default=5.0, ge=0.0)


class ReceiptOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    REPEAT = "repeat"  # the same message was already received; nothing changed


class Receipt(_Wire):
    """Answer to every message an agent sends."""

    kind: MessageKind
    outcome: ReceiptOutcome
    sha256: str


class AdvertiseKeys(_Wire):
    """Round 0: `privacy.secagg.KeyAdvert` bytes."""

    advert: SecAggBytes


class PeersKeys(_Wire):
    """Round 1 input: the `KeyBroadcast` of every agent that advertised in time (U1)."""

    broadcast: SecAggBytes


class SharesOut(_Wire):
    """Round 1: the sender's `ShareKeysMessage` (its encrypted shares for every holder)."""

    message: SecAggBytes


class SharesIn(_Wire):
    """Round 2 input: the `ShareBundle` addressed to the caller (U2 and its ciphertexts)."""

    bundle: SecAggBytes


class SurvivorSetOut(_Wire):
    """Round 3 input: the `SurvivorSet` U3 to sign."""

    survivors: SecAggBytes


class SurvivorSignature(_Wire):
    """Round 3: the caller's `ConsistencySignature` over U3."""

    signature: SecAggBytes


class ConsistencyProofOut(_Wire):
    """Round 4 input: the `ConsistencyProof` (>= t signatures on U3)."""

    proof: SecAggBytes


class UnmaskShares(_Wire):
    """Round 4: the caller's `UnmaskResponse`."""

    response: SecAggBytes


MetricName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]


class SpendReport(_Wire):
    """The differential-privacy cost of this round's local training (cumulative ε)."""

    noise_multiplier: float = Field(ge=0.0, le=1e6)
    sample_rate: float = Field(gt=0.0, le=1.0)
    steps: int = Field(ge=0, le=10_000_000)
    delta: float = Field(gt=0.0, lt=1.0)
    epsilon: float = Field(ge=0.0, description="Cumulative ε reported by the agent.")
    accountant: Literal["rdp", "prv"]
    budget_epsilon: float | None = Field(default=None, gt=0.0)
    run_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{8,64}$",
        description="The agent's identifier of the local training run that spent this "
        "(random, e.g. `secrets.token_urlsafe(16)`), stored with the agent's cached result and "
        "spend row and with the coordinator's ledger row: a run reported again under another "
        "round (a cached result sent again) is charged once, and a re-offered round number "
        "can never hide a run.",
    )

    @field_validator("noise_multiplier", "sample_rate", "delta", "epsilon", "budget_epsilon")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class TaskReport(_Wire):
    """One task's metrics of the *global* model on the agent's local validation split, sent
    only by an institution that opted in (`privacy.share_own_metrics`); never its size."""

    metrics: dict[MetricName, float] = Field(max_length=32)

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, metrics: dict[str, float]) -> dict[str, float]:
        for name, value in metrics.items():
            if not math.isfinite(value):
                raise ValueError(f"metric '{name}' is not a finite number")
        return metrics


class TrainingReport(_Wire):
    """Sent in clear with (after) the masked update: the DP spend, and the institution's own
    per-task metrics where it opted in (empty by default: the federation-wide metrics come
    from the validation statistics inside the masked update). No exact size leaves."""

    tasks: dict[Name, TaskReport] = Field(default_factory=dict, max_length=64)
    spend: SpendReport | None = None
    clipped: int = Field(default=0, ge=0, description="Update coordinates clipped.")


class Decline(_Wire):
    """An agent that will not take part in this round (e.g. reason "budget")."""

    reason: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9 _.,:;()/-]+$")


#: Decline reason meaning "my privacy budget would be exceeded": the coordinator stops
#: selecting the institution until it takes part again.
DECLINE_BUDGET: Final = "budget"

__all__ = [
    "BINARY_MEDIA_TYPE",
    "DECLINE_BUDGET",
    "MODEL_DTYPE_HEADER",
    "MODEL_LAYOUT_HEADER",
    "MODEL_SHA256_HEADER",
    "MODEL_VERSION_HEADER",
    "AdvertiseKeys",
    "AggregationMode",
    "ConsistencyProofOut",
    "Decline",
    "MessageKind",
    "ModelDtype",
    "MyStatus",
    "PeersKeys",
    "Receipt",
    "ReceiptOutcome",
    "RoundAssignment",
    "SecAggBytes",
    "SharesIn",
    "SharesOut",
    "SpendReport",
    "Stage",
    "SurvivorSetOut",
    "SurvivorSignature",
    "TaskReport",
    "TrainingReport",
    "UnmaskShares",
    "WorkStatus",
    "masked_update_size",
    "update_codec",
]
