"""Book-keeping per-sample clipping for MLPs: one backward pass, no per-sample gradients.

Bu, Wang, Zha and Karypis 2023, "Differentially Private Optimization on Large Model at
Small Cost" (ICML), Alg. 1 ("BK"), for the case our encoders and heads live in: every
trainable layer is an `nn.Linear` applied to a (batch, features) input. For such a layer
with input rows a_i and output gradients g_i = dL_i/dz_i, sample i's weight gradient is
the outer product g_i a_i^T, so

    ||grad_W L_i||_F^2 = ||g_i||^2 ||a_i||^2,      ||grad_b L_i||^2 = ||g_i||^2,

and the sum of the clipped per-sample gradients is one matrix product,

    sum_i c_i g_i a_i^T = (c * G)^T A,     c_i = min(1, C / (||grad L_i|| + 1e-6)).

Opacus' ghost clipping (`ghost` mode) computes the same norms but then runs a second full
backward pass of the re-weighted loss; here the output gradients are taken once with
`torch.autograd.grad` (which skips every weight gradient) and each layer's clipped sum is
formed from them directly: the cost is that of one ordinary backward pass plus O(B * width)
for the norms. The clipping rule, its stabiliser 1e-6 and the noise (Opacus' optimizer,
`privacy.dp.engine`) are those of the other modes, so the released gradient has the same
distribution and the same privacy accounting.

What the closed form needs, and is checked: every module holding trainable parameters is
an `nn.Linear` whose parameters it does not share, no module keeps buffers (batch
statistics would mix samples), each layer runs once per forward pass, on a 2-D input.
Anything else raises `UnsupportedMode` naming the module; the other modes remain for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from privacy.dp.errors import UnsupportedMode

#: Added to a norm before dividing by it, as Opacus does in every clipping mode.
NORM_STABILISER: Final = 1e-6


@dataclass
class _Record:
    """One layer's input rows and output, kept from the forward pass of a step."""

    inputs: torch.Tensor
    output: torch.Tensor


class BookKeepingClipper:
    """Per-sample clipped gradient sums of `module`'s `nn.Linear` layers (module docstring)."""

    def __init__(self, module: nn.Module, max_grad_norm: float) -> None:
        self.max_grad_norm = float(max_grad_norm)
        self._layers: list[tuple[str, nn.Linear]] = []
        owners: dict[int, str] = {}
        for name, sub in module.named_modules():
            label = name or type(module).__name__
            if any(True for _ in sub.buffers(recurse=False)):
                raise UnsupportedMode(
                    f"grad_sample_mode 'bk' does not support modules with buffers "
                    f"({label}: {type(sub).__name__}); use 'hooks' or 'ghost'"
                )
            trainable = [p for p in sub.parameters(recurse=False) if p.requires_grad]
            if not trainable:
                continue
            if type(sub) is not nn.Linear:
                raise UnsupportedMode(
                    f"grad_sample_mode 'bk' supports only nn.Linear layers with trainable "
                    f"parameters, and {label} is {type(sub).__name__}; use 'hooks' or 'ghost'"
                )
            for p in trainable:
                if id(p) in owners:
                    raise UnsupportedMode(
                        f"grad_sample_mode 'bk' does not support shared parameters "
                        f"({owners[id(p)]} and {label}); use 'hooks'"
                    )
                owners[id(p)] = label
            self._layers.append((label, sub))
        self._records: dict[str, _Record] = {}
        self._recording = False
        self._handles: list[RemovableHandle] = [
            layer.register_forward_hook(self._hook(label)) for label, layer in self._layers
        ]

    def _hook(self, label: str) -> Any:
        def capture(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
            if not self._recording:
                return
            if label in self._records:
                raise UnsupportedMode(
                    f"grad_sample_mode 'bk' needs each layer to run once per forward pass, "
                    f"and {label} ran twice; use 'hooks'"
                )
            x = inputs[0]
            if x.dim() != 2:
                raise UnsupportedMode(
                    f"grad_sample_mode 'bk' needs (batch, features) inputs, and {label} got "
                    f"shape {tuple(x.shape)}; use 'ghost' for sequence inputs"
                )
            self._records[label] = _Record(x.detach(), output)

        return capture

    @contextmanager
    def recording(self) -> Iterator[None]:
        """The forward pass of one step: each layer's input and output are kept."""
        self._records.clear()
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def backward(self, losses: torch.Tensor) -> torch.Tensor:
        """Set each trainable parameter's `.grad` to the sum over the batch of its
        per-sample gradients, each sample's whole gradient clipped to `max_grad_norm`.

        `losses` holds one loss per sample of the forward pass just recorded; returns the
        per-sample gradient norms before clipping (not private: for tests and debugging).
        """
        batch = int(losses.shape[0])
        used = [(label, layer) for label, layer in self._layers if label in self._records]
        records = [self._records[label] for label, _ in used]
        self._records.clear()
        outputs = [r.output for r in records]
        # None where the loss does not depend on a layer's output (allow_unused).
        grads: tuple[torch.Tensor | None, ...] = (
            torch.autograd.grad(losses.sum(), outputs, allow_unused=True) if outputs else ()
        )
        squared = torch.zeros(batch, device=losses.device, dtype=losses.dtype)
        for (_, layer), record, g in zip(used, records, grads, strict=True):
            if g is None:
                continue
            g_sq = torch.linalg.vector_norm(g, dim=1).square()
            if layer.weight.requires_grad:
                squared += g_sq * torch.linalg.vector_norm(record.inputs, dim=1).square()
            if layer.bias is not None and layer.bias.requires_grad:
                squared += g_sq
        norms = squared.sqrt()
        coefficients = (self.max_grad_norm / (norms + NORM_STABILISER)).clamp(max=1.0)
        for (_, layer), record, g in zip(used, records, grads, strict=True):
            scaled = None if g is None else g * coefficients.unsqueeze(1)
            if layer.weight.requires_grad:
                _accumulate(
                    layer.weight,
                    torch.zeros_like(layer.weight) if scaled is None else scaled.T @ record.inputs,
                )
            if layer.bias is not None and layer.bias.requires_grad:
                _accumulate(
                    layer.bias,
                    torch.zeros_like(layer.bias) if scaled is None else scaled.sum(dim=0),
                )
        reached = {label for label, _ in used}
        for label, layer in self._layers:  # layers the forward pass did not reach: zero sum
            if label not in reached:
                for p in layer.parameters(recurse=False):
                    if p.requires_grad:
                        _accumulate(p, torch.zeros_like(p))
        return norms.detach()

    def close(self) -> None:
        """Remove the forward hooks; the module is left as it was given."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._records.clear()


def _accumulate(p: torch.Tensor, grad: torch.Tensor) -> None:
    if p.grad is None:
        p.grad = grad.detach()
    else:
        p.grad.add_(grad.detach())


__all__ = ["NORM_STABILISER", "BookKeepingClipper"]
