"""Real agent processes (`fmtl agent enroll` / `fmtl agent run`) against a real coordinator.

Every test runs twice: on the embedded coordinator (SQLite, in-process worker) and on the
production stack (PostgreSQL, Redis, a Celery `worker` and a `beat` process). Four hospitals
of the heart-disease example each run their own agent process, with their own data file,
tasks, identity key, encrypted round state and privacy ledger; they talk signed HTTP to
the coordinator on loopback. Rounds are small (a few DP-SGD steps) to keep this quick.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from agent.data import load_dataset
from agent.identity import load_identity
from agent.mapping import DataMapping
from agent.state_store import EncryptedFileStore
from agent.training import LocalTrainer
from agent.work import decode_result, result_key
from federation.aggregation import Contribution, apply_sums
from federation.layout import ParameterLayout
from federation.spec import FederationSpec

from .agent_stack import (
    EXAMPLE,
    HOSPITALS,
    ROUND_DEADLINE_S,
    Hospital,
    Stack,
    TamperingProxy,
    enroll_all,
    open_stack,
    start_all,
)
from .conftest import wait_until

pytestmark = pytest.mark.integration

#: Stage deadline of the tests where an agent is lost (the round waits for it this long).
#: Agents learn of each stage at once (long polls), so the honest ones need only their own
#: few training steps of it.
SHORT_STAGE_S = 15.0
#: Stage deadline where every agent is expected to answer (or is restarted and then does).
LONG_STAGE_S = 40.0


@pytest.fixture(params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    with open_stack(request, tmp_path) as opened:
        yield opened


@pytest.fixture
def hospitals(stack: Stack, tmp_path: Path) -> Iterator[list[Hospital]]:
    made = [
        Hospital(name, tmp_path / name, stack.url, roster_key=stack.roster_fingerprint)
        for name in HOSPITALS
    ]
    yield made
    for hospital in made:
        hospital.stop()


def _spec(document: dict[str, Any]) -> FederationSpec:
    return FederationSpec.model_validate(document)


def _statuses(stack: Stack, federation: str, round_: dict[str, Any]) -> dict[str, str]:
    names = stack.institution_ids(federation)
    return {names[int(p["institution_id"])]: str(p["status"]) for p in round_["participant_list"]}


def _validation_loss(spec: FederationSpec, vector: NDArray[np.float64]) -> float:
    """Mean per-task validation loss over the four hospitals' own validation splits."""
    losses = []
    for name in HOSPITALS:
        mapping = DataMapping.from_toml(EXAMPLE / f"mapping_{name}.toml")
        trainer = LocalTrainer(
            spec, load_dataset(mapping, spec), device="cpu", reproducible_dp_seed=0
        )
        for metrics in trainer.evaluate(vector).values():
            losses.append(metrics["loss"])
    return float(np.mean(losses))


def _stored_contribution(hospital: Hospital, federation: str, number: int) -> Contribution | None:
    """What a hospital's agent trained this round, read from its encrypted round state
    (the test holds the key file, as the institution does)."""
    config_state = hospital.folder / "state"
    identity = load_identity(config_state / "identity.key", None)
    data = EncryptedFileStore(config_state / "rounds", identity).load(
        result_key(federation, number)
    )
    return None if data is None else decode_result(data).contribution


def _expected_model(
    spec: FederationSpec, base: NDArray[np.float64], contributions: list[Contribution]
) -> NDArray[np.float64]:
    layout = ParameterLayout.update(spec)
    total = np.sum([c.vector(layout) for c in contributions], axis=0)
    sums = {
        s.name: total[s.offset : s.end]
        if s.kind.value == "float"
        else np.rint(total[s.offset : s.end]).astype(np.int64)
        for s in layout.segments
    }
    new, _, _ = apply_sums(spec, base, sums)
    return new


def _capture(hospitals: list[Hospital], federation: str, number: int) -> dict[str, Contribution]:
    """Wait until each hospital trained for the round; their contributions."""
    found: dict[str, Contribution] = {}

    def trained() -> bool:
        for hospital in hospitals:
            if hospital.name not in found:
                contribution = _stored_contribution(hospital, federation, number)
                if contribution is not None:
                    found[hospital.name] = contribution
        return len(found) == len(hospitals)

    wait_until(trained, ROUND_DEADLINE_S, f"{[h.name for h in hospitals]} to train")
    return found


