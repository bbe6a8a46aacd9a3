"""Each unit's isolated noise at the outputs, and a whole candidate's.

Noise is `analysis.metrics.OutputNoise`: compared per output channel, as noise-to-signal ratios
that add across units, which is what the integer program's noise model assumes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from quantlens.analysis.isolated import run_isolated
from quantlens.analysis.metrics import OutputNoise, channel_axes
from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.schemes.qparams import QuantPlan
from quantlens.search.units import Unit

Tensor = torch.Tensor
Feed = dict[str, np.ndarray]
Tick = Callable[[int, int], None]


@dataclass
class UnitNoise:
    weight: float = 0.0  # noise-to-signal ratio at the outputs, weights alone quantized
    activation: float = 0.0  # ... the unit's activation quantizers alone
    weight4: float | None = None  # ... its weights alone on the 4-bit grid (a8_w4), if measured


def unit_noise(
    executor: Executor,
    plan: QuantPlan,
    units: Sequence[Unit],
    feeds: Sequence[Feed],
    progress: Tick | None = None,
    values: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> dict[str, UnitNoise]:
    """Each unit's weight-only and activation-only noise at the outputs: the analysis' isolated
    runs (one float pass per sample, then only the unit and what follows it re-runs). `values`:
    unit id -> the fixed float values its weight-only run reads (`run_isolated`)."""
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], len(feeds))

    found = run_isolated(
        executor, plan, units, feeds, ("weight", "activation"), tick=tick, values=values
    )
    return {
        u.id: UnitNoise(found.noise[u.id]["weight"].nsr, found.noise[u.id]["activation"].nsr)
        for u in units
    }


def weight4_noise(
    executor: Executor,
    plan4: QuantPlan,
    units: Sequence[Unit],
    feeds: Sequence[Feed],
    progress: Tick | None = None,
) -> dict[str, float]:
    """Each unit's weight-only noise with its weights on the 4-bit grid: `plan4` holds every
    lowered layer's 4-bit weights; the same isolated runs as the upward moves' noise."""
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], len(feeds))

    found = run_isolated(executor, plan4, units, feeds, ("weight",), tick=tick)
    return {u.id: found.noise[u.id]["weight"].nsr for u in units}


def output_noise(
    executor: Executor,
    plan: QuantPlan,
    feeds: Sequence[Feed],
    references: Sequence[Mapping[str, Tensor]],
) -> OutputNoise:
    """The whole quantized model against cached float outputs."""
    hooks = QuantHooks(plan, executor.device)
    noise = OutputNoise(axes=channel_axes(executor.model.graph.outputs))
    with torch.inference_mode():
        for feed, reference in zip(feeds, references):
            noise.add(reference, executor.run(feed, hooks=hooks))
    return noise
