"""What a federation is: its tasks, its model, how rounds aggregate, privacy and schedule.

A `FederationSpec` is created by an admin on the coordinator and handed, unchanged, to
every agent; both sides derive the model and the parameter layout from it, so they agree
on every coordinate of the secure-aggregation vector without exchanging anything else.
All models are frozen and forbid unknown fields: a typo in a spec is an error, not a
silently ignored setting.
"""

from __future__ import annotations

import enum
import hashlib
import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The encoder kinds live in `federation.encoders`, one file each; re-exported here, where a
# federation's model is defined.
from federation.encoders import Activation as Activation
from federation.encoders import ConvEncoderSpec as ConvEncoderSpec
from federation.encoders import EncoderSpec
from federation.encoders import MLPEncoderSpec as MLPEncoderSpec

# Task, column and federation names appear in URLs, file names and layout segment names.
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Fields added after specs were in use: left out of the fingerprint while they hold
    #: their default, so that a spec written before them keeps its fingerprint (agents
    #: enrolled with it keep agreeing with the coordinator) and means the same.
    LATER_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def _later_defaults(self) -> dict[str, Any]:
        """A pydantic `exclude` tree of later fields at their default, at every depth."""
        exclude: dict[str, Any] = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if name in self.LATER_FIELDS and value == info.get_default(call_default_factory=True):
                exclude[name] = True
            elif isinstance(value, _Spec):
                inner = value._later_defaults()
                if inner:
                    exclude[name] = inner
            elif isinstance(value, tuple):
                items = {
                    i: item._later_defaults()
                    for i, item in enumerate(value)
                    if isinstance(item, _Spec)
                }
                items = {i: tree for i, tree in items.items() if tree}
                if items:
                    exclude[name] = items
        return exclude


