"""The entropy observer: TensorRT's KL-divergence threshold, on a histogram of |x|.

For each candidate threshold (bin i = 128 .. bins of the |x| histogram) the reference
distribution P is the histogram cut at i with the cut-off mass added to its last bin, and Q is
the same bins merged into the grid's levels and spread back evenly over the non-empty bins of
each level; the threshold with the least KL(P || Q) wins (the last one on ties, as TensorRT
picks). Zero-centred grids fold the data around zero and use 2**(bits - 1) levels; affine or
unsigned grids over one-signed data use the one-sided version with all 2**bits levels (with
candidates still from bin 128, as TensorRT's unsigned mode). A grid with at least as many levels
as the histogram has bins (16-bit) cannot be scored: the full range is kept.

TensorRT loops over candidates and bins in Python; here every sum over a level is a difference
of prefix sums, so all candidates are scored at once on the device in O(candidates x levels).
"""

from __future__ import annotations

import torch

from quantlens.calib.histogram import Histogram
from quantlens.calib.observers import (
    HistogramRange,
    ObserverSettings,
    register_observer,
    zero_anchored_range,
)
from quantlens.schemes.formats import IntFormat

Tensor = torch.Tensor
START_BIN = 128


def grid_levels(low: float, high: float, fmt: IntFormat) -> int:
    one_sided = not fmt.symmetric and (low >= 0.0 or high <= 0.0)
    return 1 << (fmt.bits if one_sided else fmt.bits - 1)


def kl_divergences(counts: Tensor, levels: int, start: int = START_BIN) -> tuple[Tensor, Tensor]:
    """(candidate end bins i, KL(P || Q) of each) for a histogram of |x|."""
    bins = counts.to(torch.float64).clone()
    # Like TensorRT: the zero bin (ReLU zeros) would otherwise dominate P.
    bins[0] = bins[1] if bins.numel() > 1 else bins[0]
    n = bins.numel()
    # A grid with at least as many levels as bins can show no rounding in the histogram.
    ends = torch.arange(start, n + 1 if levels < n else start, device=bins.device)
    if ends.numel() == 0:
        return ends, bins.new_zeros(0)

    # Prefix sums of b and [b > 0], gathered at every level boundary; the sum of b*log(b) over
    # a candidate's levels telescopes to one prefix value, so it needs no gather.
    zero = bins.new_zeros(1)
    sum_b = torch.cat([zero, bins.cumsum(0)])
    nonzero = torch.cat([zero, (bins > 0).to(torch.float64).cumsum(0)])
    blogb = torch.cat([zero, torch.xlogy(bins, bins).cumsum(0)])
    k = torch.arange(levels + 1, device=bins.device)
    # Level k of candidate i holds bins [ceil(k*i/L), ceil((k+1)*i/L)), as np.digitize does.
    bounds = (k[None, :] * ends[:, None] + levels - 1) // levels
    level_sum, level_nonzero = sum_b[bounds].diff(dim=1), nonzero[bounds].diff(dim=1)
    q_value = level_sum / level_nonzero.clamp(min=1.0)
    # sum over bins of b*log(b/q), with q constant over each level's non-empty bins
    p_log_p_over_q = blogb[ends] - torch.xlogy(level_sum, q_value).sum(1)
    last, q_last = bins[ends - 1], q_value[:, -1]
    tail = sum_b[-1] - sum_b[ends]
    moved = torch.xlogy(last + tail, last + tail) - torch.xlogy(last, last)
    moved = moved - torch.where(tail > 0, tail * q_last.clamp(min=1e-300).log(), 0.0)
    total, kept = sum_b[-1], sum_b[ends]
    kl = (p_log_p_over_q + moved) / total + (kept / total).clamp(min=1e-300).log()
    # The cut-off mass lands in an empty bin where Q is zero: KL is infinite.
    kl = torch.where((last == 0) & (tail > 0), torch.inf, kl)
    return ends, kl


def entropy_threshold(hist: Histogram, levels: int) -> float:
    """The |x| threshold with the least KL divergence; the full range if none can be scored."""
    folded = hist.folded()
    ends, kl = kl_divergences(folded.counts, levels)
    if ends.numel() == 0 or not bool(torch.isfinite(kl).any()):
        return folded.high
    best = kl.numel() - 1 - int(torch.argmin(kl.flip(0)))
    return float(ends[best]) * folded.width


@register_observer("entropy")
class EntropyObserver:
    """TensorRT-style KL-divergence calibration (2048 bins per side by default)."""

    needs_histogram = True

    def __init__(self, settings: ObserverSettings) -> None:
        self.bins = settings.bins

    def histogram_range(self, low: float, high: float, fmt: IntFormat) -> HistogramRange:
        return zero_anchored_range(low, high, self.bins)

    def clip_range(
        self, low: float, high: float, hist: Histogram | None, fmt: IntFormat
    ) -> tuple[float, float]:
        assert hist is not None
        threshold = entropy_threshold(hist, grid_levels(low, high, fmt))
        return max(low, -threshold), min(high, threshold)
