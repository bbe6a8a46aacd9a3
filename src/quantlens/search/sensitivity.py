"""Output noise measured per channel, and each unit's isolated noise at the outputs.

Noise is compared per output channel (axis 1) and the noise-to-signal ratios are averaged, so a
channel of small values is not hidden by a large one: a YOLO head writes box coordinates in
pixels (hundreds) next to class scores in 0..1, and one 8-bit grid over both rounds every score
to zero while the pooled SNR stays near 30 dB. Independent noise adds per channel, so these
ratios add across units too, which is what the integer program's noise model assumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.schemes.qparams import QuantPlan
from quantlens.search.units import Unit

Tensor = torch.Tensor
Feed = dict[str, np.ndarray]
Tick = Callable[[int, int], None]


@dataclass
class ChannelNoise:
    """Per output, per channel sums of reference² and noise² over every sample seen."""

    signal: dict[str, Tensor] = field(default_factory=dict)
    noise: dict[str, Tensor] = field(default_factory=dict)

    def add(self, reference: Mapping[str, Tensor], candidate: Mapping[str, Tensor]) -> None:
        for name, ref in reference.items():
            r = _channels_first(ref.detach().to(torch.float64))
            d = _channels_first(candidate[name].detach().to(torch.float64)) - r
            s, n = r.pow(2).sum(dim=1).cpu(), d.pow(2).sum(dim=1).cpu()
            self.signal[name] = self.signal[name] + s if name in self.signal else s
            self.noise[name] = self.noise[name] + n if name in self.noise else n

    @property
    def nsr(self) -> float:
        """Mean over outputs of the mean noise-to-signal ratio of their channels."""
        ratios = []
        for name, signal in self.signal.items():
            live = signal > 0
            if bool(live.any()):
                ratios.append(float((self.noise[name][live] / signal[live]).mean()))
        return sum(ratios) / len(ratios) if ratios else 0.0

    @property
    def snr_db(self) -> float:
        return nsr_to_db(self.nsr)


def nsr_to_db(nsr: float) -> float:
    return math.inf if nsr <= 0 else -10.0 * math.log10(nsr)


def db_to_nsr(snr_db: float) -> float:
    return 0.0 if snr_db == math.inf else 10.0 ** (-snr_db / 10.0)


def _channels_first(value: Tensor) -> Tensor:
    """[channels, everything else]: axis 1 for tensors of rank >= 2, one channel otherwise."""
    if value.dim() < 2:
        return value.reshape(1, -1)
    return value.transpose(0, 1).reshape(value.shape[1], -1)


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
    sums = {(u.id, v): ChannelNoise() for u, v in variants}
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
) -> ChannelNoise:
    """The whole quantized model against cached float outputs."""
    hooks = QuantHooks(plan, executor.device)
    noise = ChannelNoise()
    with torch.inference_mode():
        for feed, reference in zip(feeds, references):
            noise.add(reference, executor.run(feed, hooks=hooks))
    return noise
