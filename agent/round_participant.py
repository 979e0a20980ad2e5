"""One agent's part in the coordinator's rounds: poll, then do what the current stage needs.

The daemon calls `RoundParticipant.step()` in a loop. Each call asks the coordinator for the
agent's current round (`GET /agent/v1/work`) and performs at most the one stage that round is
in (Bonawitz et al. 2017, Fig. 4, client side, via `privacy.secagg.ClientRound`):

Before anything of a round is sent, at every stage, `RoundPolicy.check` (agent.round_policy)
judges the round against the pinned spec, the institution's settings and the signed roster;
a round it refuses is declined (or left, if the coordinator changed its story mid-round).

| stage | what `step` does |
|---|---|
| advertise_keys | decide (join or decline), make the round's key pairs, send the signed advert |
| share_keys | check the peers' adverts, share b_u and s_u^SK among the holders, send |
| masked_input | fetch shares and model, train (`LocalWork.train`), mask, upload, report |
| consistency_check | sign the survivor set |
| unmasking | reveal one share per peer (never both kinds for one peer) |

Every secret needed later is saved in the `RoundStateStore` *before* the message that
depends on it is sent, so a step interrupted anywhere can simply be called again: what the
coordinator already holds is listed in the assignment (`received`) and is not re-sent, what
it lacks is re-sent byte for byte (the coordinator answers `repeat` to a duplicate). The
masked update in particular is never recomputed: masking twice would leak the difference.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.audit_anchor import AuditAnchor, HistoryRewritten
from agent.coordinator_client import ClientError, CoordinatorClient, Rejected
from agent.local_work import CannotContinue, LocalWork
from agent.round_policy import Refusal, RoundPolicy
from agent.round_state import DamagedState, ParticipantState, RoundStateStore
from federation.layout import ParameterLayout
from federation.round_api import (
    AggregationMode,
    MessageKind,
    MyStatus,
    RoundAssignment,
    Stage,
    TaskReport,
    TrainingReport,
    update_codec,
    work_state,
)
from federation.spec import FederationSpec
from privacy.secagg import (
    ClientRound,
    ClientStage,
    ConsistencyProof,
    IdentityKey,
    KeyBroadcast,
    MaskedInput,
    RoundConfig,
    SecAggError,
    ShareBundle,
    SurvivorSet,
)

logger = logging.getLogger(__name__)

#: How a refusal's reason starts (`Refusal.reason`), where a left round keeps it.
REFUSED_PREFIX: Final = "refused ("


class Outcome(enum.StrEnum):
    IDLE = "idle"  # no round for this agent
    WAITING = "waiting"  # nothing to do in this stage (already answered, or not ready)
    DECLINED = "declined"
    REFUSED = "refused"  # the round failed this agent's policy checks (agent.round_policy)
    ADVERTISED = "advertised"
    SHARED = "shared"
    UPLOADED = "uploaded"
    SIGNED = "signed"
    UNMASKED = "unmasked"
    DROPPED = "dropped"  # left the round (missed a deadline, or could not go on)
    COMPLETED = "completed"  # the round completed (with or without this agent's update)
    FAILED = "failed"  # the round failed


@dataclass(frozen=True)
class StepResult:
    outcome: Outcome
    round: int | None = None
    stage: Stage | None = None
    detail: str = ""
    poll_after_s: float = 5.0
    #: Where this agent stands in a round that ended (the coordinator's `MyStatus`).
    my_status: MyStatus | None = None


class RoundParticipant:
    """Drives this agent through the coordinator's rounds, one `step()` at a time."""

    def __init__(
        self,
        client: CoordinatorClient,
        identity: Ed25519PrivateKey,
        store: RoundStateStore,
        work: LocalWork,
        *,
        policy: RoundPolicy,
        on_stage: Callable[[StepResult], None] | None = None,
        long_poll_s: float = 0.0,
        audit_anchor: AuditAnchor | None = None,
    ) -> None:
        self.client = client
        self.identity = IdentityKey(identity)
        self.store = store
        self.work = work
        self.policy = policy
        self.on_stage = on_stage
        #: With > 0, each step after a successful one waits (in the coordinator, up to this
        #: long) until the work differs from what that step saw: the next stage is pushed.
        self.long_poll_s = long_poll_s
        #: Checks that the audit checkpoint of each open round extends the last one seen.
        self.audit_anchor = audit_anchor
        self._seen: str | None = None

    @property
    def pushed(self) -> bool:
        """Whether the next step waits in the coordinator for the round to move on (long
        poll, answered by a coordinator that holds them), so its caller need not sleep."""
        return self.long_poll_s > 0 and self.client.long_poll

    # -- the loop body -------------------------------------------------------------------------

    def step(self) -> StepResult:
        """Poll once and do what the current stage needs (idempotent; see the module doc).

        With `long_poll_s`, the poll waits until the work changed since the last step that
        went through (a failed step's successor asks at once)."""
        seen, self._seen = self._seen, None
        status = self.client.work(wait_s=self.long_poll_s, seen=seen)
        assignment = status.assignment
        if assignment is None:
            self._seen = work_state(None)
            return StepResult(Outcome.IDLE, poll_after_s=status.poll_after_s)
        result = self._step(assignment)
        self._seen = work_state(assignment)
        result = StepResult(
            result.outcome,
            assignment.round,
            assignment.stage,
            result.detail,
            status.poll_after_s,
            result.my_status,
        )
        if self.on_stage is not None and result.outcome not in (Outcome.IDLE, Outcome.WAITING):
            self.on_stage(result)
        return result

    def _step(self, a: RoundAssignment) -> StepResult:
        key = ParticipantState.key(a.federation, a.round)
        if a.stage is Stage.COMPLETED:
            self.store.delete(key)
            return StepResult(Outcome.COMPLETED, detail=a.status.value, my_status=a.status)
        if a.stage is Stage.FAILED:
            self.store.delete(key)
            return StepResult(Outcome.FAILED, detail=a.failure_reason or "")
        if a.status is MyStatus.DECLINED:
            return StepResult(Outcome.DECLINED, detail="declined")
        if a.status is not MyStatus.SELECTED:
            self.store.delete(key)
            return StepResult(Outcome.DROPPED, detail="the coordinator dropped this agent")
        state = self._load(key, a)
        if state.abandoned:
            refused = state.abandoned.startswith(REFUSED_PREFIX)
            return StepResult(
                Outcome.REFUSED if refused else Outcome.DROPPED, detail=state.abandoned
            )
        if self.audit_anchor is not None:
            try:
                self.audit_anchor.check(a.audit_checkpoint)
            except HistoryRewritten as exc:
                reason = f"the coordinator's audit log history was rewritten: {exc}"
                self._save(key, state.with_(abandoned=reason))
                logger.error("leaving round %s: %s", a.round, reason)
                return StepResult(Outcome.DROPPED, detail=reason)
        # Before anything of this round is sent (and again at every stage: the coordinator
        # may change its story mid-round).
        refusal = self.policy.check(a, fresh=state.decision is None and state.client_state is None)
        if refusal is not None:
            return self._refuse(key, a, state, refusal)
        if state.decision is None:
            decision = self.work.decide(a)
            state = state.with_(
                decision="join" if decision.join else "decline",
                decline_reason=decision.reason,
            )
            self._save(key, state)
        if state.decision == "decline":
            if MessageKind.DECLINE not in a.received:
                self.client.decline(a.round, state.decline_reason or "declined")
            return StepResult(Outcome.DECLINED, detail=state.decline_reason or "")
        try:
            return self._stage(key, a, state)
        except Rejected as exc:
            if exc.status == 409:  # not ready yet, or the stage moved on: poll again
                return StepResult(Outcome.WAITING, detail=exc.detail)
            raise
        except (SecAggError, CannotContinue) as exc:
            # The protocol cannot go on for this agent (e.g. the coordinator says it never
            # shared keys, or a peer's share does not authenticate): stop, say why.
            reason = f"{type(exc).__name__}: {exc}"
            self._save(key, state.with_(abandoned=reason))
            logger.warning("leaving round %s: %s", a.round, reason)
            return StepResult(Outcome.DROPPED, detail=reason)

    def _refuse(
        self, key: str, a: RoundAssignment, state: ParticipantState, refusal: Refusal
    ) -> StepResult:
        """Decline a round that fails the policy (leave it, if keys were already made): the
        decline carries the reason, and nothing else of the round is ever sent."""
        if state.client_state is None and state.masked_update is None:
            state = state.with_(decision="decline", decline_reason=refusal.wire_reason)
        else:
            state = state.with_(abandoned=refusal.reason[:500])
        self._save(key, state)
        if MessageKind.DECLINE not in a.received:
            try:
                self.client.decline(a.round, refusal.wire_reason)
            except Rejected as exc:  # the round moved on: it goes on (or fails) without us
                logger.info("decline of round %s not taken: %s", a.round, exc.detail)
        return StepResult(Outcome.REFUSED, detail=refusal.reason)

    # -- stages --------------------------------------------------------------------------------

    def _stage(self, key: str, a: RoundAssignment, state: ParticipantState) -> StepResult:
        received = set(a.received)
        if a.stage is Stage.ADVERTISE_KEYS:
            client = self._client(key, a, state, create=True)
            if MessageKind.ADVERTISE_KEYS in received:
                return StepResult(Outcome.WAITING, detail="keys advertised")
            self.client.advertise_keys(a.round, client.advert().to_bytes())
            return StepResult(Outcome.ADVERTISED)
        if a.stage is Stage.SHARE_KEYS:
            if MessageKind.SHARE_KEYS in received:
                return StepResult(Outcome.WAITING, detail="shares sent")
            client = self._client(key, a, state)
            broadcast = KeyBroadcast.from_bytes(self.client.peers_keys(a.round))
            message = client.share_keys(broadcast)
            state = self._save(key, state.with_(client_state=client.export_state()))
            self.client.send_shares(a.round, message.to_bytes())
            return StepResult(Outcome.SHARED)
        if a.stage is Stage.MASKED_INPUT:
            return self._masked_input(key, a, state, received)
        if a.stage is Stage.CONSISTENCY_CHECK:
            self._send_report(a, state, received)
            if MessageKind.CONSISTENCY_SIGNATURE in received:
                return StepResult(Outcome.WAITING, detail="survivor set signed")
            client = self._client(key, a, state)
            survivors = SurvivorSet.from_bytes(self.client.survivors(a.round))
            signature = client.sign_survivors(survivors)
            self._save(key, state.with_(client_state=client.export_state()))
            self.client.sign_survivors(a.round, signature.to_bytes())
            return StepResult(Outcome.SIGNED)
        if a.stage is Stage.UNMASKING:
            if MessageKind.UNMASK_SHARES in received:
                return StepResult(Outcome.WAITING, detail="unmask shares sent")
            client = self._client(key, a, state)
            proof = ConsistencyProof.from_bytes(self.client.consistency_proof(a.round))
            response = client.unmask(proof)
            self._save(key, state.with_(client_state=client.export_state()))
            self.client.unmask(a.round, response.to_bytes())
            return StepResult(Outcome.UNMASKED)
        return StepResult(Outcome.WAITING, detail=a.stage.value)

    def _masked_input(
        self, key: str, a: RoundAssignment, state: ParticipantState, received: set[MessageKind]
    ) -> StepResult:
        if MessageKind.MASKED_UPDATE in received:
            self._send_report(a, state, received)
            return StepResult(Outcome.WAITING, detail="masked update uploaded")
        if state.masked_update is None:
            config = RoundConfig.from_bytes(a.config)
            spec = self._federation_spec(a)
            client = None
            bundle = None
            if a.mode is AggregationMode.SECURE:
                client = self._client(key, a, state)
                if client.stage >= ClientStage.MASKED:
                    raise CannotContinue("this agent already masked an update it no longer has")
                bundle = ShareBundle.from_bytes(self.client.fetch_shares(a.round))
            model = self.client.global_model(a.round)
            model_layout = ParameterLayout.model(spec)
            if model.layout_fingerprint != model_layout.fingerprint:
                raise CannotContinue("the global model was made for another model layout")
            local = self.work.train(a, model.vector)
            update_layout = ParameterLayout.update(spec)
            if update_layout.fingerprint != a.update_layout_fingerprint:
                raise CannotContinue("the round uses another update layout than this spec")
            codec = update_codec(spec, config.n)
            encoded = codec.encode(
                {s.name: np.asarray(local.contribution.segments[s.name]) for s in codec.segments}
            ).vector
            if client is not None and bundle is not None:
                masked = client.masked_input(bundle, encoded)
                client_state: bytes | None = client.export_state()
            else:
                masked = MaskedInput(config.digest, a.participant_id, encoded)
                client_state = state.client_state
            # What leaves in clear (docs/rounds.md): the spend, and the institution's own
            # metrics only where it opted in (`LocalWork` leaves them empty otherwise).
            report = TrainingReport(
                tasks={task: TaskReport(metrics=values) for task, values in local.metrics.items()},
                spend=local.spend,
                clipped=local.contribution.clipped,
            )
            state = self._save(
                key,
                state.with_(
                    client_state=client_state,
                    masked_update=masked.to_bytes(),
                    report=report.model_dump_json().encode(),
                ),
            )
        assert state.masked_update is not None
        self.client.upload_masked_update(a.round, state.masked_update)
        self._send_report(a, state, received)
        return StepResult(Outcome.UPLOADED)

    def _send_report(
        self, a: RoundAssignment, state: ParticipantState, received: set[MessageKind]
    ) -> None:
        if state.report is None or MessageKind.TRAINING_REPORT in received:
            return
        try:
            self.client.report(a.round, TrainingReport.model_validate_json(state.report))
        except Rejected as exc:  # a report is best effort: the update counts without it
            logger.warning("training report of round %s refused: %s", a.round, exc)

    # -- state -----------------------------------------------------------------------------

    def _load(self, key: str, a: RoundAssignment) -> ParticipantState:
        data = self.store.load(key)
        if data is None:
            return ParticipantState(a.federation, a.round)
        try:
            return ParticipantState.from_bytes(data)
        except DamagedState as exc:
            raise ClientError(f"the saved state of round {a.round} is damaged: {exc}") from None

    def _save(self, key: str, state: ParticipantState) -> ParticipantState:
        self.store.save(key, state.to_bytes())
        return state

    def _client(
        self, key: str, a: RoundAssignment, state: ParticipantState, *, create: bool = False
    ) -> ClientRound:
        if state.client_state is not None:
            return ClientRound.restore(state.client_state, self.identity)
        if not create:
            raise CannotContinue("this agent has no key pairs for the round (it joined late)")
        client = ClientRound.start(
            RoundConfig.from_bytes(a.config), a.participant_id, self.identity
        )
        self._save(key, state.with_(client_state=client.export_state()))
        return client

    def _federation_spec(self, a: RoundAssignment) -> FederationSpec:
        """The spec pinned at enrollment (the policy refused any round of another one)."""
        if a.spec_fingerprint != self.policy.profile.spec_fingerprint:
            raise CannotContinue("the round's federation spec is not the pinned one")
        return self.policy.spec
