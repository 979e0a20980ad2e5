"""Book-keeping per-sample clipping: one backward pass, no per-sample gradients kept.

Bu, Wang, Zha and Karypis 2023, "Differentially Private Optimization on Large Model at
Small Cost" (ICML), Alg. 1 ("BK"), for the layers our encoders and heads are made of:
`nn.Linear` on (batch, features) inputs, `nn.Conv2d` and `nn.GroupNorm`. The output
gradients g_i = dL_i/dz_i of every layer are taken once with `torch.autograd.grad` (which
skips every weight gradient); from them and the layer inputs kept from the forward pass,
each sample's gradient norm and then the clipped sum are formed per layer:

- **Linear** (input rows a_i): grad_W L_i = g_i a_i^T, so ||grad_W L_i||^2 = ||g_i||^2 ||a_i||^2,
  ||grad_b L_i||^2 = ||g_i||^2, and the clipped sum is one product (c * G)^T A.
- **Conv2d** (Bu et al. 2023, Sec. 3; the "ghost norm" of Li et al. 2022): with the
  unfolded input patches A_i (D x T: D = C_in k^2 values at T output positions) and the
  output gradient G_i (C_out x T), grad_W L_i = G_i A_i^T, and

      ||G_i A_i^T||_F^2 = < A_i^T A_i , G_i^T G_i >     (two T x T Gram matrices),

  which costs T^2 (D + C_out) multiply-adds per sample against T D C_out for forming
  G_i A_i^T; the cheaper of the two is taken per layer and input shape.
  The clipped sum sum_i c_i G_i A_i^T is the ordinary weight gradient of the convolution
  for the output gradient c_i G_i (`torch.nn.grad.conv2d_weight`).
- **GroupNorm** (y = gamma * x_hat + beta per channel): the per-sample gradients are
  small (batch x channels) and formed directly: sum over positions of g * x_hat for
  gamma, of g for beta; x_hat is recomputed from the kept input.

The clipping rule c_i = min(1, C / (||grad L_i|| + 1e-6)) with ||grad L_i||^2 summed over
every layer, its stabiliser and the noise (Opacus' optimizer, `privacy.dp.engine`) are
those of the other modes, so the released gradient has the same distribution and the
same privacy accounting.

What the closed forms need, and is checked: every module holding trainable parameters is
one of those three (a Conv2d with groups = 1), none shares parameters, no module keeps
buffers (batch statistics would mix samples), each layer runs once per forward pass, and a
Linear sees 2-D input. Anything else raises `UnsupportedMode` naming the module; the other
modes remain for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (PyTorch's own convention)
from torch.nn.grad import conv2d_weight
from torch.utils.hooks import RemovableHandle

from privacy.dp.errors import UnsupportedMode

#: Added to a norm before dividing by it, as Opacus does in every clipping mode.
NORM_STABILISER: Final = 1e-6
SUPPORTED: Final = (nn.Linear, nn.Conv2d, nn.GroupNorm)


@dataclass
class _Record:
    """One layer's input and output, kept from the forward pass of a step."""

    inputs: torch.Tensor
    output: torch.Tensor


# -- per-layer closed forms -----------------------------------------------------------------
# Each takes the layer, its record and the output gradient g (None: the loss does not reach
# the layer); `_norms_sq` gives each sample's squared gradient norm over the layer's
# trainable parameters, `_clipped_sums` the sum of the per-sample gradients after scaling
# sample i's output gradient by its clipping coefficient.


def _linear_norms_sq(layer: nn.Linear, record: _Record, g: torch.Tensor) -> torch.Tensor:
    g_sq = torch.linalg.vector_norm(g, dim=1).square()
    out = torch.zeros_like(g_sq)
    if layer.weight.requires_grad:
        out += g_sq * torch.linalg.vector_norm(record.inputs, dim=1).square()
    if layer.bias is not None and layer.bias.requires_grad:
        out += g_sq
    return out


def _linear_sums(layer: nn.Linear, record: _Record, scaled: torch.Tensor) -> list[torch.Tensor]:
    sums = []
    if layer.weight.requires_grad:
        sums.append(scaled.T @ record.inputs)
    if layer.bias is not None and layer.bias.requires_grad:
        sums.append(scaled.sum(dim=0))
    return sums