# --- tests -------------------------------------------------------------------------------------


def _closed_before_deadline(round_: dict[str, Any]) -> list[str]:
    """The stages of `round_` with a deadline that closed before it (on their last answer:
    a stage closed by its deadline closes at or after it)."""
    from datetime import datetime

    return [
        stage["stage"]
        for stage in round_["stages"]
        if stage["deadline"] is not None
        and stage["closed_at"] is not None
        and datetime.fromisoformat(stage["closed_at"]) < datetime.fromisoformat(stage["deadline"])
    ]


def test_rounds_complete_and_the_global_model_improves(
    stack: Stack, hospitals: list[Hospital]
) -> None:
    """... with every agent long-polling (the coordinator pushes each stage: on the Redis
    stack a stage closed by the worker reaches the API process through Redis), and every
    protocol stage closing on its last answer, not at its deadline."""
    rounds = 3
    document = stack.create_federation("heart", stage_timeout_s=LONG_STAGE_S)
    spec = _spec(document)
    # One hospital's key was made beforehand and is encrypted (as a Kubernetes secret).
    hospitals[0].existing_key = True
    hospitals[0].passphrase = "correct horse battery staple"
    enroll_all(stack, "heart", hospitals, cli=True)
    assert b"ENCRYPTED" in (hospitals[0].folder / "state" / "identity.key").read_bytes()
    start_all(hospitals, "--max-rounds", str(rounds))
    for number in range(1, rounds + 1):
        assert stack.start_round("heart") == number
        done = stack.wait_round("heart", number)
        assert done["stage"] == "completed", done["failure_reason"]
        assert set(_statuses(stack, "heart", done).values()) == {"completed"}
        assert set(_closed_before_deadline(done)) >= {
            "advertise_keys",
            "share_keys",
            "masked_input",
            "consistency_check",
            "unmasking",
        }, done["stages"]
    for hospital in hospitals:
        assert hospital.wait_exit() == 0, hospital.log_tail()
        assert hospital.logged("work_pushed", long_poll_s=25.0), hospital.log_tail()
        assert not hospital.logged("work_polled"), hospital.log_tail()
        status = hospital.status()
        assert status["rounds"]["completed"] == rounds
        budget = status["budget"]
        assert budget["trainings"] == rounds
        assert 0 < budget["epsilon_spent"] <= budget["epsilon"]
        assert hospital.logged("round_completed", round=rounds, included=True)
    before = _validation_loss(spec, stack.model("heart", 0))
    after = _validation_loss(spec, stack.model("heart", rounds))
    assert after < before, (before, after)


def test_an_agent_killed_after_share_keys_is_recovered_from_and_the_sum_is_exact(
    stack: Stack, hospitals: list[Hospital]
) -> None:
    document = stack.create_federation("heart", stage_timeout_s=SHORT_STAGE_S)
    spec = _spec(document)
    enroll_all(stack, "heart", hospitals)
    victim, survivors = hospitals[2], [h for h in hospitals if h is not hospitals[2]]
    start_all(hospitals, "--max-rounds", "1")
    number = stack.start_round("heart")
    wait_until(
        lambda: victim.logged("stage_shared", round=number),
        ROUND_DEADLINE_S,
        f"{victim.name} to share its keys",
    )
    victim.kill()
    contributions = _capture(survivors, "heart", number)
    done = stack.wait_round("heart", number)
    assert done["stage"] == "completed", done["failure_reason"]
    statuses = _statuses(stack, "heart", done)
    assert statuses.pop(victim.name) == "dropped"
    assert set(statuses.values()) == {"completed"}
    # The dropped agent's masks were removed with the survivors' shares: the new model is
    # exactly the survivors' average update applied to the old one.
    expected = _expected_model(spec, stack.model("heart", 0), list(contributions.values()))
    np.testing.assert_allclose(stack.model("heart", 1), expected, atol=2e-6)
    for hospital in survivors:
        assert hospital.wait_exit() == 0, hospital.log_tail()


