"""DP-SGD wiring: Opacus' per-sample gradients, clipping and noise around a model.

`PrivateTraining` is the facade (the shape of Opacus' `PrivacyEngine.make_private`, for
training loops that sample their own batches): it wraps a module in an Opacus
grad-sample module and an optimizer in an Opacus `DPOptimizer`, and `step()` runs one
DP-SGD step (Abadi et al. 2016, Alg. 1) on a Poisson-sampled batch:

    g = ( sum_i clip_C( grad L_i ) + N(0, sigma^2 C^2 I) ) / B,     B = q * N (expected)

The caller gives the *per-sample* losses `L_i`, each depending on sample i alone, so the
clipping bound C is a bound on what one sample can change: the sum of clipped gradients
moves by at most C when a sample is added or removed, whatever the batch. (Reducing with
a batch-dependent mean, e.g. dividing by the number of labelled samples *in the batch*,
would make each sample's gradient depend on the others and void that bound.)

Grad-sample modes are Opacus': `hooks` (autograd hooks, per-layer grad samplers),
`functorch` (`torch.func` per-sample gradients for every layer), `ew` (PyTorch's
ExpandedWeights) and `ghost` (ghost clipping, Li et al. 2022, "Large Language Models Can
Be Strong Differentially Private Learners": per-sample gradient *norms* without
materialising per-sample gradients, then a second backward pass of the clipped loss).
`bk` is book-keeping clipping for Linear, Conv2d and GroupNorm layers
(`privacy.dp.bookkeeping`): the same norms, and the clipped sum formed from one backward
pass; Opacus' optimizer adds the noise as in `ghost`.
The Gaussian noise comes from `privacy.dp.noise` in every mode (a CSPRNG keystream,
float64 Box-Muller, the noisy sum snapped to a lattice: see that module for exactly what
is claimed), keyed from `os.urandom` unless the caller passes its own `GaussianNoise`;
Opacus' optimizers do the rest (clip, sum, scale).
An empty Poisson batch still takes a step: the update is the noise alone, as DP-SGD's
analysis assumes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Final, Literal, get_args

import torch
from opacus.grad_sample import (
    GradSampleModule,
    GradSampleModuleExpandedWeights,
    GradSampleModuleFastGradientClipping,
)
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn

from privacy.dp.bookkeeping import BookKeepingClipper
from privacy.dp.errors import InvalidPrivacyParameter, UnsupportedMode
from privacy.dp.noise import GaussianNoise

GradSampleMode = Literal["hooks", "functorch", "ew", "ghost", "bk"]
GRAD_SAMPLE_MODES: Final[tuple[str, ...]] = get_args(GradSampleMode)


def _add_noise(optimizer: Any, noise: GaussianNoise) -> None:
    """Opacus' `add_noise` with the noise from `noise` (`privacy.dp.noise`): each coordinate
    of the clipped sum gets N(0, (sigma C)^2) and the noisy sum is snapped to the noise's
    lattice, in place, all parameters of a device at once (Opacus allocates a zero tensor,
    a noise tensor and their sum per parameter at every step)."""
    std = optimizer.noise_multiplier * optimizer.max_grad_norm
    params = list(optimizer.params)
    for p in params:
        _check_processed_flag(p.summed_grad)
    if std > 0:
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for p in params:
            by_device.setdefault(p.summed_grad.device, []).append(p.summed_grad)
        for sums in by_device.values():
            noise.add_to_(sums, std)
    for p in params:
        p.grad = p.summed_grad.view_as(p)
        _mark_as_processed(p.summed_grad)


class _NoiseFromSource:
    """Mixed into Opacus' optimizers: `add_noise` draws from a `GaussianNoise`."""

    def __init__(self, optimizer: torch.optim.Optimizer, noise: GaussianNoise, **kw: Any) -> None:
        super().__init__(optimizer, **kw)  # type: ignore[call-arg]  # Opacus' optimizer
        self._fmtl_noise = noise

    def add_noise(self) -> None:
        _add_noise(self, self._fmtl_noise)


class _PerSampleOptimizer(_NoiseFromSource, DPOptimizer):  # type: ignore[misc]
    """Opacus' optimizer for per-sample gradients (hooks, functorch, ew), our noise."""


class _ClippedSumOptimizer(_NoiseFromSource, DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """Opacus' optimizer for the modes that leave the clipped sum in `.grad` (ghost, bk),
    our noise; `accumulate` takes the step's clipped sum over from `.grad` (which is
    cleared) where Opacus deep-copies it."""

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad)
            else:
                p.summed_grad = p.grad.detach()
                p.grad = None  # a later backward pass writes a new tensor, never this sum