def _conv_patches(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The unfolded input: (batch, C_in k_h k_w, T output positions), as `F.unfold` gives
    it, from strided views and one copy (`F.unfold`'s im2col is several times slower on
    CPU, and was most of a step's cost)."""
    padding = layer.padding
    if isinstance(padding, str):  # checked in the hook: only numeric padding reaches here
        raise UnsupportedMode(f"grad_sample_mode 'bk' needs numeric padding, got '{padding}'")
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
    # (B, C, oh, ow, kh, kw) windows; a dilated kernel takes every d-th value of a wider one.
    windows = padded.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
    windows = windows[..., ::dh, ::dw]
    batch, channels, oh, ow = windows.shape[:4]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(batch, channels * kh * kw, oh * ow)


def gram_is_cheaper(positions: int, depth: int, width: int) -> bool:
    """Whether a conv layer's per-sample norms are cheaper from the two T x T Gram
    matrices (T^2 (D + C_out) multiply-adds per sample) than from the per-sample gradient
    (T D C_out), for T output positions, D = C_in k^2 inputs and C_out = `width`."""
    return positions * (depth + width) <= depth * width


def _conv_norms_sq(layer: nn.Conv2d, record: _Record, g: torch.Tensor) -> torch.Tensor:
    batch = g.shape[0]
    grad = g.reshape(batch, g.shape[1], -1)  # (B, C_out, T)
    out = torch.zeros(batch, device=g.device, dtype=g.dtype)
    if layer.weight.requires_grad:
        patches = _conv_patches(layer, record.inputs)  # (B, D, T)
        if gram_is_cheaper(grad.shape[2], patches.shape[1], grad.shape[1]):
            a_gram = torch.bmm(patches.transpose(1, 2), patches)
            g_gram = torch.bmm(grad.transpose(1, 2), grad)
            out += (a_gram * g_gram).sum(dim=(1, 2))
        else:  # the per-sample gradients are the smaller object
            per_sample = torch.bmm(grad, patches.transpose(1, 2))
            out += per_sample.square().sum(dim=(1, 2))
    if layer.bias is not None and layer.bias.requires_grad:
        out += grad.sum(dim=2).square().sum(dim=1)
    return out


def _conv_sums(layer: nn.Conv2d, record: _Record, scaled: torch.Tensor) -> list[torch.Tensor]:
    sums = []
    if layer.weight.requires_grad:
        padding = layer.padding
        assert not isinstance(padding, str)
        sums.append(
            conv2d_weight(  # type: ignore[no-untyped-call]
                record.inputs,
                layer.weight.shape,
                scaled,
                stride=layer.stride,
                padding=padding,
                dilation=layer.dilation,
                groups=layer.groups,
            )
        )
    if layer.bias is not None and layer.bias.requires_grad:
        sums.append(scaled.sum(dim=(0, 2, 3)))
    return sums


def _group_norm_per_sample(
    layer: nn.GroupNorm, record: _Record, g: torch.Tensor
) -> list[torch.Tensor]:
    """Per-sample gradients of (weight, bias), each (batch, channels), trainable ones only."""
    dims = tuple(range(2, g.dim()))
    grads = []
    if layer.weight is not None and layer.weight.requires_grad:
        x_hat = F.group_norm(record.inputs, layer.num_groups, None, None, layer.eps)
        grads.append((g * x_hat).sum(dim=dims))
    if layer.bias is not None and layer.bias.requires_grad:
        grads.append(g.sum(dim=dims))
    return grads


def _group_norm_norms_sq(layer: nn.GroupNorm, record: _Record, g: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(g.shape[0], device=g.device, dtype=g.dtype)
    for grad in _group_norm_per_sample(layer, record, g):
        out += grad.square().sum(dim=1)
    return out


def _group_norm_sums(
    layer: nn.GroupNorm, record: _Record, scaled: torch.Tensor
) -> list[torch.Tensor]:
    return [grad.sum(dim=0) for grad in _group_norm_per_sample(layer, record, scaled)]


def _norms_sq(layer: nn.Module, record: _Record, g: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return _linear_norms_sq(layer, record, g)
    if isinstance(layer, nn.Conv2d):
        return _conv_norms_sq(layer, record, g)
    assert isinstance(layer, nn.GroupNorm)
    return _group_norm_norms_sq(layer, record, g)


def _clipped_sums(layer: nn.Module, record: _Record, scaled: torch.Tensor) -> list[torch.Tensor]:
    """The clipped sums of the layer's trainable parameters, in `parameters()` order."""
    if isinstance(layer, nn.Linear):
        return _linear_sums(layer, record, scaled)
    if isinstance(layer, nn.Conv2d):
        return _conv_sums(layer, record, scaled)
    assert isinstance(layer, nn.GroupNorm)
    return _group_norm_sums(layer, record, scaled)


def _trainable(layer: nn.Module) -> list[nn.Parameter]:
    return [p for p in layer.parameters(recurse=False) if p.requires_grad]


# -- the clipper ----------------------------------------------------------------------------


class BookKeepingClipper:
    """Per-sample clipped gradient sums of `module`'s layers (module docstring)."""

    def __init__(self, module: nn.Module, max_grad_norm: float) -> None:
        self.max_grad_norm = float(max_grad_norm)
        self._layers: list[tuple[str, nn.Module]] = []
        owners: dict[int, str] = {}
        for name, sub in module.named_modules():
            label = name or type(module).__name__
            if any(True for _ in sub.buffers(recurse=False)):
                raise UnsupportedMode(
                    f"grad_sample_mode 'bk' does not support modules with buffers "
                    f"({label}: {type(sub).__name__}); use 'hooks' or 'ghost'"
                )
            trainable = _trainable(sub)
            if not trainable:
                continue
            if type(sub) not in SUPPORTED:
                raise UnsupportedMode(
                    f"grad_sample_mode 'bk' supports only Linear, Conv2d and GroupNorm layers "
                    f"with trainable parameters, and {label} is {type(sub).__name__}; use "
                    "'hooks' or 'ghost'"
                )
            if isinstance(sub, nn.Conv2d) and (
                sub.groups != 1 or isinstance(sub.padding, str) or sub.padding_mode != "zeros"
            ):
                raise UnsupportedMode(
                    f"grad_sample_mode 'bk' supports Conv2d with groups = 1 and numeric zero "
                    f"padding, and {label} has groups = {sub.groups}, padding = "
                    f"{sub.padding!r} ({sub.padding_mode}); use 'hooks'"
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
            if isinstance(layer, nn.Linear) and x.dim() != 2:
                raise UnsupportedMode(
                    f"grad_sample_mode 'bk' needs (batch, features) inputs, and {label} got "
                    f"shape {tuple(x.shape)}; use 'ghost' for sequence inputs"
                )
            if isinstance(layer, nn.Conv2d) and x.dim() != 4:
                raise UnsupportedMode(
                    f"grad_sample_mode 'bk' needs (batch, channels, height, width) inputs, "
                    f"and {label} got shape {tuple(x.shape)}"
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
            if g is not None:
                squared += _norms_sq(layer, record, g.detach())
        norms = squared.sqrt()
        coefficients = (self.max_grad_norm / (norms + NORM_STABILISER)).clamp(max=1.0)
        for (_, layer), record, g in zip(used, records, grads, strict=True):
            params = _trainable(layer)
            if g is None:
                sums = [torch.zeros_like(p) for p in params]
            else:
                shape = (batch,) + (1,) * (g.dim() - 1)
                sums = _clipped_sums(layer, record, g.detach() * coefficients.view(shape))
            for p, total in zip(params, sums, strict=True):
                _accumulate(p, total)
        reached = {label for label, _ in used}
        for label, layer in self._layers:  # layers the forward pass did not reach: zero sum
            if label not in reached:
                for p in _trainable(layer):
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


__all__ = ["NORM_STABILISER", "SUPPORTED", "BookKeepingClipper", "gram_is_cheaper"]
