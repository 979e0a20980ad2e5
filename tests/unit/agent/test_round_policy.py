"""The round policy: every weakening a lying coordinator can put in a round is refused.

Each test builds the round an honest coordinator would open for the pinned spec, checks
that it passes, then changes one thing the way an attacker would and checks the refusal.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.round_policy import Refusal, RefusalKind, RoundPolicy
from federation.layout import ParameterLayout
from federation.round_api import AggregationMode, MyStatus, RoundAssignment, Stage
from federation.spec import FederationSpec
from federation.wire import AgentProfile
from privacy.secagg import (
    IdentityPublicKey,
    NeighbourGraph,
    RoundConfig,
    RoundContext,
    RoundMember,
)


def _profile(spec: FederationSpec) -> AgentProfile:
    return AgentProfile(
        institution_id=1,
        key_id="k1",
        institution="cleveland",
        federation=spec.name,
        tasks_held=("disease",),
        enrolled_at=datetime.now(UTC),
        spec=spec,
        spec_fingerprint=spec.fingerprint(),
    )


class Round:
    """The round an honest coordinator opens for `spec`, with this agent as id 1."""

    def __init__(self, spec: FederationSpec, n: int = 4) -> None:
        self.spec = spec
        self.me = Ed25519PrivateKey.generate()
        self.keys = [self.me] + [Ed25519PrivateKey.generate() for _ in range(n - 1)]
        self.layout = ParameterLayout.update(spec)
        self.config = RoundConfig(
            RoundContext(spec.name, 7),
            self.members(),
            spec.secagg.threshold(n),
            self.layout.length,
            spec.secagg.bits,
        )

    def members(self, keys: list[Ed25519PrivateKey] | None = None) -> tuple[RoundMember, ...]:
        return tuple(
            RoundMember(i + 1, f"site_{i}", IdentityPublicKey(k.public_key().public_bytes_raw()))
            for i, k in enumerate(keys or self.keys)
        )

    def assignment(self, config: RoundConfig | None = None, **changes: object) -> RoundAssignment:
        config = config or self.config
        fields: dict[str, object] = {
            "federation": self.spec.name,
            "round": config.context.round,
            "stage": Stage.ADVERTISE_KEYS,
            "stage_deadline": None,
            "mode": AggregationMode(self.spec.secagg.mode),
            "status": MyStatus.SELECTED,
            "participant_id": 1,
            "participants": config.n,
            "threshold": config.threshold,
            "base_version": 0,
            "spec_fingerprint": self.spec.fingerprint(),
            "update_layout_fingerprint": self.layout.fingerprint,
            "vector_length": config.vector_length,
            "bits": config.bits,
            "config": config.to_bytes(),
        }
        fields.update(changes)
        return RoundAssignment.model_validate(fields)

    def policy(self, **options: object) -> RoundPolicy:
        return RoundPolicy(
            _profile(self.spec),
            self.me.public_key().public_bytes_raw(),
            **options,  # type: ignore[arg-type]
        )


def refusal(policy: RoundPolicy, assignment: RoundAssignment) -> Refusal:
    found = policy.check(assignment, fresh=True)
    assert found is not None, "the round should have been refused"
    return found


@pytest.fixture
def spec(heart_spec: FederationSpec) -> FederationSpec:
    """The example's spec, for up to 100 participants."""
    schedule = heart_spec.schedule.model_copy(update={"max_participants": 100})
    return heart_spec.model_copy(update={"schedule": schedule})


@pytest.fixture
def honest(spec: FederationSpec) -> Round:
    return Round(spec)


def test_an_honest_round_passes(honest: Round) -> None:
    assert honest.policy().check(honest.assignment(), fresh=True) is None


def test_switching_masking_off_is_refused(honest: Round) -> None:
    found = refusal(honest.policy(), honest.assignment(mode=AggregationMode.PLAIN))
    assert found.kind is RefusalKind.MODE
    assert "'plain', pinned 'secure'" in found.reason
    # Even an institution that opted into unmasked rounds refuses one its spec did not pin.
    assert refusal(honest.policy(allow_unmasked=True), honest.assignment(mode="plain")).kind is (
        RefusalKind.MODE
    )


