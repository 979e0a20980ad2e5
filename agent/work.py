"""The institution's side of a round: whether to join (its budget), and its local training.

`AgentWork` is the `LocalWork` the round participant calls:

- `decide`: fixes the round's plan (noise multiplier σ, sampling rate q, steps) and checks
  it against the institution's own budget with its own accountant over the whole history
  in its ledger (`privacy.dp.check_round`). When the federation leaves σ unset, σ is the
  smallest that spends what is left of the budget evenly over the planned rounds not yet
  used (`privacy.dp.noise_for_budget`). Over budget, the planned rounds spent, or a
  federation without DP: the round is declined with reason "budget" (the participant
  tells the coordinator) and the ledger and the log say why. The plan is stored in the
  ledger, so a restarted agent trains with exactly the plan it checked.
- `train`: evaluates the global model per task on the local validation split (its
  statistics go into the update, `federation.metrics`; its own metrics are logged locally
  and sent in clear only with `privacy.share_own_metrics`), trains (DP-SGD through
  `agent.training.LocalTrainer`), turns the result into the round's update segments
  (`federation.aggregation.local_contribution`), and records the spend.

Crash safety, in this order: the trained result is saved in the encrypted round-state
store, *then* the spend is recorded in the ledger (one transaction), *then* the result is
handed back to be masked and uploaded. Every training run gets a random identifier
(`run_id`), kept in its cached result (inside its spend report) and in its ledger row. A
restart after the save reuses the very same result (never trains twice for a round it may
already have sent), and records its spend if *that run* is not in the ledger yet, whatever
else the ledger holds for the round's number: a round number offered again (after a
crash, or by a coordinator that reuses numbers) can never hide a spend, so the ledger
never under-counts.

The budget check reserves the noise sampler's slack for every noise pair drawn so far and
planned (`privacy.dp.budget`). `AgentWork` is the only writer of the ledger: the daemon
reports how a round ended through `end_round`.
"""

from __future__ import annotations

import io
import json
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from agent.config import AgentConfig
from agent.data import LocalDataset
from agent.errors import AgentError
from agent.evaluation import Metrics
from agent.ledger import MODEL_METRICS_MEMO, Ledger, RoundStatus
from agent.local_work import CannotContinue, Decision, LocalResult
from agent.logging import event, get_logger
from agent.personal import FineTune, Personaliser, PersonalSettings, PersonalState
from agent.round_state import RoundStateStore
from agent.training import LocalTrainer
from federation.aggregation import Contribution, local_contribution
from federation.metrics import Statistics, task_metrics
from federation.round_api import DECLINE_BUDGET, RoundAssignment, SpendReport
from federation.wire import AgentProfile
from privacy.dp import Accountant, BudgetExceeded, RoundPlan, check_round, noise_for_budget

_log = get_logger("work")

#: Decline reason when the round's federation spec is not the one this agent enrolled with.
DECLINE_SPEC: Final = "spec mismatch"
_RESULT_MAGIC: Final = b"FMTLLR\x01"
_SIGMA_MEMO: Final = "noise_plan"
#: Rounds of model metrics the local ledger keeps (`fmtl agent status --json`).
MODEL_METRICS_KEPT: Final = 1000
#: Progress is logged at most this often (seconds) when no progress bar is shown.
_PROGRESS_LOG_INTERVAL_S: Final = 10.0


class TrainingInterrupted(AgentError):
    """Training stopped because the agent is shutting down (nothing was recorded or sent)."""


def personal_key(federation: str, which: str) -> str:
    """Round-state store key of the personal state (`current` or `previous`)."""
    return f"{federation}/personal/{which}"


def result_key(federation: str, number: int) -> str:
    """Round-state store key of a round's trained result."""
    return f"{federation}/round-{number:06d}/local-result"


@dataclass(frozen=True)
class RoundRef:
    federation: str
    round: int