class PrivateTraining:
    """One model and optimizer trained with DP-SGD; see the module docstring."""

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        mode: GradSampleMode | str = "hooks",
        noise: GaussianNoise | None = None,
    ) -> None:
        if mode not in GRAD_SAMPLE_MODES:
            raise UnsupportedMode(
                f"grad_sample_mode '{mode}' is not one of {', '.join(GRAD_SAMPLE_MODES)}"
            )
        if not noise_multiplier >= 0.0:
            raise InvalidPrivacyParameter(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if not max_grad_norm > 0.0:
            raise InvalidPrivacyParameter(f"max_grad_norm must be > 0, got {max_grad_norm}")
        if not expected_batch_size > 0.0:
            raise InvalidPrivacyParameter(
                f"expected batch size must be > 0, got {expected_batch_size}"
            )
        # A fresh key from os.urandom unless the caller brings its noise (a round's
        # `DPRandomness`, or predictable noise in tests and benchmarks).
        noise = noise if noise is not None else GaussianNoise.from_os()
        settings: dict[str, Any] = {
            "noise_multiplier": noise_multiplier,
            "max_grad_norm": max_grad_norm,
            "expected_batch_size": expected_batch_size,
            "loss_reduction": "mean",
        }
        self.mode = mode
        self.noise_multiplier = float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        # Per-sample gradients of sum-reduced per-sample losses: grad_sample[i] = grad L_i.
        # The optimizer divides the noisy sum by the *expected* batch size (Poisson sampling
        # makes the actual size random; dividing by it would leak it).
        self.module: nn.Module
        self.optimizer: DPOptimizer
        self._bookkeeping: BookKeepingClipper | None = None
        try:
            if mode == "bk":
                self._bookkeeping = BookKeepingClipper(module, max_grad_norm)
                self.module = module
                self.optimizer = _ClippedSumOptimizer(optimizer, noise, **settings)
            elif mode == "ghost":
                self.module = GradSampleModuleFastGradientClipping(
                    module,
                    loss_reduction="sum",
                    max_grad_norm=max_grad_norm,
                    use_ghost_clipping=True,
                )
                self.optimizer = _ClippedSumOptimizer(optimizer, noise, **settings)
            else:
                if mode == "ew":
                    self.module = GradSampleModuleExpandedWeights(module, loss_reduction="sum")
                else:
                    self.module = GradSampleModule(
                        module, loss_reduction="sum", force_functorch=mode == "functorch"
                    )
                self.optimizer = _PerSampleOptimizer(optimizer, noise, **settings)
        except NotImplementedError as exc:
            raise UnsupportedMode(f"grad_sample_mode '{mode}' does not support: {exc}") from exc

    def step(
        self,
        inputs: torch.Tensor,
        per_sample_loss: Callable[[Any], torch.Tensor],
        *,
        before_update: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """One DP-SGD step on a batch; returns the per-sample losses (detached).

        `per_sample_loss(outputs)` maps the module's outputs to a vector of one loss per
        sample. `before_update` runs after clipping and noise and before the update: the
        place for data-independent gradient terms (a proximal term), which are then mere
        post-processing of the private gradient.
        """
        batch = int(inputs.shape[0])
        if batch == 0:
            losses = torch.zeros(0, device=inputs.device)
            self._empty_batch()
        else:
            losses = self._backward(inputs, per_sample_loss)
        if self.optimizer.pre_step():
            if before_update is not None:
                before_update()
            self.optimizer.original_optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return losses.detach()

    def _backward(
        self, inputs: torch.Tensor, per_sample_loss: Callable[[Any], torch.Tensor]
    ) -> torch.Tensor:
        batch = int(inputs.shape[0])
        with warnings.catch_warnings():
            # Inputs never require grad here; the hooks only need the outputs' gradients.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            if self._bookkeeping is not None:
                with self._bookkeeping.recording():
                    outputs = self.module(inputs)
            else:
                outputs = self.module(inputs)
            losses = per_sample_loss(outputs)
            if losses.shape != (batch,):
                raise ValueError(
                    f"per_sample_loss must return shape ({batch},), got {tuple(losses.shape)}"
                )
            if self._bookkeeping is not None:
                self._bookkeeping.backward(losses)
            elif self.mode == "ghost":
                DPTensorFastGradientClipping(
                    self.module, self.optimizer, losses, loss_reduction="sum"
                ).backward()
            else:
                losses.sum().backward()  # type: ignore[no-untyped-call]
        return losses

    def _empty_batch(self) -> None:
        """An empty Poisson batch: zero clipped sum, so the step adds the noise alone."""
        for p in self.optimizer.params:
            if self.mode in ("ghost", "bk"):
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)

    @property
    def params(self) -> list[nn.Parameter]:
        return list(self.optimizer.params)

    def close(self) -> None:
        """Detach Opacus from the module (hooks and per-sample attributes)."""
        if self._bookkeeping is not None:
            self._bookkeeping.close()
        remove = getattr(self.module, "_close", None)
        if callable(remove):
            remove()


__all__ = ["GRAD_SAMPLE_MODES", "GradSampleMode", "PrivateTraining"]
