"""Each unit's isolated noise at the outputs, and a whole candidate's.

Noise is `analysis.metrics.OutputNoise`: compared per output channel, as noise-to-signal ratios
that add across units, which is what the integer program's noise model assumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from quantlens.analysis.metrics import OutputNoise
from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.schemes.qparams import QuantPlan
from quantlens.search.units import Unit

Tensor = torch.Tensor
Feed = dict[str, np.ndarray]
Tick = Callable[[int, int], None]


def nsr_to_db(nsr: float) -> float:
    return math.inf if nsr <= 0 else -10.0 * math.log10(nsr)


@dataclass
class UnitNoise:
    weight: float = 0.0  # noise-to-signal ratio at the outputs, weights alone quantized
    activation: float = 0.0  # ... the unit's activation quantizers alone


def unit_noise(
    executor: Executor,
    plan: QuantPlan,
    units: Sequence[Unit],
    feeds: Sequence[Feed],
    progress: Tick | None = None,
) -> dict[str, UnitNoise]:
    """Each unit's weight-only and activation-only noise at the outputs, from cached float
    tensors: one float pass per sample, then only the unit and what follows it re-runs."""
    keep = list(dict.fromkeys(name for u in units for name in u.cut))
    variants = [(u, v) for u in units for v in ("weight", "activation") if u.quantizers(v)]
    hooks = {
        (u.id, v): QuantHooks(plan, executor.device, only=u.quantizers(v)) for u, v in variants
    }
    sums = {(u.id, v): OutputNoise() for u, v in variants}
    outputs = executor.output_names
    with torch.inference_mode():
        for index, feed in enumerate(feeds):
            cache = executor.run(feed, keep=keep)
            reference = {name: cache[name] for name in outputs}
            for unit, variant in variants:
                hook = hooks[(unit.id, variant)]
                start = {name: hook.activation(name, cache[name]) for name in unit.cut}
                quantized = executor.run(start=start, outputs=outputs, hooks=hook)
                sums[(unit.id, variant)].add(reference, quantized)
            del cache, reference
            if progress is not None:
                progress(index + 1, len(feeds))
    result = {u.id: UnitNoise() for u in units}
    for (unit_id, variant), noise in sums.items():
        setattr(result[unit_id], variant, noise.nsr)
    return result


def output_noise(
    executor: Executor,
    plan: QuantPlan,
    feeds: Sequence[Feed],
    references: Sequence[Mapping[str, Tensor]],
) -> OutputNoise:
    """The whole quantized model against cached float outputs."""
    hooks = QuantHooks(plan, executor.device)
    noise = OutputNoise()
    with torch.inference_mode():
        for feed, reference in zip(feeds, references):
            noise.add(reference, executor.run(feed, hooks=hooks))
    return noise