def test_an_agent_killed_and_restarted_mid_round_continues_the_round(
    stack: Stack, hospitals: list[Hospital]
) -> None:
    stack.create_federation("heart", stage_timeout_s=LONG_STAGE_S)
    enroll_all(stack, "heart", hospitals)
    victim = hospitals[0]
    start_all(hospitals, "--max-rounds", "1")
    number = stack.start_round("heart")
    wait_until(
        lambda: victim.logged("stage_advertised", round=number),
        ROUND_DEADLINE_S,
        f"{victim.name} to advertise its keys",
    )
    victim.kill()
    victim.start("--max-rounds", "1")  # same state folder: continues from its saved keys
    done = stack.wait_round("heart", number)
    assert done["stage"] == "completed", done["failure_reason"]
    assert set(_statuses(stack, "heart", done).values()) == {"completed"}
    assert victim.wait_exit() == 0, victim.log_tail()
    second_run = {e["event"] for e in victim.events(run=2)}
    assert {"stage_shared", "stage_uploaded", "round_completed"} <= second_run
    assert "round_joined" not in second_run  # it did not decide (or advertise) again
    status = victim.status()
    assert status["budget"]["trainings"] == 1
    assert status["rounds"]["completed"] == 1


def test_an_agent_whose_budget_would_be_exceeded_declines_and_the_round_goes_on(
    stack: Stack, hospitals: list[Hospital]
) -> None:
    stack.create_federation("heart", stage_timeout_s=LONG_STAGE_S)
    frugal = hospitals[3]
    frugal.epsilon = 0.2  # one round at σ = 1 costs far more
    enroll_all(stack, "heart", hospitals)
    start_all(hospitals, "--max-rounds", "1")
    number = stack.start_round("heart")
    done = stack.wait_round("heart", number)
    assert done["stage"] == "completed", done["failure_reason"]
    statuses = _statuses(stack, "heart", done)
    assert statuses.pop(frugal.name) == "declined"
    assert set(statuses.values()) == {"completed"}
    assert frugal.wait_exit() == 0, frugal.log_tail()
    assert frugal.logged("round_declined", round=number, reason="budget")
    status = frugal.status()
    assert status["rounds"]["declined"] == 1
    assert status["budget"]["epsilon_spent"] == 0.0
    assert status["budget"]["trainings"] == 0


def test_a_tampered_upload_is_rejected_and_the_round_goes_on_without_it(
    stack: Stack, hospitals: list[Hospital]
) -> None:
    document = stack.create_federation("heart", stage_timeout_s=SHORT_STAGE_S)
    spec = _spec(document)
    with TamperingProxy(stack.url) as proxy:
        victim = hospitals[1]
        victim.coordinator_url = proxy.url  # its network flips a bit of every upload
        enroll_all(stack, "heart", hospitals)
        honest = [h for h in hospitals if h is not victim]
        start_all(hospitals, "--max-rounds", "1")
        number = stack.start_round("heart")
        contributions = _capture(honest, "heart", number)
        done = stack.wait_round("heart", number)
        assert proxy.tampered >= 1
    assert done["stage"] == "completed", done["failure_reason"]
    statuses = _statuses(stack, "heart", done)
    assert statuses.pop(victim.name) == "dropped"
    assert set(statuses.values()) == {"completed"}
    assert victim.logged("request_rejected", status=401)
    # Nothing of the altered upload is in the aggregate: exactly the honest agents' average.
    expected = _expected_model(spec, stack.model("heart", 0), list(contributions.values()))
    np.testing.assert_allclose(stack.model("heart", 1), expected, atol=2e-6)


def test_enrollment_mistakes_are_one_line_errors_that_store_nothing(
    stack: Stack, hospitals: list[Hospital]
) -> None:
    stack.create_federation("heart", stage_timeout_s=LONG_STAGE_S)
    first, second = hospitals[0], hospitals[1]
    token = stack.invite("heart", first.name, first.tasks)

    unknown = first.enroll("fmtl_enroll_" + "A" * 43)
    _, err = unknown.communicate(timeout=300)
    assert unknown.returncode == 1
    assert err.strip() == (
        "error: the coordinator refused the enrollment: unknown enrollment token; "
        "ask the federation's admin for a new enrollment token"
    )
    assert not (first.folder / "state" / "identity.key").exists()

    enrolled = first.enroll(token)
    assert enrolled.communicate(timeout=300)[0].startswith(f"enrolled '{first.name}'")
    assert enrolled.returncode == 0

    reused = second.enroll(token)  # another institution tries the same (used) token
    _, err = reused.communicate(timeout=300)
    assert reused.returncode == 1
    assert len(err.strip().splitlines()) == 1
    assert "this enrollment token was already used" in err
    assert not (second.folder / "state" / "profile.json").exists()
