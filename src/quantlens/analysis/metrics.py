"""Fixed-size accumulators for streaming comparisons, and rank statistics.

Every accumulator holds a few numbers per tensor however many samples stream through it: sums
of squares, a dot product, a maximum, a histogram of fixed bins and one fixed-size subsample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import torch

from quantlens.artifacts.analysis import NoiseStats, Scatter, ValueHistogram

Tensor = torch.Tensor


def _db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass
class ErrorSums:
    """Σref², Σnoise², Σref·cand, Σcand², count and max |noise| of one tensor."""

    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    candidate: float = 0.0
    count: int = 0
    max_abs: float = 0.0
    # Σnoise per channel (axis 1): the part of the noise a per-channel bias would remove.
    # None before the first tensor, or once the channel count changed between tensors.
    channel_sums: Tensor | None = None
    channels_agree: bool = True

    def add(self, reference: Tensor, candidate: Tensor) -> None:
        """Three norms and a maximum over the tensors as they are (no float64 or flat copies:
        accumulated mode runs this on every layer output); Σref·cand follows from the norms,
        (‖r‖² + ‖c‖² − ‖c − r‖²) / 2, without cancellation since ‖c − r‖ is the small term."""
        ref = reference.detach()
        dtype = torch.promote_types(ref.dtype, torch.float32)
        ref = ref.to(dtype)
        cand = candidate.detach().to(ref.device, dtype)
        if ref.numel():
            diff = cand - ref
            norms = torch.stack(
                [
                    torch.linalg.vector_norm(value, dtype=torch.float64)
                    for value in (ref, diff, cand)
                ]
                + [torch.linalg.vector_norm(diff, ord=math.inf).to(torch.float64)]
            ).tolist()  # one device sync per tensor
            signal, noise, power = norms[0] ** 2, norms[1] ** 2, norms[2] ** 2
            self.signal += signal
            self.noise += noise
            self.candidate += power
            self.dot += (signal + power - noise) / 2.0
            self.max_abs = max(self.max_abs, norms[3])
            self._add_channels(diff)
        self.count += ref.numel()

    def _add_channels(self, diff: Tensor) -> None:
        if diff.dim() < 2 or not self.channels_agree:
            return
        dims = [d for d in range(diff.dim()) if d != 1]
        sums = diff.sum(dim=dims, dtype=torch.float64)
        if self.channel_sums is None:
            self.channel_sums = sums
        elif self.channel_sums.shape == sums.shape:
            self.channel_sums = self.channel_sums + sums
        else:  # axis 1 is not a channel axis here (a sequence of changing length)
            self.channels_agree, self.channel_sums = False, None

    @property
    def mean_shift_share(self) -> float | None:
        """The share of Σnoise² that is each channel's mean error: Σ_c n_c·mean_c² / Σnoise²
        (n_c, the elements of a channel, is the count over the channels)."""
        if self.channel_sums is None or self.noise <= 0 or not self.count:
            return None
        per_channel = self.count / self.channel_sums.numel()
        return float((self.channel_sums**2).sum()) / per_channel / self.noise

    @property
    def snr_db(self) -> float:
        return _db(self.signal, self.noise)

    def stats(self) -> NoiseStats:
        norms = math.sqrt(self.signal * self.candidate)
        cosine = self.dot / norms if norms > 0 else (1.0 if self.noise == 0 else 0.0)
        return NoiseStats(
            snr_db=self.snr_db,
            cosine=cosine,
            mse=self.noise / self.count if self.count else 0.0,
            max_abs_error=self.max_abs,
            mean_shift_share=self.mean_shift_share,
        )


@dataclass
class OutputNoise:
    """Noise at every model output, compared per channel: the noise-to-signal ratios of the
    channels are averaged within an output, then over outputs, so a channel or an output of
    small values is not hidden by a large one. A YOLO head writes box coordinates in pixels next
    to class scores in 0..1; one 8-bit grid over both rounds every score to zero while a pooled
    SNR stays near 30 dB. Independent noise adds per channel, so these ratios add across layers.

    `axes` (see `channel_axes`): each output's channel axis, 1 where it is not named; None
    compares the output as one channel (axis 1 is a sequence whose length changes with the
    input, as an OCR line's time steps)."""

    signal: dict[str, Tensor] = field(default_factory=dict)
    noise: dict[str, Tensor] = field(default_factory=dict)
    axes: Mapping[str, int | None] = field(default_factory=dict)

    def add(
        self,
        reference: Mapping[str, Tensor],
        candidate: Mapping[str, Tensor],
        signal: Mapping[str, Tensor] | None = None,
    ) -> None:
        """`signal`: `output_powers(reference, self.axes)`, when the caller compares many
        candidates with one reference (isolated mode: every layer against one float run)."""
        powers = signal if signal is not None else output_powers(reference, self.axes)
        for name, ref in reference.items():
            ref, cand = ref.detach(), candidate[name].detach().to(ref.device)
            if not (ref.is_floating_point() and cand.is_floating_point()):
                ref, cand = ref.to(torch.float64), cand.to(torch.float64)
            diff = cand - ref  # float32 when both are: exact to 2⁻²⁴ of the noise itself
            s, n = powers[name], channel_powers(diff, self.axes.get(name, 1)).cpu()
            self.signal[name] = self.signal[name] + s if name in self.signal else s
            self.noise[name] = self.noise[name] + n if name in self.noise else n

    @property
    def nsr(self) -> float:
        """Mean over outputs of the mean noise-to-signal ratio of their (non-zero) channels."""
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
    """A noise-to-signal ratio in dB of SNR (+inf for no noise)."""
    return _db(1.0, nsr)


def output_powers(
    outputs: Mapping[str, Tensor], axes: Mapping[str, int | None]
) -> dict[str, Tensor]:
    """`channel_powers` of every output, on the CPU (what `OutputNoise.add` accumulates)."""
    return {name: channel_powers(value, axes.get(name, 1)).cpu() for name, value in outputs.items()}


def channel_powers(value: Tensor, axis: int | None = 1) -> Tensor:
    """Σ value² per channel along `axis` (the whole tensor is one channel below rank 2 or for
    None), accumulated in float64 over the tensor as it is: no float64, transposed or flat copy
    (on an OCR head's 40 x 18710 logits per sample those copies were most of isolated mode's
    time)."""
    data = value.detach()
    if not data.is_floating_point():
        data = data.to(torch.float64)
    if data.dim() < 2 or axis is None:
        return (torch.linalg.vector_norm(data, dtype=torch.float64) ** 2).reshape(1)
    others = [d for d in range(data.dim()) if d != axis]
    return torch.linalg.vector_norm(data, dim=others, dtype=torch.float64) ** 2


def channel_axes(outputs: Sequence[ir.Value]) -> dict[str, int | None]:
    """Each graph output's channel axis for `OutputNoise`: axis 1 (NCHW maps, logits, a YOLO
    head's [N, 4 + classes, anchors]); the last axis of a rank-3 output whose last size is fixed
    and smaller than axis 1's, a head that lists anchors before classes ([N, anchors, classes],
    PicoDet's): compared per anchor, thousands of background anchors whose scores sit near zero
    made the mean ratio, and the search ranked candidates on noise the task metric never sees.
    None (one channel) where axis 1 has no fixed size: its channel count would change from
    sample to sample."""
    axes: dict[str, int | None] = {}
    for value in outputs:
        shape = value.shape
        if shape is None or len(shape) < 2:
            continue
        dims = list(shape)
        if not isinstance(dims[1], int):
            axes[value.name or ""] = None
        elif len(dims) == 3 and isinstance(dims[2], int) and dims[2] < dims[1]:
            axes[value.name or ""] = 2
    return axes


class HistogramPair:
    """Float and quantized value histograms over fixed bins (edges fixed on first use)."""

    def __init__(self, bins: int, low: float | None = None, high: float | None = None) -> None:
        self.bins = bins
        self.low, self.high = low, high
        self.ref = torch.zeros(bins, dtype=torch.float64)
        self.cand = torch.zeros(bins, dtype=torch.float64)

    def add(self, reference: Tensor, candidate: Tensor) -> None:
        if self.low is None or self.high is None:
            lo, hi = torch.aminmax(reference.detach().float())
            self.low, self.high = float(lo), float(hi)
        if not self.high > self.low:
            self.high = self.low + 1.0
        for values, counts in ((reference, self.ref), (candidate, self.cand)):
            x = values.detach().float().clamp(self.low, self.high)
            counts += torch.histc(x, self.bins, self.low, self.high).to(torch.float64).cpu()

    def result(self) -> ValueHistogram:
        assert self.low is not None and self.high is not None
        edges = np.linspace(self.low, self.high, self.bins + 1)
        return ValueHistogram(
            edges=[round(float(e), 6) for e in edges],
            float_counts=[int(c) for c in self.ref.tolist()],
            quantized_counts=[int(c) for c in self.cand.tolist()],
        )


def sample_pairs(reference: Tensor, candidate: Tensor, count: int, seed: int = 0) -> Scatter:
    """`count` pairs at indices drawn with a fixed seed (the same positions on every run)."""
    ref, cand = reference.detach().reshape(-1), candidate.detach().reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    if ref.numel() <= count:
        index = torch.arange(ref.numel())
    else:
        index = torch.randint(0, ref.numel(), (count,), generator=generator)
    index = index.to(ref.device)
    return Scatter(
        float_values=[round(v, 6) for v in ref[index].float().tolist()],
        quantized_values=[round(v, 6) for v in cand[index].float().tolist()],
    )


def rankdata(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties given their average rank (as scipy.stats.rankdata)."""
    data = np.asarray(values, dtype=np.float64)
    order = np.argsort(data, kind="mergesort")
    ranks = np.empty(len(data), dtype=np.float64)
    sorted_data = data[order]
    start = 0
    while start < len(data):
        end = start
        while end + 1 < len(data) and sorted_data[end + 1] == sorted_data[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation over the pairs where both values are not NaN; None if < 3."""
    pairs = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    if len(pairs) < 3:
        return None
    ra = rankdata([p[0] for p in pairs])
    rb = rankdata([p[1] for p in pairs])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denominator if denominator > 0 else None
