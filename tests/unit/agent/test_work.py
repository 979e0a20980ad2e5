"""AgentWork: budget decisions from the ledger, training, and a spend that is never lost."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig, AgentEnvironment, load_config
from agent.data import load_dataset
from agent.identity import generate_identity
from agent.ledger import MODEL_METRICS_MEMO, Ledger, RoundStatus
from agent.round_state import InMemoryRoundStateStore
from agent.state_store import EncryptedFileStore
from agent.work import (
    AgentWork,
    TrainingInterrupted,
    decode_result,
    encode_result,
    result_key,
)
from federation.layout import ParameterLayout
from federation.metrics import from_segments, task_metrics
from federation.model import build_model, model_vector
from federation.round_api import AggregationMode, MyStatus, RoundAssignment, Stage
from federation.spec import FederationSpec, PersonalisationMode, PersonalisationSpec
from federation.wire import AgentProfile
from tests.unit.agent.conftest import write_config


def _profile(spec: FederationSpec) -> AgentProfile:
    return AgentProfile(
        institution_id=1,
        key_id="1",
        institution="cleveland",
        federation=spec.name,
        tasks_held=spec.task_names,
        enrolled_at=datetime.now(UTC),
        spec=spec,
        spec_fingerprint=spec.fingerprint(),
    )


def _assignment(spec: FederationSpec, number: int) -> RoundAssignment:
    layout = ParameterLayout.update(spec)
    return RoundAssignment(
        federation=spec.name,
        round=number,
        stage=Stage.ADVERTISE_KEYS,
        stage_deadline=None,
        mode=AggregationMode.SECURE,
        status=MyStatus.SELECTED,
        participant_id=1,
        participants=3,
        threshold=2,
        base_version=number - 1,
        spec_fingerprint=spec.fingerprint(),
        update_layout_fingerprint=layout.fingerprint,
        vector_length=layout.length,
        bits=32,
        config=b"\x00",
    )


def _work(config: AgentConfig, spec: FederationSpec, ledger: Ledger, store: object) -> AgentWork:
    dataset = load_dataset(config.data, spec)
    return AgentWork(config, _profile(spec), dataset, ledger, store)  # type: ignore[arg-type]


@pytest.fixture
def spec(heart_spec: FederationSpec) -> FederationSpec:
    # Fewer planned rounds keep the noise search short.
    return heart_spec.model_copy(
        update={"dp": heart_spec.dp.model_copy(update={"planned_rounds": 3})}
    )


def _global(spec: FederationSpec) -> np.ndarray:
    return model_vector(build_model(spec), ParameterLayout.model(spec))


def test_joins_within_budget_trains_and_records_the_spend(
    config: AgentConfig, spec: FederationSpec, tmp_path: Path
) -> None:
    store = InMemoryRoundStateStore()
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        work = _work(config, spec, ledger, store)
        decision = work.decide(_assignment(spec, 1))
        assert decision.join
        entry = ledger.round(spec.name, 1)
        assert entry is not None
        assert entry.status is RoundStatus.JOINED
        assert entry.projected_epsilon is not None
        assert entry.projected_epsilon <= 3.0

        result = work.train(_assignment(spec, 1), _global(spec))
        assert result.spend is not None
        assert result.spend.noise_multiplier == entry.noise_multiplier
        assert result.spend.epsilon == pytest.approx(entry.projected_epsilon)
        # Nothing of its own in clear by default: its validation statistics go into the
        # masked update instead, one task's per segment.
        assert result.metrics == {}
        assert result.contribution.segments["count.encoder"][0] == 1
        for task, n in work.dataset.labelled_validation.items():
            assert result.contribution.segments[f"metric.{task}.n"][0] == n
            assert result.contribution.segments[f"metric.{task}.institutions"][0] == 1
        spends = ledger.spends(spec.name, 1)
        assert len(spends) == 1
        assert spends[0].epsilon == result.spend.epsilon

        # Called again (a crash before the masked update was saved): the same result,
        # and the spend is not counted twice.
        again = work.train(_assignment(spec, 1), _global(spec))
        np.testing.assert_array_equal(
            again.contribution.segments["encoder"], result.contribution.segments["encoder"]
        )
        assert len(ledger.spends(spec.name, 1)) == 1


def test_a_round_number_offered_again_never_hides_a_new_runs_spend(
    config: AgentConfig, spec: FederationSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1 trains and ends; the coordinator offers round number 1 again (it reused the
    number); the new run's result is saved and the agent is killed before its spend is
    recorded. On restart the cached result is reused, and its spend is recorded: the
    ledger's spend of the *earlier* run under the same number does not hide it."""
    store = InMemoryRoundStateStore()
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        work = _work(config, spec, ledger, store)
        assert work.decide(_assignment(spec, 1)).join
        work.train(_assignment(spec, 1), _global(spec))
        work.forget(spec.name, 1)  # the round ended
        assert len(ledger.spends()) == 1

        record = ledger.record_spend

        def killed(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt("killed between saving the result and the spend")

        monkeypatch.setattr(ledger, "record_spend", killed)
        with pytest.raises(KeyboardInterrupt):
            work.train(_assignment(spec, 1), _global(spec))  # round number 1, again
        monkeypatch.setattr(ledger, "record_spend", record)
        again = work.train(_assignment(spec, 1), _global(spec))  # restarted agent
        spends = ledger.spends()
        assert len(spends) == 2
        assert again.spend is not None
        assert spends[1].run_id == again.spend.run_id
        assert spends[0].run_id != spends[1].run_id
        # Called once more, the same run is not counted twice.
        work.train(_assignment(spec, 1), _global(spec))
        assert len(ledger.spends()) == 2
        assert ledger.noise_pairs() == 2 * work.trainer.noise_pairs(spends[0].steps)


def test_declines_a_round_that_would_overspend(tmp_path: Path, spec: FederationSpec) -> None:
    fixed = spec.model_copy(update={"dp": spec.dp.model_copy(update={"noise_multiplier": 0.6})})
    config = load_config(
        write_config(tmp_path, epsilon=0.5), environment=AgentEnvironment(key_passphrase=None)
    )
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        work = _work(config, fixed, ledger, InMemoryRoundStateStore())
        decision = work.decide(_assignment(fixed, 1))
        assert not decision.join
        assert decision.reason == "budget"
        entry = ledger.round(fixed.name, 1)
        assert entry is not None
        assert entry.status is RoundStatus.DECLINED
        assert entry.projected_epsilon is not None
        assert entry.projected_epsilon > 0.5
        assert ledger.spends() == []
        # A restarted agent gives the same answer without recomputing.
        assert not work.decide(_assignment(fixed, 1)).join


def test_declines_after_the_planned_rounds_and_a_federation_without_dp(
    config: AgentConfig, spec: FederationSpec, tmp_path: Path
) -> None:
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        work = _work(config, spec, ledger, InMemoryRoundStateStore())
        for number in (1, 2, 3):
            assert work.decide(_assignment(spec, number)).join
            work.train(_assignment(spec, number), _global(spec))
        assert work.epsilon_spent() <= config.privacy.epsilon
        assert not work.decide(_assignment(spec, 4)).join
        assert len(ledger.spends()) == 3

    no_dp = spec.model_copy(update={"dp": spec.dp.model_copy(update={"enabled": False})})
    with Ledger.open(tmp_path / "other.sqlite3") as ledger:
        work = _work(config, no_dp, ledger, InMemoryRoundStateStore())
        decision = work.decide(_assignment(no_dp, 1))
        assert not decision.join
        assert decision.reason == "budget"


def test_training_stops_on_shutdown_without_recording(
    config: AgentConfig, spec: FederationSpec, tmp_path: Path
) -> None:
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        work = _work(config, spec, ledger, InMemoryRoundStateStore())
        assert work.decide(_assignment(spec, 1)).join
        work.stop.set()
        with pytest.raises(TrainingInterrupted):
            work.train(_assignment(spec, 1), _global(spec))
        assert ledger.spends() == []


def test_trained_result_round_trips_through_the_encrypted_store(
    config: AgentConfig, spec: FederationSpec, tmp_path: Path
) -> None:
    store = EncryptedFileStore(tmp_path / "rounds", generate_identity())
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        work = _work(config, spec, ledger, store)
        work.show_progress = True  # a Rich progress bar on stderr
        work.decide(_assignment(spec, 1))
        result = work.train(_assignment(spec, 1), _global(spec))
    decoded = decode_result(encode_result(result))
    assert decoded.spend == result.spend
    assert decoded.metrics == result.metrics
    for name, values in result.contribution.segments.items():
        np.testing.assert_array_equal(decoded.contribution.segments[name], values)


def test_personal_state_survives_rounds_and_a_retried_round_starts_from_before_it(
    tmp_path: Path, spec: FederationSpec
) -> None:
    fedper = spec.model_copy(
        update={"personalisation": PersonalisationSpec(mode=PersonalisationMode.FEDPER)}
    )
    config = load_config(
        write_config(tmp_path, extra="\n[personalisation]\nprivate_model = true\n"),
        environment=AgentEnvironment(key_passphrase=None),
    )
    store = InMemoryRoundStateStore()
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        work = _work(config, fedper, ledger, store)
        assert work.decide(_assignment(fedper, 1)).join
        first = work.train(_assignment(fedper, 1), _global(fedper))
        assert "head.disease" not in first.contribution.segments  # heads never leave
        after_one = work.personaliser(fedper.name, 2).state
        assert after_one.round == 1
        assert after_one.heads is not None
        assert after_one.private is not None
        memo = ledger.remembered(MODEL_METRICS_MEMO)
        assert memo is not None
        (latest,) = memo["history"]
        assert latest["round"] == 1
        assert set(latest["personal"]) == set(latest["global"]) == set(fedper.task_names)
        # A crash after training, before the result was saved: the retry must train from
        # the state before round 1, not from its own first attempt.
        store.delete(result_key(fedper.name, 1))
        retry = work.personaliser(fedper.name, 1).state
        assert retry.round == 0
        assert retry.heads is None
        assert retry.private is None
        work.train(_assignment(fedper, 1), _global(fedper))
        assert work.personaliser(fedper.name, 1).state.round == 0  # still the state before
        assert work.personaliser(fedper.name, 2).state.round == 1


def test_an_institution_that_opts_in_gets_its_own_metrics_from_its_own_statistics(
    spec: FederationSpec, tmp_path: Path
) -> None:
    path = write_config(tmp_path)
    path.write_text(
        path.read_text().replace("[privacy]\n", "[privacy]\nshare_own_metrics = true\n")
    )
    config = load_config(path, environment=AgentEnvironment(key_passphrase=None))
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        work = _work(config, spec, ledger, InMemoryRoundStateStore())
        work.decide(_assignment(spec, 1))
        result = work.train(_assignment(spec, 1), _global(spec))
    assert set(result.metrics) == set(spec.task_names)
    statistics = from_segments(spec, result.contribution.segments)
    for task in spec.tasks:
        assert result.metrics[task.name] == task_metrics(task, statistics[task.name]).values
    assert {"loss", "accuracy", "balanced_accuracy", "auc", "ece"} <= set(result.metrics["disease"])
