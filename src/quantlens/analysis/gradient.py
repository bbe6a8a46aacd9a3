"""Gradient estimate of each layer's isolated effect on the outputs: one forward, one backward.

What is estimated is the same quantity isolated mode measures: the output noise power relative
to the output power, Σ_o ‖Δy_o‖² / ‖y_o‖² (averaged over outputs), when only one layer is
quantized. To first order Δy_o = Σ_t J_{o,t} e_t, with e_t = fq(t) − t the quantization noise of
each tensor t the layer owns. One backward pass of the scalar

    L = Σ_o ⟨r_o, y_o⟩ / ‖y_o‖,   r_o a random ±1 vector (Rademacher probe),

gives g_t = ∂L/∂t = Σ_o J_{o,t}ᵀ r_o / ‖y_o‖ for every tensor at once, and for any fixed e,
E_r[⟨g, e⟩²] = Σ_o ‖J_o e‖² / ‖y_o‖² (Hutchinson). Two estimators follow:
- "direct": (Σ_t ⟨g_t, e_t⟩)², unbiased for the actual noise vector but with the variance of a
  single probe (a χ² with one degree of freedom per batch);
- "diagonal" (default): Σ_t Σ_i g_{t,i}² e_{t,i}², which treats quantization noise as
  independent between elements (cross terms vanish in expectation) and so averages over every
  element of the tensor: far lower variance, the estimator behind Fisher-weighted noise.
L = ‖y‖² was not used: its first-order change 2⟨y, Δy⟩ measures the noise along y only and
cancels for zero-mean noise. The forward pass is in float with no quantizer applied; e_t is
computed from the float tensors with the plan's quantizers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from quantlens.analysis.metrics import channel_powers
from quantlens.analysis.ownership import LayerTensors
from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.schemes.qparams import QuantPlan

Tensor = torch.Tensor
Tick = Callable[[], None]
ESTIMATORS = ("diagonal", "direct")


class _GradHooks:
    """Records every quantized tensor of a float forward pass as a tensor that needs a grad."""

    def __init__(self, plan: QuantPlan, device: torch.device) -> None:
        self.quant = QuantHooks(plan, device)
        self.tensors: dict[str, Tensor] = {}

    def weight(self, name: str, tensor: Tensor) -> Tensor:
        if name not in self.quant.weights or not tensor.is_floating_point():
            return tensor
        if name not in self.tensors:
            self.tensors[name] = tensor.detach().clone().requires_grad_(True)
        return self.tensors[name]

    def activation(self, name: str, tensor: Tensor) -> Tensor:
        if name not in self.quant.activations or not tensor.is_floating_point():
            return tensor
        if not tensor.requires_grad:
            tensor = tensor.detach().requires_grad_(True)
        self.tensors[name] = tensor
        return tensor

    def noise(self, name: str, weights: Mapping[str, Tensor]) -> Tensor:
        value = self.tensors[name].detach()
        if name in self.quant.weights:
            return self.quant.weight(name, weights[name]) - value
        return self.quant.activation(name, value) - value


@dataclass
class GradientResult:
    # layer id -> variant -> estimator -> summed relative noise power over batches
    noise: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    batches: int = 0
    outputs: int = 1

    def snr_db(self, layer: str, variant: str = "both", estimator: str = "diagonal") -> float:
        total = self.noise.get(layer, {}).get(variant, {}).get(estimator, 0.0)
        relative = total / max(self.batches, 1) / max(self.outputs, 1)
        return math.inf if relative <= 0 else -10.0 * math.log10(relative)


def _probe_loss(outputs: Mapping[str, Tensor], seed: int) -> Tensor | None:
    """Σ over outputs of ⟨probe, y⟩ with a ±1 probe scaled by 1/√(C·P_c) per channel c (axis 1):
    the squared first-order change then estimates the mean per-channel noise-to-signal ratio,
    the quantity `OutputNoise` measures."""
    generator = torch.Generator().manual_seed(seed)
    terms = []
    for y in outputs.values():
        if not y.requires_grad or not y.is_floating_point():
            continue
        powers = channel_powers(y)
        live = powers > 0
        if not bool(live.any()):
            continue
        scale = torch.where(live, 1.0 / (powers * int(live.sum())).clamp_min(1e-300).sqrt(), 0.0)
        shape = [1] * y.dim()
        if y.dim() >= 2:
            shape[1] = -1
        probe = torch.randint(0, 2, y.shape, generator=generator).to(y.device, y.dtype) * 2 - 1
        weights = scale.to(y.device, y.dtype).reshape(shape)
        terms.append((probe * weights * y).sum())
    return torch.stack(terms).sum() if terms else None


def _tensor_terms(
    hooks: _GradHooks, executor: Executor, loss: Tensor
) -> dict[str, tuple[float, float]]:
    """Per quantized tensor: (⟨g, e⟩, Σ g²e²)."""
    names = list(hooks.tensors)
    grads = torch.autograd.grad(loss, [hooks.tensors[n] for n in names], allow_unused=True)
    terms: dict[str, tuple[float, float]] = {}
    for name, grad in zip(names, grads):
        if grad is None:
            continue
        weighted = grad.detach().double() * hooks.noise(name, executor.weights).double()
        terms[name] = (float(weighted.sum()), float(weighted.pow(2).sum()))
    return terms


def run_gradient(
    executor: Executor,
    plan: QuantPlan,
    layers: Sequence[LayerTensors],
    batches: Iterable[Mapping[str, np.ndarray]],
    variants: Sequence[str] = ("both", "weight", "activation"),
    seed: int = 0,
    tick: Tick | None = None,
) -> GradientResult:
    result = GradientResult(outputs=len(executor.output_names))
    with torch.inference_mode(False):
        for index, feed in enumerate(batches):
            hooks = _GradHooks(plan, executor.device)
            outputs = executor.run(feed, hooks=hooks, grad=True)
            loss = _probe_loss(outputs, seed + index)
            terms = _tensor_terms(hooks, executor, loss) if loss is not None else {}
            del outputs, loss, hooks
            for lt in layers:
                for variant in variants:
                    _add_layer(result, lt, variant, terms)
            result.batches += 1
            if tick is not None:
                tick()
    return result


def _add_layer(
    result: GradientResult, lt: LayerTensors, variant: str, terms: Mapping[str, tuple[float, float]]
) -> None:
    owned = [terms[n] for n in lt.quantizers(variant) if n in terms]
    slot = result.noise.setdefault(lt.id, {}).setdefault(variant, dict.fromkeys(ESTIMATORS, 0.0))
    slot["direct"] += sum(linear for linear, _ in owned) ** 2
    slot["diagonal"] += sum(square for _, square in owned)
