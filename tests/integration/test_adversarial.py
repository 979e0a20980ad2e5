"""An active, malicious coordinator against real agents: every move is refused.

The victim is a real agent process (`fmtl agent run`, the Cleveland hospital of the
heart-disease example) that talks to the coordinator through `LyingCoordinator`, which
rewrites the rounds it is assigned the way a lying coordinator would: masking switched off,
a round shrunk to the victim and one peer, another federation spec, a threshold at n/2,
a peer's identity key replaced by one of the coordinator's own (a sybil the admin's
signed roster does not list).
For every move the victim refuses before it sends anything of the round but its decline,
logs one `round_refused` line, shows the refusal in `fmtl agent status`, and spends
nothing; three honest agents (lightweight, over the same signed HTTP) complete the round
without it. On the embedded coordinator and on the production stack (PostgreSQL, Redis, a
worker and a beat process).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federation.spec import FederationSpec
from privacy.dp.accountant import published_sample_rate

from .agent_stack import HOSPITALS, ROUND_DEADLINE_S, Hospital, Stack, enroll_all, open_stack
from .agent_stack import start_all as start_agents
from .conftest import enroll_over_http, wait_until
from .malicious_coordinator import (
    HonestPeers,
    Lie,
    LyingCoordinator,
    add_a_sybil,
    change_the_spec,
    lower_the_threshold,
    shrink_the_round,
    switch_masking_off,
)

pytestmark = pytest.mark.integration

#: The refusing victim declines at once and the lightweight peers answer at once, so no
#: round waits out this deadline; it only bounds the honest round, where the victim trains
#: for real (on a loaded machine that took over 20 s).
STAGE_S = 90.0
VICTIM = HOSPITALS[0]

#: Each move, and the kind of refusal it must meet (`agent.round_policy.RefusalKind`).
MOVES: list[tuple[Lie, str]] = [
    (switch_masking_off, "mode"),
    (shrink_the_round, "participants"),
    (change_the_spec, "spec"),
    (lower_the_threshold, "context"),  # t = n/2 makes the config itself invalid
    (add_a_sybil, "roster"),
]


@pytest.fixture(params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    with open_stack(request, tmp_path) as opened:
        yield opened


def _statuses(stack: Stack, federation: str, round_: dict[str, Any]) -> dict[str, str]:
    names = stack.institution_ids(federation)
    return {names[int(p["institution_id"])]: str(p["status"]) for p in round_["participant_list"]}


def test_an_honest_agent_refuses_every_move_of_a_lying_coordinator(
    stack: Stack, tmp_path: Path
) -> None:
    federation = "adversarial"
    spec = FederationSpec.model_validate(
        stack.create_federation(federation, stage_timeout_s=STAGE_S)
    )
    token = stack.admin["Authorization"].removeprefix("Bearer ")
    with LyingCoordinator(stack.url) as liar:
        victim = Hospital(VICTIM, tmp_path / VICTIM, liar.url)
        try:
            honest = [
                enroll_over_http(stack.url, token, federation, name, ["disease"])
                for name in HOSPITALS[1:]
            ]
            enroll_all(stack, federation, [victim])  # and the admin signs the roster of all
            start_agents([victim])
            with HonestPeers(stack.url, honest, spec) as peers:
                _honest_round(stack, federation, liar)
                spent = victim.status()["budget"]
                numbers = _every_move(stack, federation, liar, victim)
            assert not peers.errors, peers.errors
            # Nothing was spent for any of the refused rounds.
            status = victim.status()
            assert status["budget"]["trainings"] == spent["trainings"] == 1
            assert status["budget"]["epsilon_spent"] == spent["epsilon_spent"] > 0.0
            refused = [e["round"] for e in victim.events() if e.get("event") == "round_refused"]
            assert refused == numbers  # one line per refused round
        finally:
            victim.stop()


def _honest_round(stack: Stack, federation: str, liar: LyingCoordinator) -> None:
    """A round told truthfully: the victim passes its own checks and takes part, and what
    it sends in clear is only its spend, with q on the published grid (no metrics of its
    own, no size: the federation-wide metrics come from the secure sums)."""
    liar.lie = None
    number = stack.start_round(federation)
    ended = stack.wait_round(federation, number)
    assert ended["stage"] == "completed", ended.get("failure_reason")
    assert _statuses(stack, federation, ended)[VICTIM] == "completed"
    report = liar.reports[number]
    assert report["tasks"] == {}
    assert set(report) == {"tasks", "spend", "clipped"}
    q = report["spend"]["sample_rate"]
    assert published_sample_rate(q) == q
    results = stack.get(f"/api/v1/federations/{federation}/results?round={number}")
    assert results, "the federation-wide metrics of the round"
    assert {item["scope"] for item in results} == {"federation"}


def _every_move(
    stack: Stack, federation: str, liar: LyingCoordinator, victim: Hospital
) -> list[int]:
    """One round per move; the round numbers."""
    numbers = []
    declined_before = victim.status()["rounds"]["declined"]
    for round_index, (move, kind) in enumerate(MOVES, start=1):
        liar.lie = move
        number = stack.start_round(federation)
        numbers.append(number)
        ended = stack.wait_round(federation, number)
        # The honest agents complete the round without the victim.
        assert ended["stage"] == "completed", ended.get("failure_reason")
        statuses = _statuses(stack, federation, ended)
        assert statuses[VICTIM] == "declined", (move.__name__, statuses)
        assert sorted(s for n, s in statuses.items() if n != VICTIM) == ["completed"] * 3
        # Nothing of the round left the victim but its decline.
        sent = liar.sent_in_round(number)
        assert set(sent) == {("POST", f"/agent/v1/rounds/{number}/decline")}, (
            move.__name__,
            sent,
        )

        def shown(number: int = number) -> bool:
            refusals = victim.status()["refusals"]
            return any(r["round"] == number for r in refusals)

        wait_until(shown, ROUND_DEADLINE_S, f"the refusal of round {number} in status")
        status = victim.status()
        latest = status["refusals"][-1]
        assert latest["reason"].startswith(f"refused ({kind})"), (move.__name__, latest)
        assert status["rounds"]["declined"] == declined_before + round_index
        assert victim.logged("round_refused", round=number)
    return numbers