class TaskKind(enum.StrEnum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"


class TaskSpec(_Spec):
    """One prediction task: a head on the shared encoder."""

    name: Name
    kind: TaskKind
    n_classes: int | None = Field(
        default=None, description="Number of classes; required for multiclass, else unset."
    )
    weight: float = Field(
        default=1.0,
        gt=0.0,
        le=100.0,
        description="Weight of this task's mean loss in the multi-task objective "
        "(raise it to up-weight a rare task).",
    )

    @model_validator(mode="after")
    def _classes_match_kind(self) -> TaskSpec:
        if self.kind is TaskKind.MULTICLASS:
            if self.n_classes is None or self.n_classes < 2:
                raise ValueError(f"task '{self.name}': multiclass needs n_classes >= 2")
        elif self.n_classes is not None:
            raise ValueError(f"task '{self.name}': n_classes is only for multiclass tasks")
        return self

    @property
    def output_dim(self) -> int:
        """Width of the head's output layer."""
        if self.kind is TaskKind.MULTICLASS:
            assert self.n_classes is not None
            return self.n_classes
        return 1


class HeadSpec(_Spec):
    """Every task head: optional hidden layers, then a linear output layer."""

    LATER_FIELDS = frozenset({"zero_init"})

    hidden: tuple[int, ...] = Field(default=(), max_length=4)
    zero_init: bool = Field(
        default=False,
        description="Start each head's output layer at zero (weights and bias): every task "
        "starts from the uninformed prediction (probability 1/classes, regression 0) instead "
        "of a random ranking of the samples.",
    )


class ModelSpec(_Spec):
    encoder: EncoderSpec
    head: HeadSpec = HeadSpec()
    init_seed: int = Field(
        default=0, ge=0, description="Seed of the deterministic initial weights."
    )


class Strategy(enum.StrEnum):
    """How the coordinator turns the round's average update into the next global model.

    `fedavg` adds it (times `server_lr`); `fedavgm` adds a momentum of it (server momentum,
    Hsu et al. 2019; the DP-FedAvg of McMahan et al. 2018 uses it against DP noise);
    `fedadam` and `fedyogi` treat it as a pseudo-gradient of Adam / Yogi (Reddi et al. 2021,
    "Adaptive Federated Optimization", Alg. 2).
    """

    FEDAVG = "fedavg"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"

    @property
    def keeps_state(self) -> bool:
        """Whether the server optimizer carries state (moments) from round to round."""
        return self is not Strategy.FEDAVG


class CounterWeighting(enum.StrEnum):
    """What an agent puts in a task's weight counter (and multiplies that task's update by).

    `participation` (the default) counts each institution holding the task once, so the
    sum reveals only how many institutions hold it; `samples` weights by labelled samples
    (classic FedAvg), which reveals the total number of labelled samples per task.
    """

    PARTICIPATION = "participation"
    SAMPLES = "samples"


class AggregationSpec(_Spec):
    LATER_FIELDS = frozenset({"server_momentum"})

    strategy: Strategy = Strategy.FEDAVG
    server_lr: float = Field(default=1.0, gt=0.0, le=10.0)
    server_momentum: float = Field(
        default=0.9, ge=0.0, lt=1.0, description="Momentum of `fedavgm` (beta)."
    )
    # FedAdam / FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization"), when selected.
    adam_beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(default=0.99, ge=0.0, lt=1.0)
    adam_tau: float = Field(default=1e-3, gt=0.0)
    fedprox_mu: float = Field(
        default=0.0, ge=0.0, description="FedProx proximal term weight in local training."
    )
    personalised_heads: bool = Field(
        default=False,
        description="Replaced by personalisation.mode = 'fedper' (must stay false).",
    )
    counter_weighting: CounterWeighting = CounterWeighting.PARTICIPATION


class Accountant(enum.StrEnum):
    RDP = "rdp"
    PRV = "prv"


class TaskBalancing(enum.StrEnum):
    """How the tasks of one institution share the DP clipping bound C of each sample.

    `none`: each sample's whole gradient (all its tasks) is clipped to C, so a task with
    large gradients (a regression on a wide scale, say) takes most of the bound and of the
    shared encoder's update. `per_task_clip`: each task's part of a sample's gradient is
    clipped to C / T (T: the tasks the institution trains), so every task moves the encoder
    by at most the same amount and a sample's total still stays within C — nothing leaves
    the institution but the usual update, so nothing about who holds which task leaks
    beyond what the per-task counters already reveal.
    """

    NONE = "none"
    PER_TASK_CLIP = "per_task_clip"


class TrainingSpec(_Spec):
    """Local training each round (an agent may not change these: they shape the update)."""

    local_epochs: float = Field(default=1.0, gt=0.0, le=100.0)
    batch_size: int = Field(
        default=32, ge=1, le=65_536, description="Expected batch size (Poisson sampled)."
    )
    LATER_FIELDS = frozenset({"task_balancing"})

    learning_rate: float = Field(default=0.05, gt=0.0, le=10.0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    task_balancing: TaskBalancing = Field(
        default=TaskBalancing.NONE,
        description="How tasks share each sample's clipping bound under DP (TaskBalancing).",
    )


class DPSpec(_Spec):
    """Differential-privacy defaults of the federation; each agent enforces its own budget."""

    enabled: bool = True
    max_grad_norm: float = Field(default=1.0, gt=0.0, description="Per-sample clipping bound C.")
    noise_multiplier: float | None = Field(
        default=None,
        ge=0.0,
        description="Gaussian noise multiplier sigma; unset: each agent picks the sigma that "
        "spends its budget evenly over `planned_rounds`.",
    )
    planned_rounds: int = Field(default=10, ge=1, le=100_000)
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)
    accountant: Accountant = Accountant.RDP
    grad_sample_mode: Literal["hooks", "functorch", "ew", "ghost", "bk"] = "hooks"


class SecAggSpec(_Spec):
    """Secure-aggregation parameters (Bonawitz et al. 2017; SecAgg+ graph, Bell et al. 2020)."""

    bits: Literal[32, 64] = 32
    clip_range: float = Field(
        default=1.0,
        gt=0.0,
        le=1e6,
        description="Each float coordinate of an update is clipped to [-clip_range, clip_range] "
        "before fixed-point encoding (the agent reports how many it clipped).",
    )
    threshold_fraction: float = Field(
        default=2.0 / 3.0,
        gt=0.5,
        le=1.0,
        description="t = ceil(fraction * n); never <= n/2.",
    )
    neighbour_graph: Literal["auto", "always", "never"] = Field(
        default="auto", description="'auto': use the SecAgg+ graph from 32 participants on."
    )
    mode: Literal["secure", "plain"] = Field(
        default="secure",
        description="'plain' sums unmasked updates (benchmarks and tests only); the "
        "coordinator refuses it unless FMTL_ALLOW_PLAIN_AGGREGATION=true.",
    )

    def threshold(self, n: int) -> int:
        """The reconstruction threshold t for n participants: ceil(fraction * n), > n/2."""
        if n < 1:
            raise ValueError("a round needs at least one participant")
        t = max(math.ceil(self.threshold_fraction * n), n // 2 + 1)
        return min(t, n)


class ScheduleSpec(_Spec):
    min_participants: int = Field(
        default=3, ge=2, le=100_000, description="Fewest agents a round may start with."
    )
    max_participants: int = Field(default=1000, ge=2, le=100_000)
    stage_timeout_s: float = Field(
        default=300.0, gt=0.0, le=86_400.0, description="Deadline of each protocol stage."
    )
    round_interval_s: float | None = Field(
        default=None,
        gt=0.0,
        description="Start a round this often (seconds) when set; else rounds start on request.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleSpec:
        if self.min_participants > self.max_participants:
            raise ValueError("min_participants must not exceed max_participants")
        return self


class PersonalisationMode(enum.StrEnum):
    """What the federation aggregates, and so what an institution may keep to itself.

    `global`: the encoder and every head are aggregated; each institution uses the global
    model, and may personalise a copy of it locally (agent settings: fine-tuning, a private
    model beside it). `fedper`: the heads never leave the institutions (FedPer, Arivazhagan
    et al. 2019): each keeps its own heads, trained with the shared encoder in the round's
    DP-SGD, and the update carries the encoder only (and no per-task counter at all).
    """

    GLOBAL = "global"
    FEDPER = "fedper"


class PersonalisationSpec(_Spec):
    """The federation-wide part of personalisation (the local part is in agent.toml)."""

    mode: PersonalisationMode = PersonalisationMode.GLOBAL


class FederationSpec(_Spec):
    """Everything coordinator and agents must agree on for one federation."""

    LATER_FIELDS = frozenset({"personalisation"})

    name: Name
    description: str = Field(default="", max_length=2000)
    tasks: tuple[TaskSpec, ...] = Field(min_length=1, max_length=64)
    model: ModelSpec
    aggregation: AggregationSpec = AggregationSpec()
    training: TrainingSpec = TrainingSpec()
    dp: DPSpec = DPSpec()
    secagg: SecAggSpec = SecAggSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    personalisation: PersonalisationSpec = PersonalisationSpec()

    @field_validator("tasks")
    @classmethod
    def _unique_task_names(cls, tasks: tuple[TaskSpec, ...]) -> tuple[TaskSpec, ...]:
        seen: set[str] = set()
        for task in tasks:
            if task.name in seen:
                raise ValueError(f"task name '{task.name}' appears twice")
            seen.add(task.name)
        return tasks

    @model_validator(mode="after")
    def _samples_weighting_needs_64_bits(self) -> FederationSpec:
        # Sample counts up to 10^6 multiply each update; 32-bit fixed point has no room left
        # for precision after that (federation.aggregation.update_clip).
        if (
            self.aggregation.counter_weighting is CounterWeighting.SAMPLES
            and self.secagg.bits != 64
        ):
            raise ValueError("aggregation.counter_weighting 'samples' needs secagg.bits = 64")
        return self

    @model_validator(mode="after")
    def _personalised_heads_moved(self) -> FederationSpec:
        if self.aggregation.personalised_heads:
            raise ValueError(
                "aggregation.personalised_heads is replaced by personalisation.mode = 'fedper'"
            )
        return self

    @property
    def heads_aggregated(self) -> bool:
        """Whether the update carries the heads (not under FedPer personalisation)."""
        return self.personalisation.mode is not PersonalisationMode.FEDPER

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        known = ", ".join(task.name for task in self.tasks)
        raise KeyError(f"unknown task '{name}' (the federation has: {known})")

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(task.name for task in self.tasks)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON form: two parties with equal fingerprints agree."""
        exclude: dict[str, Any] = {"description": True, **self._later_defaults()}
        canonical = self.model_dump_json(exclude=exclude).encode()
        return hashlib.sha256(canonical).hexdigest()
