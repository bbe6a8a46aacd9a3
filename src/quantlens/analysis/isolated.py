"""Isolated noise: one layer quantized at a time, its effect measured at the model outputs.

The float tensors of a batch are computed once and cached at every layer's cut; each layer then
re-runs only its own node and the nodes after it, from those cached float tensors, with a
`QuantHooks(only=...)` that quantizes nothing but that layer. The layer's input quantizer is
applied to the cached input here, since tensors given as `start` bypass the hooks.

Variants: "both" (the layer's weight and activation quantizers), "weight" and "activation",
so a layer's noise can be blamed on its weights (per-channel, equalization, 16-bit weights) or
on its activations (clipping, 16-bit activations).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from quantlens.analysis.metrics import OutputNoise, channel_axes, output_powers
from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.schemes.qparams import QuantPlan

Tensor = torch.Tensor
Tick = Callable[[], None]
VARIANTS = ("both", "weight", "activation")
# Task metric of quantized outputs against float ones for one batch (higher is better).
Evaluator = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], float]
FloatRun = Callable[[int, Mapping[str, np.ndarray], list[str]], Mapping[str, Tensor]]


class IsolatedUnit(Protocol):
    """What an isolated run needs of a layer (`LayerTensors`, or a search unit)."""

    @property
    def id(self) -> str: ...

    @property
    def cut(self) -> tuple[str, ...]: ...

    def quantizers(self, variant: str) -> frozenset[str]: ...


@dataclass
class IsolatedResult:
    # layer id -> variant -> noise at the outputs
    noise: dict[str, dict[str, OutputNoise]] = field(default_factory=dict)
    # layer id -> mean task metric (only with an evaluator, variant "both")
    metric: dict[str, float] = field(default_factory=dict)

    def snr_db(self, layer: str, variant: str = "both") -> float | None:
        found = self.noise.get(layer, {}).get(variant)
        return found.snr_db if found is not None else None


def run_isolated(
    executor: Executor,
    plan: QuantPlan,
    layers: Sequence[IsolatedUnit],
    batches: Iterable[Mapping[str, np.ndarray]],
    variants: Sequence[str] = VARIANTS,
    evaluator: Evaluator | None = None,
    tick: Tick | None = None,
    floats: FloatRun | None = None,
    values: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> IsolatedResult:
    """`tick` is called once per batch; the evaluator's score is averaged over batches.
    `floats(index, batch, keep)`: the float tensors of a batch, at least `keep` and the outputs
    (a scale-out worker keeps them between its shards of layers); default: computed here.
    `values`: layer id -> initializers its runs that quantize its weights read instead of the
    executor's (its fixed biases, measured against the float model's own)."""
    outputs = executor.output_names
    keep = list(dict.fromkeys(name for lt in layers for name in lt.cut))
    values = values or {}
    hooks = {
        (lt.id, v): QuantHooks(
            plan,
            executor.device,
            only=lt.quantizers(v),
            values=values.get(lt.id) if v != "activation" else None,
        )
        for lt in layers
        for v in variants
    }
    axes = channel_axes(executor.model.graph.outputs)
    result = IsolatedResult()
    metric_sums: dict[str, float] = {}
    count = 0
    with torch.inference_mode():
        for index, feed in enumerate(batches):
            count += 1
            cache = floats(index, feed, keep) if floats else executor.run(feed, keep=keep)
            reference = {name: cache[name] for name in outputs}
            signal = output_powers(reference, axes)
            for lt in layers:
                for variant in variants:
                    quantized = _run_one(executor, lt, hooks[(lt.id, variant)], cache)
                    slots = result.noise.setdefault(lt.id, {})
                    noise = slots.setdefault(variant, OutputNoise(axes=axes))
                    noise.add(reference, quantized, signal)
                    if evaluator is not None and variant == "both":
                        score = evaluator(reference, quantized)
                        metric_sums[lt.id] = metric_sums.get(lt.id, 0.0) + score
            del cache, reference
            if tick is not None:
                tick()
    result.metric = {name: total / max(count, 1) for name, total in metric_sums.items()}
    return result


def _run_one(
    executor: Executor, lt: IsolatedUnit, hooks: QuantHooks, cache: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    if not hooks.activations and not hooks.weights:
        return {name: cache[name] for name in executor.output_names}
    start = {name: hooks.activation(name, cache[name]) for name in lt.cut}
    return executor.run(start=start, outputs=executor.output_names, hooks=hooks)
