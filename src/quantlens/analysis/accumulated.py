"""Accumulated noise: everything quantized, every layer's output compared with float.

One float and one quantized pass per batch; each layer's comparison is folded into fixed-size
sums at once, so memory does not grow with the number of samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from quantlens.analysis.metrics import ErrorSums, HistogramPair, Scatter, sample_pairs
from quantlens.analysis.ownership import LayerTensors
from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.schemes.qparams import QuantPlan

Tick = Callable[[], None]


@dataclass
class AccumulatedResult:
    tensors: dict[str, ErrorSums] = field(default_factory=dict)
    outputs: dict[str, ErrorSums] = field(default_factory=dict)
    histograms: dict[str, HistogramPair] = field(default_factory=dict)
    scatter: dict[str, Scatter] = field(default_factory=dict)


def run_accumulated(
    executor: Executor,
    plan: QuantPlan,
    layers: Sequence[LayerTensors],
    batches: Iterable[Mapping[str, np.ndarray]],
    ranges: Mapping[str, tuple[float, float]],
    pairs: int = 512,
    bins: int = 32,
    tick: Tick | None = None,
) -> AccumulatedResult:
    """`ranges` fix each measured tensor's histogram edges (calibrated min/max where known)."""
    hooks = QuantHooks(plan, executor.device)
    measured = list(dict.fromkeys(lt.measured for lt in layers))
    result = AccumulatedResult()
    for name in measured:
        low, high = ranges.get(name, (None, None))
        result.histograms[name] = HistogramPair(bins, low, high)
    with torch.inference_mode():
        for feed in batches:
            reference = executor.run(feed, keep=measured)
            quantized = executor.run(feed, keep=measured, hooks=hooks)
            for name in measured:
                result.tensors.setdefault(name, ErrorSums()).add(reference[name], quantized[name])
                result.histograms[name].add(reference[name], quantized[name])
                if name not in result.scatter:
                    result.scatter[name] = sample_pairs(reference[name], quantized[name], pairs)
            for name in executor.output_names:
                result.outputs.setdefault(name, ErrorSums()).add(reference[name], quantized[name])
            if tick is not None:
                tick()
    return result