class AgentWork:
    """`LocalWork` of one institution: its data, its budget, its ledger."""

    def __init__(
        self,
        config: AgentConfig,
        profile: AgentProfile,
        dataset: LocalDataset,
        ledger: Ledger,
        store: RoundStateStore,
        *,
        stop: threading.Event | None = None,
        show_progress: bool = False,
    ) -> None:
        self.config = config
        self.profile = profile
        self.spec = profile.spec
        self.dataset = dataset
        self.ledger = ledger
        self.store = store
        self.stop = stop or threading.Event()
        self.show_progress = show_progress
        self.trainer = LocalTrainer(
            self.spec,
            dataset,
            device=config.training.device,
            reproducible_dp_seed=config.testing.reproducible_dp_seed,
        )
        #: The round this agent last decided on or trained for (for the daemon's error path).
        self.current: RoundRef | None = None

    # -- budget ---------------------------------------------------------------------------

    @property
    def budget(self) -> float:
        return self.config.privacy.epsilon

    @property
    def delta(self) -> float:
        return self.config.privacy.delta

    def accountant(self) -> Accountant:
        """The configured accountant over the ledger's whole history."""
        kind = self.config.privacy.accountant
        state = self.ledger.accountant_state(kind)
        if state is not None:
            accountant = Accountant.from_state_dict(state)
            if len(accountant.history) == len(self.ledger.history()):
                return accountant
        return Accountant(kind, self.ledger.history())

    def epsilon_spent(self) -> float:
        return self.accountant().epsilon(self.delta)

    def _plan(self, accountant: Accountant) -> RoundPlan:
        """The plan of the next round; `BudgetExceeded` when no plan fits the budget."""
        trainer = self.trainer
        dp = self.spec.dp
        if not dp.enabled:
            spent = accountant.epsilon(self.delta)
            raise BudgetExceeded(
                f"federation '{self.spec.name}' trains without differential privacy "
                "(unbounded epsilon); this institution only joins private rounds",
                spent=spent,
                projected=math.inf,
                budget=self.budget,
            )
        sigma = dp.noise_multiplier
        if sigma is None:
            done = len(accountant.history)
            left = dp.planned_rounds - done
            if left <= 0:
                spent = accountant.epsilon(self.delta)
                raise BudgetExceeded(
                    f"the budget was planned for {dp.planned_rounds} rounds and all are spent",
                    spent=spent,
                    projected=spent,
                    budget=self.budget,
                )
            sigma = self._noise_for_budget(accountant, left)
        return trainer.plan(sigma)

    def _noise_for_budget(self, accountant: Accountant, left: int) -> float:
        """σ spending what is left evenly over `left` rounds (remembered: the search is slow).

        While every past round trained at the remembered σ (same q, steps, budget, δ and
        accountant), that σ still spends the rest evenly, so it is reused; anything else
        (another budget, a changed dataset size) searches again.
        """
        trainer = self.trainer
        basis = {
            "budget": self.budget,
            "delta": self.delta,
            "accountant": accountant.kind.value,
            "sample_rate": trainer.sample_rate,
            "steps": trainer.steps_per_round,
            "planned_rounds": self.spec.dp.planned_rounds,
        }
        memo = self.ledger.remembered(_SIGMA_MEMO)
        if memo is not None and memo.get("basis") == basis:
            sigma = float(memo["sigma"])
            planned = (sigma, trainer.sample_rate, trainer.steps_per_round)
            if all(tuple(entry) == planned for entry in accountant.history):
                return sigma
        sigma = noise_for_budget(
            self.budget,
            self.delta,
            trainer.sample_rate,
            trainer.steps_per_round,
            left,
            accountant.kind,
            accountant.history,
            drawn=self.ledger.noise_draws(),
            pairs_per_step=self.trainer.noise_pairs(1),
        )
        if not accountant.history:
            self.ledger.remember(_SIGMA_MEMO, {"basis": basis, "sigma": sigma})
        return sigma

    # -- LocalWork --------------------------------------------------------------------------

    def decide(self, assignment: RoundAssignment) -> Decision:
        """Join when the round fits the budget (plan fixed in the ledger), else decline."""
        federation, number = assignment.federation, assignment.round
        self.current = RoundRef(federation, number)
        entry = self.ledger.round(federation, number)
        if entry is not None:  # decided before a restart: the same answer
            if entry.status is RoundStatus.DECLINED:
                return Decision.decline(entry.reason or DECLINE_BUDGET)
            return Decision.accept()
        if assignment.spec_fingerprint != self.profile.spec_fingerprint:
            self.ledger.decline(federation, number, DECLINE_SPEC)
            event(
                _log,
                "round_declined",
                level=40,
                round=number,
                reason=DECLINE_SPEC,
                hint="the federation's spec changed since enrollment; enroll again",
            )
            return Decision.decline(DECLINE_SPEC)
        accountant = self.accountant()
        try:
            plan = self._plan(accountant)
            projected = check_round(
                accountant,
                self.budget,
                self.delta,
                plan.noise_multiplier,
                plan.sample_rate,
                plan.steps,
                drawn=self.ledger.noise_draws(),
                pairs_per_step=self.trainer.noise_pairs(1),
            )
        except BudgetExceeded as exc:
            self.ledger.decline(
                federation,
                number,
                DECLINE_BUDGET,
                projected_epsilon=exc.projected if math.isfinite(exc.projected) else None,
                budget_epsilon=self.budget,
            )
            event(
                _log,
                "round_declined",
                level=30,
                round=number,
                reason=DECLINE_BUDGET,
                detail=str(exc),
                epsilon_spent=round(exc.spent, 4),
                epsilon_budget=self.budget,
            )
            return Decision.decline(DECLINE_BUDGET)
        self.ledger.join(
            federation,
            number,
            noise_multiplier=plan.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=plan.steps,
            projected_epsilon=projected,
            budget_epsilon=self.budget,
        )
        event(
            _log,
            "round_joined",
            round=number,
            participants=assignment.participants,
            threshold=assignment.threshold,
            noise_multiplier=round(plan.noise_multiplier, 4),
            sample_rate=round(plan.sample_rate, 4),
            steps=plan.steps,
            epsilon_projected=round(projected, 4),
            epsilon_budget=self.budget,
        )
        return Decision.accept()

    def train(self, assignment: RoundAssignment, global_vector: NDArray[np.float64]) -> LocalResult:
        """Evaluate, train, contribute; the spend is in the ledger before this returns."""
        began = time.monotonic()
        federation, number = assignment.federation, assignment.round
        self.current = RoundRef(federation, number)
        key = result_key(federation, number)
        cached = self.store.load(key)
        if cached is not None:
            result = decode_result(cached)
            spend = result.spend
            if spend is not None and (
                self.ledger.spend_of_run(spend.run_id) is None
                if spend.run_id is not None
                else not self.ledger.spends(federation, number)  # cached before run ids
            ):
                self._record(federation, number, spend)
            event(_log, "training_reused", round=number, hint="trained before a restart")
            return result
        entry = self.ledger.round(federation, number)
        accountant = self.accountant()
        if entry is None or entry.noise_multiplier is None or entry.steps is None:
            plan = self._plan(accountant)
        else:
            assert entry.sample_rate is not None
            plan = RoundPlan(entry.noise_multiplier, entry.sample_rate, entry.steps)
        try:  # again: another training may have been recorded since the decision
            check_round(
                accountant,
                self.budget,
                self.delta,
                plan.noise_multiplier,
                plan.sample_rate,
                plan.steps,
                drawn=self.ledger.noise_draws(),
                pairs_per_step=self.trainer.noise_pairs(1),
            )
        except BudgetExceeded as exc:  # the daemon records the round as dropped
            raise CannotContinue(f"budget: {exc}") from None

        personaliser = self.personaliser(federation, number)
        before = personaliser.state
        # The federated model: the global one, with this institution's heads under FedPer.
        federated = personaliser.federated_vector(global_vector)
        metrics = self.trainer.evaluate(federated)  # exact, original units: local only
        _log.info("global_model_validation", extra={"fields": {"round": number, **_flat(metrics)}})
        personal = personaliser.evaluate(global_vector) if personaliser.active else None
        if personal is not None:
            _log.info(
                "personal_model_validation",
                extra={"fields": {"round": number, **_flat(personal)}},
            )
        self._remember_metrics(federation, number, metrics, personal)
        # What enters the masked update: the same evaluation as sums (federation.metrics).
        statistics = self.trainer.statistics(federated)
        started = time.monotonic()
        event(_log, "training_started", round=number, steps=plan.steps)
        with self._progress(number, plan.steps) as progress:
            outcome = self.trainer.train(federated, plan, progress=progress)
        personaliser.absorb(outcome.local_vector, number)
        personaliser.train_private(number)
        self._save_personal(federation, before, personaliser.state)
        contribution = local_contribution(
            self.spec,
            federated,
            outcome.local_vector,
            train_samples=outcome.train_samples,
            labelled=outcome.labelled,
            statistics=statistics,
        )
        accountant.record(outcome.noise_multiplier, outcome.sample_rate, outcome.steps)
        spend = SpendReport(
            noise_multiplier=outcome.noise_multiplier,
            sample_rate=outcome.sample_rate,
            steps=outcome.steps,
            delta=self.delta,
            epsilon=accountant.epsilon(self.delta),
            accountant=self.config.privacy.accountant,
            budget_epsilon=self.budget,
            run_id=secrets.token_urlsafe(16),
        )
        result = LocalResult(
            contribution=contribution,
            metrics=self._own_metrics(statistics),
            spend=spend,
        )
        self.store.save(key, encode_result(result))  # 1. the result, encrypted
        self._record(federation, number, spend, accountant)  # 2. the spend
        event(
            _log,
            "training_finished",
            round=number,
            steps=outcome.steps,
            seconds=round(time.monotonic() - started, 2),
            # All of this round's local work: evaluation, statistics, training, personal part.
            local_s=round(time.monotonic() - began, 2),
            mean_loss=round(outcome.mean_loss, 5) if math.isfinite(outcome.mean_loss) else None,
            clipped=contribution.clipped,
            epsilon_spent=round(spend.epsilon, 4),
            epsilon_budget=self.budget,
        )
        return result  # 3. masked and uploaded by the participant

    # -- the personalised side (agent.personal) -----------------------------------------------

    def _remember_metrics(
        self, federation: str, number: int, federated: Metrics, personal: Metrics | None
    ) -> None:
        """Keep this round's metrics of both models in the local ledger (the last
        `MODEL_METRICS_KEPT` rounds; a retried round replaces its first attempt)."""
        memo = self.ledger.remembered(MODEL_METRICS_MEMO) or {}
        history = [
            entry
            for entry in memo.get("history", [])
            if (entry.get("federation"), entry.get("round")) != (federation, number)
        ]
        history.append(
            {"federation": federation, "round": number, "global": federated, "personal": personal}
        )
        self.ledger.remember(MODEL_METRICS_MEMO, {"history": history[-MODEL_METRICS_KEPT:]})

    def personaliser(self, federation: str, number: int) -> Personaliser:
        """The institution's personal state as it was before round `number`.

        Two copies are kept, `current` and `previous`: a round that trained but crashed
        before its result was saved has already moved `current` to itself, and is trained
        again from `previous`, so a retried round never trains on its own first attempt.
        """
        state = self._load_personal(federation, "current")
        if state.round >= number:
            state = self._load_personal(federation, "previous")
        return Personaliser(self.spec, self.trainer, self.personal_settings, state)

    @property
    def personal_settings(self) -> PersonalSettings:
        section = self.config.personalisation
        return PersonalSettings(
            fine_tune=FineTune(section.fine_tune),
            fine_tune_epochs=section.fine_tune_epochs,
            private_model=section.private_model,
            private_weight=section.private_weight,
            private_learning_rate=section.private_learning_rate,
        )

    def _load_personal(self, federation: str, which: str) -> PersonalState:
        data = self.store.load(personal_key(federation, which))
        return PersonalState() if data is None else PersonalState.from_bytes(data)

    def _save_personal(self, federation: str, before: PersonalState, after: PersonalState) -> None:
        self.store.save(personal_key(federation, "previous"), before.to_bytes())
        self.store.save(personal_key(federation, "current"), after.to_bytes())

    def _own_metrics(self, statistics: dict[str, Statistics]) -> dict[str, dict[str, float]]:
        """The metrics sent in clear: none, unless the institution opted in; then the very
        figures the federation-wide ones are made of (`federation.metrics.task_metrics`)."""
        if not self.config.privacy.share_own_metrics:
            return {}
        return {
            task: task_metrics(self.spec.task(task), values).values
            for task, values in statistics.items()
        }

    def _record(
        self,
        federation: str,
        number: int,
        spend: SpendReport,
        accountant: Accountant | None = None,
    ) -> None:
        if accountant is None:
            accountant = self.accountant()
            accountant.record(spend.noise_multiplier, spend.sample_rate, spend.steps)
        self.ledger.record_spend(
            federation,
            number,
            noise_multiplier=spend.noise_multiplier,
            sample_rate=spend.sample_rate,
            steps=spend.steps,
            delta=spend.delta,
            accountant=accountant.kind.value,
            epsilon=accountant.epsilon(self.delta),
            budget_epsilon=self.budget,
            accountant_state=accountant.state_dict(),
            run_id=spend.run_id,
            noise_pairs=self.trainer.noise_pairs(spend.steps) if spend.noise_multiplier else 0,
        )

    def end_round(
        self,
        federation: str,
        number: int,
        status: RoundStatus | None,
        reason: str | None = None,
        *,
        keep_result: bool = False,
    ) -> None:
        """Record how a round ended for this institution (None: as it stands) and drop its
        trained result unless `keep_result`. The daemon calls this; it is the only place a
        round's end is written to the ledger."""
        if status is not None:
            self.ledger.finish(federation, number, status, None if reason is None else reason[:200])
        if not keep_result:
            self.forget(federation, number)

    def forget(self, federation: str, number: int) -> None:
        """Drop a finished round's trained result from the store."""
        self.store.delete(result_key(federation, number))

    # -- progress -----------------------------------------------------------------------------

    @contextmanager
    def _progress(self, number: int, total: int) -> Iterator[Callable[[int, int], None]]:
        """A progress callback that also stops training when the agent shuts down."""
        last_log = [time.monotonic()]

        def check_stop() -> None:
            if self.stop.is_set():
                raise TrainingInterrupted(f"training of round {number} stopped: shutting down")

        if not self.show_progress:

            def log_only(done: int, steps: int) -> None:
                check_stop()
                now = time.monotonic()
                if now - last_log[0] >= _PROGRESS_LOG_INTERVAL_S:
                    last_log[0] = now
                    event(_log, "training_progress", round=number, step=done, steps=steps)

            yield log_only
            return

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task(f"round {number}: training", total=total)

            def advance(done: int, steps: int) -> None:
                check_stop()
                bar.update(task, completed=done, total=steps)

            yield advance


