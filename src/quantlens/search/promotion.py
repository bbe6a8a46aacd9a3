"""What promoting one unit removes from a fixed all-int8 point: leave one out, measured.

Isolated noise (one unit quantized, the rest float) predicts a state's noise as the sum of its
int8 units' noise. After the fixes that stops holding: a corrected bias offsets the mean error
of the int8 layers above it, and in an isolated run, where those layers are float, the offset is
itself noise (picodet on `hailo8`, bias correction kept: the isolated model predicted the fixed
all-int8 at 0.07 dB against 5.30 measured, and every promotion it bought up to 1.15x measured
below the fixed point, while one depthwise Conv it passed over, 16-bit alone at 1.02x with its
own bias correction, took the output from 4.94 to 6.20 dB and mAP from 0.45 to 0.55). Here each
unit is promoted on the fixed point itself, with every other unit int8 on its fixed values, and
the output noise it removes is its noise. Each variant re-runs only from the first step whose
quantization it changes, on the base run's tensors before their quantizers (cached once per
sample).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from quantlens.analysis.metrics import OutputNoise, channel_axes, output_powers
from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.schemes.qparams import QuantPlan

Tensor = torch.Tensor
Feed = dict[str, np.ndarray]
Tick = Callable[[int, int], None]


@dataclass
class Variant:
    """One unit promoted on the base point: its plan and the initializers it runs on in place of
    the executor's (a promoted layer's bias from before the fixes)."""

    key: str
    plan: QuantPlan
    values: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Gains:
    base_nsr: float  # the base point's output noise-to-signal ratio
    nsr: dict[str, float]  # variant key -> its output noise-to-signal ratio

    def gain(self, key: str) -> float:
        """Noise the variant removes (0 where it adds noise)."""
        return max(0.0, self.base_nsr - self.nsr[key])


class _Recording:
    """Hooks that apply `inner` and keep every activation as it was before its quantizer."""

    activation_owned = None  # never quantize in place: the value before is what is kept

    def __init__(self, inner: QuantHooks) -> None:
        self.inner = inner
        self.kernels = inner.kernels
        self.raw_reads = inner.raw_reads
        self.cleans = inner.cleans
        self.before: dict[str, Tensor] = {}

    def activation(self, name: str, tensor: Tensor) -> Tensor:
        self.before[name] = tensor
        return self.inner.activation(name, tensor)

    def weight(self, name: str, tensor: Tensor) -> Tensor:
        return self.inner.weight(name, tensor)


@dataclass
class _StepIndex:
    """Where each constant or fed tensor is first read, and each node's step (one pass over
    the graph for all the variants)."""

    first_read: dict[str, int]
    node_step: dict[str, int]

    @classmethod
    def of(cls, executor: Executor) -> _StepIndex:
        first_read: dict[str, int] = {}
        for step in executor.steps:
            for name in step.inputs:
                if name is not None and name not in first_read:
                    first_read[name] = step.index
        return cls(first_read, {step.ctx.name: step.index for step in executor.steps})


def first_changed_step(
    executor: Executor, base: QuantPlan, variant: Variant, index: _StepIndex | None = None
) -> int:
    """The earliest step whose computation differs under `variant`: a tensor it quantizes
    otherwise (at its producer), a constant it reads otherwise or a node computed otherwise."""
    steps: list[int] = []
    index = index or _StepIndex.of(executor)
    consumers = index.first_read
    for name in set(base.activations) | set(variant.plan.activations):
        if base.activations.get(name) != variant.plan.activations.get(name):
            step = executor.producer.get(name)
            steps.append(step.index if step is not None else consumers.get(name, 0))
    changed_constants = {
        n
        for n in set(base.weights) | set(variant.plan.weights)
        if base.weights.get(n) != variant.plan.weights.get(n)
    }
    for name in changed_constants | set(variant.values):
        steps.append(consumers.get(name, 0))
    for table_a, table_b in (
        (base.requant, variant.plan.requant),
        (base.float_nodes, variant.plan.float_nodes),
    ):
        for node in set(table_a) | set(table_b):
            if table_a.get(node) != table_b.get(node):
                steps.append(index.node_step.get(node, 0))
    return min(steps, default=len(executor.steps))


def _frontier(executor: Executor, start: int, cached: Mapping[str, Tensor]) -> list[str]:
    """Tensors made before step `start` (or fed) that a step from `start` on, or the graph's
    outputs, read: what a re-run from `start` begins with."""
    read_later = {
        name
        for step in executor.steps[start:]
        for name in step.inputs
        if name is not None and name not in executor.weights
    }
    wanted = read_later | set(executor.output_names)
    made = executor.producer
    return [n for n in wanted if n in cached and (n not in made or made[n].index < start)]


def promotion_gains(
    executor: Executor,
    base: QuantPlan,
    variants: Sequence[Variant],
    feeds: Sequence[Feed],
    reference: Callable[[Feed], Mapping[str, Tensor]],
    progress: Tick | None = None,
) -> Gains:
    """The output noise of `base` and of every variant over `feeds`. `reference(feed)`: the
    float model's outputs (run on the values from before any fix). The base run's tensors
    before their quantizers are held for every sample (a few samples: `sensitivity_samples`),
    so each variant's hooks, and the weights they quantize, are made once."""
    axes = channel_axes(executor.model.graph.outputs)
    outputs = executor.output_names
    base_noise = OutputNoise(axes=axes)
    samples: list[tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]]
    samples = []
    with torch.inference_mode():
        for feed in feeds:
            ref = dict(reference(feed))
            signal = output_powers(ref, axes)
            recording = _Recording(QuantHooks(base, executor.device))
            quantized = executor.run(feed, hooks=recording)
            base_noise.add(ref, quantized, signal)
            samples.append((ref, signal, recording.before, quantized))
        nsr: dict[str, float] = {}
        fronts: dict[int, list[str]] = {}
        index = _StepIndex.of(executor)
        for done, variant in enumerate(variants):
            start = first_changed_step(executor, base, variant, index)
            noise = OutputNoise(axes=axes)
            hook = QuantHooks(variant.plan, executor.device, values=variant.values)
            for ref, signal, cached, quantized in samples:
                if start >= len(executor.steps):  # changes nothing the graph computes
                    noise.add(ref, quantized, signal)
                    continue
                front = fronts.get(start)
                if front is None:
                    front = fronts[start] = _frontier(executor, start, cached)
                begin = {name: hook.activation(name, cached[name]) for name in front}
                noise.add(ref, executor.run(start=begin, outputs=outputs, hooks=hook), signal)
            nsr[variant.key] = noise.nsr
            if progress is not None:
                progress(done + 1, len(variants))
    return Gains(base_noise.nsr, nsr)
