"""An institution's personalised model, beside the federation's global one: `Personaliser`.

What the federation aggregates is fixed by its spec (`personalisation.mode`); what an
institution does with it locally is its own choice (`[personalisation]` in agent.toml,
`PersonalSettings`). Three things can make the institution's model its own:

- **local heads (FedPer)**, spec mode `fedper`: the institution keeps its own heads. They
  are trained with the shared encoder in the round's DP-SGD (the same clipped, noised
  steps: no extra privacy spend) and never leave; the update carries the encoder only.
  `federated_vector` puts them on the global encoder, `absorb` keeps the trained ones.
- **fine-tuning**, agent setting `fine_tune`: a copy of the federated model whose heads (and
  optionally the encoder's last layer) train a few more epochs on the local training split.
- **a private model beside the shared one** (in the spirit of FENDA-FL, Tabaeian et al.
  2023: a private representation next to the federated one), agent setting
  `private_model`: a second model of the federation's architecture, trained on the local
  training split only, one round's epochs per round. The personalised output mixes the
  two: `w · private(x) + (1 − w) · federated(x)` on the logits (or the regression value).
  The federated half is frozen here (no gradient of the personal objective reaches the
  shared encoder), so the private half can train outside DP-SGD without touching
  anything that is sent.

Fine-tuning and the private model train without DP (`LocalTrainer.train_locally`). That
is sound because nothing they produce leaves the institution: not their parameters, not
their metrics (`work` keeps those in the local ledger and `fmtl agent status`), and never
an input of the round's update, which is computed from the global model (and, under
FedPer, the local heads, themselves DP-trained) only. No spend is recorded for them, and
none is needed. An institution that wanted to publish its personalised model or its
metrics would have to train it with DP and account for it; this agent does neither.
"""

from __future__ import annotations

import enum
import io
import json
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from agent.evaluation import Metrics
from agent.training import LocalTrainer
from federation.layout import ENCODER, HEAD_PREFIX
from federation.model import MultiTaskModel, build_model, model_vector
from federation.spec import FederationSpec, PersonalisationMode

_STATE_MAGIC: Final = b"FMTLPS\x01"
#: Random streams of `LocalTrainer` (0 and 1 are the round's sampling and noise).
_PRIVATE_STREAM: Final = 2
_FINE_TUNE_STREAM: Final = 3


class FineTune(enum.StrEnum):
    """What local fine-tuning trains of a copy of the federated model."""

    NONE = "none"
    HEADS = "heads"
    HEADS_AND_LAST_LAYER = "heads_and_last_layer"


@dataclass(frozen=True)
class PersonalSettings:
    """An institution's own personalisation choices (agent.toml `[personalisation]`)."""

    fine_tune: FineTune = FineTune.NONE
    fine_tune_epochs: float = 1.0
    private_model: bool = False
    private_weight: float = 0.5
    #: The private model's own learning rate (None: the federation's).
    private_learning_rate: float | None = None

    def __post_init__(self) -> None:
        if not self.fine_tune_epochs > 0:
            raise ValueError("fine_tune_epochs must be > 0")
        if not 0.0 <= self.private_weight <= 1.0:
            raise ValueError("private_weight must be within [0, 1]")
        if self.private_learning_rate is not None and not self.private_learning_rate > 0:
            raise ValueError("private_learning_rate must be > 0")


@dataclass(frozen=True)
class PersonalState:
    """What an institution keeps between rounds: its own heads (FedPer) and its private
    model, both as model-layout vectors, and the last round they reflect."""

    round: int = 0
    heads: NDArray[np.float64] | None = None
    private: NDArray[np.float64] | None = None

    def to_bytes(self) -> bytes:
        arrays = {
            name: value
            for name, value in (("heads", self.heads), ("private", self.private))
            if value is not None
        }
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        header = json.dumps({"round": self.round}).encode()
        return _STATE_MAGIC + len(header).to_bytes(4, "big") + header + buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PersonalState:
        if not data.startswith(_STATE_MAGIC):
            raise ValueError("the stored personal state is not in a format this agent knows")
        start = len(_STATE_MAGIC) + 4
        length = int.from_bytes(data[len(_STATE_MAGIC) : start], "big")
        header = json.loads(data[start : start + length])
        with np.load(io.BytesIO(data[start + length :]), allow_pickle=False) as archive:
            arrays = {name: archive[name].astype(np.float64) for name in archive.files}
        return cls(int(header["round"]), arrays.get("heads"), arrays.get("private"))


class MixedModel(nn.Module):
    """`weight · private(x) + (1 − weight) · federated(x)`, task by task."""

    def __init__(self, private: nn.Module, federated: nn.Module, weight: float) -> None:
        super().__init__()
        self.private = private
        self.federated = federated
        self.weight = weight

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mine: dict[str, torch.Tensor] = self.private(x)
        shared: dict[str, torch.Tensor] = self.federated(x)
        return {t: self.weight * mine[t] + (1.0 - self.weight) * shared[t] for t in shared}


