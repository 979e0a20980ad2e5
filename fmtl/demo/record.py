"""What one demo run recorded: everything the report and the service benchmark read.

It is built only from what the coordinator's API returned (rounds with their stages,
task-wise results, the privacy ledger, the audit verification) plus the demo's own events
(an agent killed, restarted), and saved as `record.json` beside the report.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fmtl.admin.client import AuditVerification, LedgerEntry, ResultInfo, RoundInfo

#: Not metrics to plot: counts, and the binned AUC's error bound (shown beside the AUC).
NOT_METRICS = frozenset({"n", "auc_error_bound"})
#: The curve of the figures computed from the secure sum of every participant's statistics.
FEDERATION_WIDE = "federation-wide"
#: The metric each task's learning curve leads with, by preference.
PRIMARY_METRICS = ("auc", "accuracy", "mae", "rmse")


class HospitalRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    tasks: list[str]
    institution_id: int | None = None
    budget_epsilon: float | None = None


class LocalModels(BaseModel):
    """One round's figures of one hospital's two models on its validation split, as its
    own agent keeps them (`fmtl agent status --json`); they never went to the coordinator."""

    model_config = ConfigDict(frozen=True)

    round: int
    federated: dict[str, dict[str, float]]
    personalised: dict[str, dict[str, float]] | None = None


class DemoEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    round: int | None
    what: str


class DemoRecord(BaseModel):
    """One run of `fmtl demo`, as recorded from the coordinator's API."""

    federation: str
    stack: str = Field(description="'embedded (SQLite, in-process worker)' or the production one.")
    started_at: datetime
    finished_at: datetime | None = None
    settings: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    tasks: dict[str, str] = Field(default_factory=dict, description="task -> kind")
    hospitals: list[HospitalRecord] = Field(default_factory=list)
    rounds: list[RoundInfo] = Field(default_factory=list)
    results: list[ResultInfo] = Field(default_factory=list)
    ledger: list[LedgerEntry] = Field(default_factory=list)
    events: list[DemoEvent] = Field(default_factory=list)
    audit: AuditVerification | None = None
    #: Per round number: the slowest hospital's local work (evaluation and training) in
    #: seconds, from the agents' `training_finished` log events; the rest of the round's
    #: time is the service's (protocol messages, masking, storage, aggregation).
    training_s: dict[int, float] = Field(default_factory=dict)
    #: The model version saved as `final_model.f32` in the run folder.
    final_model_version: int | None = None
    #: Per hospital, read from its own agent at the end: its federated and personalised
    #: model's figures, round by round (local figures; see `LocalModels`).
    local_models: dict[str, list[LocalModels]] = Field(default_factory=dict)

    @property
    def wall_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> DemoRecord:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))

    def metrics_of(self, task: str) -> list[str]:
        """The metrics recorded for a task, the primary one first."""
        found = {
            item.metric
            for item in self.results
            if item.task == task and item.metric not in NOT_METRICS
        }
        ordered = [m for m in PRIMARY_METRICS if m in found]
        return ordered + sorted(found - set(ordered))

    def curve(self, task: str, metric: str) -> dict[str, list[tuple[int, float]]]:
        """(round, value) points of one task's metric: per institution that sent its own
        (opted in), and `FEDERATION_WIDE`, from the secure sums."""
        per: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for item in sorted(self.results, key=lambda r: r.round):
            if item.task == task and item.metric == metric:
                per[item.institution or FEDERATION_WIDE].append((item.round, item.value))
        wide = per.pop(FEDERATION_WIDE, None)
        curves = dict(sorted(per.items()))
        if wide:
            curves[FEDERATION_WIDE] = wide
        return curves

    def auc_error_bound(self, task: str, round_number: int) -> float | None:
        """The largest error of a round's federation-wide (binned) AUC of a task."""
        wanted = (task, round_number, "auc_error_bound", None)
        for item in self.results:
            if (item.task, item.round, item.metric, item.institution) == wanted:
                return item.value
        return None

    def local_curve(self, task: str, metric: str, which: str) -> list[tuple[int, float]]:
        """The mean over hospitals (weighted by validation samples) of `which` model's
        ('federated' or 'personalised') local figure, per round."""
        sums: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for rounds in self.local_models.values():
            for item in rounds:
                figures = item.federated if which == "federated" else item.personalised
                values = (figures or {}).get(task, {})
                if metric in values:
                    sums[item.round].append((values[metric], values.get("n", 1.0)))
        return [
            (number, sum(v * n for v, n in pairs) / sum(n for _, n in pairs))
            for number, pairs in sorted(sums.items())
        ]

    def epsilon_curves(self) -> dict[str, list[tuple[int, float]]]:
        """Each institution's cumulative ε (as the coordinator recomputed it) per round."""
        per: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for entry in sorted(self.ledger, key=lambda e: e.round):
            per[entry.institution].append((entry.round, entry.recomputed_epsilon))
        return dict(sorted(per.items()))

    def budgets(self) -> dict[str, float]:
        out = {h.name: h.budget_epsilon for h in self.hospitals if h.budget_epsilon is not None}
        for entry in self.ledger:
            if entry.budget_epsilon is not None:
                out.setdefault(entry.institution, entry.budget_epsilon)
        return out

    def institution_names(self) -> dict[int, str]:
        return {h.institution_id: h.name for h in self.hospitals if h.institution_id is not None}