def _flat(metrics: dict[str, dict[str, float]]) -> dict[str, object]:
    return {
        f"{task}_{name}": round(value, 4)
        for task, values in metrics.items()
        for name, value in values.items()
    }


# -- the trained result at rest (inside the encrypted store) -----------------------------------


def encode_result(result: LocalResult) -> bytes:
    """A `LocalResult` as bytes: a JSON header, then the segments as an .npz archive."""
    header = {
        "clipped": result.contribution.clipped,
        "metrics": result.metrics,
        "spend": None if result.spend is None else result.spend.model_dump(mode="json"),
    }
    arrays = io.BytesIO()
    segments = {name: np.asarray(v) for name, v in result.contribution.segments.items()}
    np.savez(arrays, **segments)  # type: ignore[arg-type]
    encoded = json.dumps(header, sort_keys=True).encode()
    return _RESULT_MAGIC + len(encoded).to_bytes(4, "big") + encoded + arrays.getvalue()


def decode_result(data: bytes) -> LocalResult:
    if not data.startswith(_RESULT_MAGIC):
        raise AgentError("the stored training result is not in a format this agent knows")
    start = len(_RESULT_MAGIC) + 4
    length = int.from_bytes(data[len(_RESULT_MAGIC) : start], "big")
    header = json.loads(data[start : start + length])
    with np.load(io.BytesIO(data[start + length :]), allow_pickle=False) as archive:
        segments = {name: archive[name] for name in archive.files}
    spend = header["spend"]
    return LocalResult(
        contribution=Contribution(segments, int(header["clipped"])),
        metrics={t: {k: float(v) for k, v in m.items()} for t, m in header["metrics"].items()},
        spend=None if spend is None else SpendReport.model_validate(spend),
    )


__all__ = [
    "DECLINE_SPEC",
    "AgentWork",
    "RoundRef",
    "TrainingInterrupted",
    "decode_result",
    "encode_result",
    "personal_key",
    "result_key",
]