def last_layer(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of the last submodule (in definition order) that holds any itself:
    the encoder's last layer, whatever the encoder's kind."""
    holders = [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
    return list(holders[-1].parameters(recurse=False)) if holders else []


class Personaliser:
    """The personalised side of one institution, round after round."""

    def __init__(
        self,
        spec: FederationSpec,
        trainer: LocalTrainer,
        settings: PersonalSettings | None = None,
        state: PersonalState | None = None,
    ) -> None:
        self.spec = spec
        self.trainer = trainer
        self.settings = settings or PersonalSettings()
        self.state = state or PersonalState()
        self.layout = trainer.layout

    @property
    def fedper(self) -> bool:
        return self.spec.personalisation.mode is PersonalisationMode.FEDPER

    @property
    def active(self) -> bool:
        """Whether the institution's model differs from the global one at all."""
        s = self.settings
        return self.fedper or s.fine_tune is not FineTune.NONE or s.private_model

    def _initial(self) -> NDArray[np.float64]:
        return model_vector(build_model(self.spec), self.layout)

    # -- the federated model: the global one, with the institution's heads under FedPer ----

    def federated_vector(self, global_vector: NDArray[np.generic]) -> NDArray[np.float64]:
        """The model this institution trains and evaluates in a round: the global model,
        with its own heads in place of the global ones under FedPer."""
        vector = np.array(global_vector, dtype=np.float64)
        if self.fedper and self.state.heads is not None:
            for segment in self.layout.segments:
                if segment.name.startswith(HEAD_PREFIX):
                    vector[segment.offset : segment.end] = self.state.heads[
                        segment.offset : segment.end
                    ]
        return vector

    def absorb(self, trained: NDArray[np.generic], round_number: int) -> None:
        """After the round's DP training: keep the trained heads (FedPer)."""
        if self.fedper:
            heads = np.array(trained, dtype=np.float64)
            encoder = self.layout.segment(ENCODER)
            heads[encoder.offset : encoder.end] = 0.0  # only the heads are kept
            self.state = replace(self.state, heads=heads, round=round_number)
        else:
            self.state = replace(self.state, round=round_number)

    # -- the private model ------------------------------------------------------------------

    def train_private(self, round_number: int) -> None:
        """One round's worth of local epochs for the private model (when there is one)."""
        if self.settings.private_model:
            start = self.state.private if self.state.private is not None else self._initial()
            trained = self.trainer.train_locally(
                start,
                self.spec.training.local_epochs,
                stream=_PRIVATE_STREAM,
                learning_rate=self.settings.private_learning_rate,
            )
            self.state = replace(self.state, private=trained, round=round_number)
        else:
            self.state = replace(self.state, round=round_number)

    # -- the personalised model -------------------------------------------------------------

    def fine_tuned(self, federated: NDArray[np.generic]) -> NDArray[np.float64]:
        """A copy of the federated model with its heads (and optionally the encoder's last
        layer) trained on the local data for `fine_tune_epochs`."""
        choice = self.settings.fine_tune
        if choice is FineTune.NONE:
            return np.array(federated, dtype=np.float64)

        def trainable(model: MultiTaskModel) -> list[nn.Parameter]:
            params = list(model.heads.parameters())
            if choice is FineTune.HEADS_AND_LAST_LAYER:
                params += last_layer(model.encoder)
            return params

        # Steps bounded like the round's (the spec's clipping bound, on the batch mean): on
        # the features of a DP-trained encoder, unbounded SGD steps on a regression head's
        # squared error diverged (benchmark, FedAdam: mean absolute errors of 10^4 to 10^5).
        return self.trainer.train_locally(
            federated,
            self.settings.fine_tune_epochs,
            trainable=trainable,
            stream=_FINE_TUNE_STREAM,
            max_grad_norm=self.spec.dp.max_grad_norm,
        )

    def model(self, global_vector: NDArray[np.generic]) -> nn.Module:
        """The institution's personalised model for this global model."""
        federated = self.trainer.model(self.fine_tuned(self.federated_vector(global_vector)))
        if not self.settings.private_model or self.state.private is None:
            return federated
        private = self.trainer.model(self.state.private)
        return MixedModel(private, federated, self.settings.private_weight)

    def evaluate(self, global_vector: NDArray[np.generic]) -> Metrics:
        """Per-task metrics of the personalised model on the local validation split."""
        return self.trainer.evaluate_module(self.model(global_vector))


__all__ = [
    "FineTune",
    "MixedModel",
    "PersonalSettings",
    "PersonalState",
    "Personaliser",
    "last_layer",
]