def test_a_plain_spec_needs_the_institutions_opt_in(spec: FederationSpec) -> None:
    plain = spec.model_copy(update={"secagg": spec.secagg.model_copy(update={"mode": "plain"})})
    round_ = Round(plain)
    found = refusal(round_.policy(), round_.assignment())
    assert "insecure_allow_unmasked_rounds" in found.reason
    assert round_.policy(allow_unmasked=True).check(round_.assignment(), fresh=True) is None


def test_a_threshold_below_the_pinned_fraction_is_refused(honest: Round) -> None:
    # n = 4: the pinned 2/3 needs t >= 3; t = 3 is also the smallest t > n/2 here, so a
    # larger round shows the fraction rule on its own.
    big = Round(honest.spec, n=9)
    weak = replace(big.config, threshold=5)  # > n/2, but below ceil(2/3 * 9) = 6
    found = refusal(big.policy(), big.assignment(weak))
    assert found.kind is RefusalKind.THRESHOLD
    assert "t = 5 of n = 9" in found.reason
    assert "t >= 6" in found.reason


def test_an_assignment_that_disagrees_with_its_config_is_refused(honest: Round) -> None:
    assert refusal(honest.policy(), honest.assignment(threshold=4)).kind is RefusalKind.THRESHOLD
    assert refusal(honest.policy(), honest.assignment(participants=9)).kind is (
        RefusalKind.PARTICIPANTS
    )


def test_too_few_participants_are_refused(honest: Round) -> None:
    small = Round(honest.spec, n=2)  # the example's spec needs min_participants >= 3
    assert honest.spec.schedule.min_participants > 2
    found = refusal(small.policy(), small.assignment())
    assert found.kind is RefusalKind.PARTICIPANTS
    assert "n = 2 participants" in found.reason


def test_a_round_of_another_context_is_refused(honest: Round) -> None:
    other = replace(honest.config, context=RoundContext("elsewhere", 7))
    assert refusal(honest.policy(), honest.assignment(other)).kind is RefusalKind.CONTEXT
    replayed = replace(honest.config, context=RoundContext(honest.spec.name, 6))
    found = refusal(honest.policy(), honest.assignment(replayed, round=7))
    assert found.kind is RefusalKind.CONTEXT
    assert refusal(honest.policy(), honest.assignment(federation="elsewhere")).kind is (
        RefusalKind.CONTEXT
    )


def test_a_substituted_identity_key_for_this_agent_is_refused(honest: Round) -> None:
    keys = [Ed25519PrivateKey.generate(), *honest.keys[1:]]
    swapped = replace(honest.config, participants=honest.members(keys))
    found = refusal(honest.policy(), honest.assignment(swapped))
    assert found.kind is RefusalKind.CONTEXT
    assert "another identity key" in found.reason


def test_a_round_of_another_spec_is_refused(honest: Round) -> None:
    found = refusal(honest.policy(), honest.assignment(spec_fingerprint="0" * 64))
    assert found.kind is RefusalKind.SPEC
    assert "fmtl agent accept-spec" in found.reason


def test_another_shape_is_refused(honest: Round) -> None:
    longer = replace(honest.config, vector_length=honest.config.vector_length + 1)
    found = refusal(honest.policy(), honest.assignment(longer))
    assert found.kind is RefusalKind.SHAPE


def test_a_neighbour_graph_the_spec_does_not_use_is_refused(honest: Round) -> None:
    round_ = Round(honest.spec, n=8)
    graphed = replace(round_.config, graph=NeighbourGraph(4, 3))
    found = refusal(round_.policy(), round_.assignment(graphed))
    assert found.kind is RefusalKind.GRAPH
    assert "'auto'" in found.reason


def test_a_reoffered_round_number_is_refused(honest: Round) -> None:
    policy = honest.policy(ended=lambda federation, number: number == 7)
    assert refusal(policy, honest.assignment()).kind is RefusalKind.REPLAY
    # Once this agent has state for the round (it is taking part), it is not a replay.
    assert policy.check(honest.assignment(), fresh=False) is None


def test_the_decline_reason_fits_the_wire(honest: Round) -> None:
    found = refusal(honest.policy(), honest.assignment(mode=AggregationMode.PLAIN))
    from federation.round_api import Decline

    assert Decline(reason=found.wire_reason).reason.startswith("refused (mode)")
