"""The institution's privacy policy for rounds: what an honest agent checks before it sends.

The coordinator may lie (DESIGN.md, "Security model"; docs/secagg.md, "Threat model"). It
hands each agent a `RoundAssignment` and the round's `privacy.secagg.RoundConfig`, and
everything a round's privacy rests on is in those: the aggregation mode, the participants
(n) and their identity keys, the reconstruction threshold t, the neighbour graph, the round
context. `RoundPolicy.check` is the one entry point that judges them, against

- the federation spec the agent pinned at enrollment (`profile.json`; a changed spec needs
  the institution's consent: `fmtl agent accept-spec`), never against the coordinator's
  live answer;
- the institution's own settings in agent.toml (unmasked rounds only with the loudly named
  `[privacy] insecure_allow_unmasked_rounds`, itself refused off loopback);
- the federation's roster signed by the admin key the institution pinned (`RosterCheck`,
  `agent.roster`), so the coordinator cannot add sybils to a round.

`RoundParticipant.step` calls it at every stage, before anything of the round is sent: a
round that fails is refused (`Refusal`): declined when this agent has sent nothing yet (the
round goes on without it, or fails for lack of participants), or left at once when the
coordinator changed its story mid-round. Nothing is trained, nothing is spent.

The SecAgg+ graph's degree and neighbourhood threshold are checked in
`_check_neighbour_graph` (`privacy.secagg.graph_security`, against agent.toml's
`[neighbour_graph]`); its seed is derived from every participant's signed advert.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from federation.layout import ParameterLayout
from federation.round_api import AggregationMode, RoundAssignment
from federation.spec import FederationSpec
from federation.wire import AgentProfile
from privacy.secagg import RoundConfig, SecAggError
from privacy.secagg.graph_security import GraphPolicy, check_round_graph

#: From this many participants on, `neighbour_graph = "auto"` uses the SecAgg+ graph (the
#: coordinator's rule, coordinator/rounds/engine.py AUTO_GRAPH_FROM).
AUTO_GRAPH_FROM: Final = 32
#: Characters a decline reason may carry to the coordinator (federation.round_api.Decline).
_WIRE_UNSAFE: Final = re.compile(r"[^A-Za-z0-9 _.,:;()/-]+")
_WIRE_MAX: Final = 200


class RefusalKind(enum.StrEnum):
    """Why a round was refused (the first word of the log line and of the decline)."""

    MODE = "mode"
    SPEC = "spec"
    CONTEXT = "context"
    PARTICIPANTS = "participants"
    THRESHOLD = "threshold"
    SHAPE = "shape"
    GRAPH = "graph"
    ROSTER = "roster"
    REPLAY = "replay"


@dataclass(frozen=True)
class Refusal:
    """A round this agent will not take part in, and why (one readable line)."""

    kind: RefusalKind
    detail: str

    @property
    def reason(self) -> str:
        return f"refused ({self.kind.value}): {self.detail}"

    @property
    def wire_reason(self) -> str:
        """The reason as a `Decline` carries it (its character set, 200 characters)."""
        return _WIRE_UNSAFE.sub(" ", self.reason)[:_WIRE_MAX].strip() or "refused"


class RosterCheck(Protocol):
    """Checks a round's participants against the federation's signed roster
    (`agent.roster.SignedRosterCheck`); returns why not, or None when every key is listed."""

    def check_members(self, config: RoundConfig) -> str | None: ...


class RoundPolicy:
    """Judges each round an agent is assigned to (see the module doc).

    `profile` is the pinned enrollment (never the coordinator's live answer); `identity` the
    raw public identity key of this agent; `allow_unmasked` the agent.toml opt-in for plain
    rounds; `roster` the signed-roster check (None only for tests and benchmarks that run
    against a coordinator they trust); `ended` tells whether this agent already saw a
    round of that number end (a re-offered round number is refused).
    """

    def __init__(
        self,
        profile: AgentProfile,
        identity: bytes,
        *,
        allow_unmasked: bool = False,
        roster: RosterCheck | None = None,
        ended: Callable[[str, int], bool] | None = None,
        graph: GraphPolicy | None = None,
    ) -> None:
        if profile.spec.fingerprint() != profile.spec_fingerprint:
            raise ValueError("the pinned spec does not match its pinned fingerprint")
        self.profile = profile
        self.identity = identity
        self.allow_unmasked = allow_unmasked
        self.roster = roster
        self.ended = ended
        #: What a SecAgg+ graph must withstand (agent.toml [neighbour_graph]).
        self.graph = graph or GraphPolicy()
        self._update_length = ParameterLayout.update(profile.spec).length
        self._update_fingerprint = ParameterLayout.update(profile.spec).fingerprint

    @property
    def spec(self) -> FederationSpec:
        """The pinned federation spec: what this agent trains, encodes and checks against."""
        return self.profile.spec

    def check(self, a: RoundAssignment, *, fresh: bool) -> Refusal | None:
        """None when the round may go on; else the first reason it may not.

        `fresh`: this agent has no state for the round yet (nothing sent)."""
        spec = self.spec
        pinned = self.profile
        if a.federation != pinned.federation:
            return Refusal(
                RefusalKind.CONTEXT,
                f"round of federation '{a.federation}', enrolled in '{pinned.federation}'",
            )
        if a.spec_fingerprint != pinned.spec_fingerprint:
            return Refusal(
                RefusalKind.SPEC,
                f"the round uses spec {a.spec_fingerprint[:12]}, pinned "
                f"{pinned.spec_fingerprint[:12]}; review it: fmtl agent accept-spec",
            )
        refusal = self._check_mode(a)
        if refusal is not None:
            return refusal
        try:
            config = RoundConfig.from_bytes(a.config)
        except SecAggError as exc:
            return Refusal(RefusalKind.CONTEXT, f"the round config is invalid: {exc}")
        for check in (
            self._check_context,
            self._check_participants,
            self._check_threshold,
            self._check_shape,
            self._check_neighbour_graph,
        ):
            refusal = check(a, config, spec)
            if refusal is not None:
                return refusal
        if fresh and self.ended is not None and self.ended(a.federation, a.round):
            return Refusal(RefusalKind.REPLAY, f"round {a.round} already ended for this agent")
        if self.roster is not None:
            problem = self.roster.check_members(config)
            if problem is not None:
                return Refusal(RefusalKind.ROSTER, problem)
        return None

    # -- the checks, each on its own ----------------------------------------------------------

    def _check_mode(self, a: RoundAssignment) -> Refusal | None:
        pinned = AggregationMode(self.spec.secagg.mode)
        if a.mode is not pinned:
            return Refusal(
                RefusalKind.MODE, f"aggregation mode '{a.mode.value}', pinned '{pinned.value}'"
            )
        if a.mode is AggregationMode.PLAIN and not self.allow_unmasked:
            return Refusal(
                RefusalKind.MODE,
                "an unmasked (plain) round, and agent.toml does not set "
                "[privacy] insecure_allow_unmasked_rounds",
            )
        return None

    def _check_context(
        self, a: RoundAssignment, config: RoundConfig, spec: FederationSpec
    ) -> Refusal | None:
        context = config.context
        if context.federation != a.federation or context.round != a.round:
            return Refusal(
                RefusalKind.CONTEXT,
                f"the config is for {context.federation} round {context.round}, the assignment "
                f"for {a.federation} round {a.round}",
            )
        try:
            me = config.participant(a.participant_id)
        except SecAggError:
            return Refusal(
                RefusalKind.CONTEXT, f"this agent's id {a.participant_id} is not in the round"
            )
        if me.identity.to_bytes() != self.identity:
            return Refusal(
                RefusalKind.CONTEXT, f"participant {a.participant_id} has another identity key"
            )
        return None

    def _check_participants(
        self, a: RoundAssignment, config: RoundConfig, spec: FederationSpec
    ) -> Refusal | None:
        n = config.n
        schedule = spec.schedule
        if a.participants != n:
            return Refusal(
                RefusalKind.PARTICIPANTS,
                f"the assignment says n = {a.participants}, the config {n}",
            )
        if not schedule.min_participants <= n <= schedule.max_participants:
            return Refusal(
                RefusalKind.PARTICIPANTS,
                f"n = {n} participants, the spec allows {schedule.min_participants} to "
                f"{schedule.max_participants}",
            )
        keys = {p.identity.to_bytes() for p in config.participants}
        if len(keys) != n:
            return Refusal(RefusalKind.PARTICIPANTS, "two participants share one identity key")
        return None

    def _check_threshold(
        self, a: RoundAssignment, config: RoundConfig, spec: FederationSpec
    ) -> Refusal | None:
        n, t = config.n, config.threshold
        needed = spec.secagg.threshold(n)  # ceil(fraction * n), > n/2
        if a.threshold != t:
            return Refusal(
                RefusalKind.THRESHOLD, f"the assignment says t = {a.threshold}, the config {t}"
            )
        if t < needed or 2 * t <= n:
            return Refusal(
                RefusalKind.THRESHOLD,
                f"t = {t} of n = {n}, the pinned spec needs t >= {needed} "
                f"(fraction {spec.secagg.threshold_fraction:.3g}, and t > n/2)",
            )
        return None

    def _check_shape(
        self, a: RoundAssignment, config: RoundConfig, spec: FederationSpec
    ) -> Refusal | None:
        if config.bits != spec.secagg.bits or a.bits != config.bits:
            return Refusal(
                RefusalKind.SHAPE, f"{config.bits}-bit masking, pinned {spec.secagg.bits}"
            )
        if (
            config.vector_length != self._update_length
            or a.vector_length != config.vector_length
            or a.update_layout_fingerprint != self._update_fingerprint
        ):
            return Refusal(
                RefusalKind.SHAPE,
                f"an update of {config.vector_length} coordinates, the pinned spec's layout "
                f"has {self._update_length}",
            )
        return None

    def _check_neighbour_graph(
        self, a: RoundAssignment, config: RoundConfig, spec: FederationSpec
    ) -> Refusal | None:
        """The SecAgg+ neighbour graph: used only where the pinned spec says so, and then
        with a degree and neighbourhood threshold that meet agent.toml's [neighbour_graph]
        (`privacy.secagg.graph_security`: the stated colluding and dropout fractions at the
        stated failure probability). The graph's seed is not the coordinator's to choose: it
        is derived from every participant's signed advert (`RoundConfig.bind_graph`), and a
        config that carries one does not even parse."""
        graph = config.graph
        if graph is None:
            return None  # the complete graph: every survivor holds every secret
        if a.mode is AggregationMode.PLAIN:
            return Refusal(RefusalKind.GRAPH, "a neighbour graph in an unmasked round")
        choice = spec.secagg.neighbour_graph
        if choice == "never" or (choice == "auto" and config.n < AUTO_GRAPH_FROM):
            return Refusal(
                RefusalKind.GRAPH,
                f"a neighbour graph for n = {config.n}, the pinned spec says '{choice}'",
            )
        problem = check_round_graph(config, self.graph)
        if problem is not None:
            return Refusal(RefusalKind.GRAPH, problem)
        return None


__all__ = [
    "AUTO_GRAPH_FROM",
    "Refusal",
    "RefusalKind",
    "RosterCheck",
    "RoundPolicy",
]
