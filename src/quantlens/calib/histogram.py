"""Histograms that accumulate on the device, and the queries observers make of them.

`Histogram` has a fixed range, known before the first value arrives (two-pass calibration finds
it first); counts are kept in float64, as float32 counts stop being exact at 2**24 per bin.
`GrowingHistogram` needs no range in advance (one-pass calibration): its bins are 2**e wide and
aligned to multiples of 2**e, so binning is exact (x * 2**-e is exact in floating point) and
coarsening merges aligned pairs of bins without moving any value. Its final grid is a function
of the final min/max alone, so neither histogram depends on how the data was batched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

# torch.histc returns counts in the input's dtype; keeping each call under 2**24 values keeps
# float32 counts exact before they are added to the float64 accumulator.
_HISTC_CHUNK = 1 << 24


def widen(low: float, high: float) -> tuple[float, float]:
    """A non-empty range: a constant tensor still needs bins of positive width."""
    if high > low:
        return low, high
    return low, low + max(abs(low), 1.0) * 1e-6


@dataclass
class Histogram:
    """Counts of values in `bins` equal bins over [low, high] (the top edge is inclusive)."""

    counts: Tensor
    low: float
    high: float

    @classmethod
    def empty(cls, low: float, high: float, bins: int, device: torch.device) -> Histogram:
        low, high = widen(low, high)
        return cls(torch.zeros(bins, dtype=torch.float64, device=device), low, high)

    @property
    def bins(self) -> int:
        return int(self.counts.numel())

    @property
    def width(self) -> float:
        return (self.high - self.low) / self.bins

    def edges(self) -> Tensor:
        return torch.linspace(
            self.low, self.high, self.bins + 1, dtype=torch.float64, device=self.counts.device
        )

    def add(self, values: Tensor) -> None:
        flat = flat_view(values.detach())
        if not flat.is_floating_point() or flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()
        if flat.device.type != "cpu":
            # GPU kernels need not be bitwise repeatable between the two passes; histc would
            # silently drop a value that lands a hair outside the pass-1 range.
            flat = flat.clamp(self.low, self.high)
        for start in range(0, flat.numel(), _HISTC_CHUNK):
            chunk = flat[start : start + _HISTC_CHUNK]
            self.counts += torch.histc(chunk, self.bins, self.low, self.high).to(torch.float64)

    def total(self) -> float:
        return float(self.counts.sum())

    def mass_below(self, values: Tensor) -> Tensor:
        """Fraction of the mass below each value, assuming values spread evenly within a bin."""
        cumulative = torch.cat([self.counts.new_zeros(1), self.counts.cumsum(0)])
        position = ((values.to(torch.float64) - self.low) / self.width).clamp(0, self.bins)
        index = position.floor().clamp(max=self.bins - 1).long()
        inside = (position - index) * self.counts[index]
        return (cumulative[index] + inside) / cumulative[-1].clamp(min=1.0)

    def quantiles(self, fractions: Tensor) -> Tensor:
        """The values below which `fractions` of the mass lie (linear within a bin)."""
        cumulative = self.counts.cumsum(0)
        total = cumulative[-1].clamp(min=1.0)
        target = fractions.to(torch.float64).to(self.counts.device) * total
        index = torch.searchsorted(cumulative, target).clamp(max=self.bins - 1)
        before = torch.where(index > 0, cumulative[(index - 1).clamp(min=0)], 0.0)
        inside = ((target - before) / self.counts[index].clamp(min=1e-300)).clamp(0, 1)
        return self.low + (index.to(torch.float64) + inside) * self.width

    def downsample(self, bins: int) -> Histogram:
        """The same mass in fewer bins over the same range (exact when `bins` divides ours)."""
        if self.bins % bins == 0:
            return Histogram(self.counts.reshape(bins, -1).sum(1), self.low, self.high)
        edges = torch.linspace(
            self.low, self.high, bins + 1, dtype=torch.float64, device=self.counts.device
        )
        below = self.mass_below(edges) * self.counts.sum()
        return Histogram(below.diff(), self.low, self.high)

    def folded(self) -> Histogram:
        """The histogram of |x| over [0, max|x|]; the range must be [0, a], [-a, 0] or [-a, a]."""
        if self.low >= 0.0:
            return self
        if self.high <= 0.0:
            return Histogram(self.counts.flip(0), 0.0, -self.low)
        half = self.bins // 2
        if self.bins % 2 or abs(self.low + self.high) > 1e-12 * self.high:
            raise ValueError("only a histogram centred on zero can be folded")
        return Histogram(self.counts[half:] + self.counts[:half].flip(0), 0.0, self.high)


def flat_view(tensor: Tensor) -> Tensor:
    """The values as one dimension in memory order: a view, not a copy, for dense layouts.

    Activations are often channels-last, where `reshape(-1)` copies; and reductions over a 1-D
    view run several times faster than over the 4-D tensor (aminmax: 1 ms instead of 6).
    """
    if tensor.is_contiguous():
        return tensor.view(-1)
    strides = tensor.stride()
    order = sorted(range(tensor.dim()), key=lambda d: -strides[d])
    permuted = tensor.permute(order)
    return permuted.view(-1) if permuted.is_contiguous() else permuted.reshape(-1)


# Bins at least this fraction of the largest |x| wide: values stay within 2**31 bins of zero.
_MAGNITUDE_BITS = 30
_MIN_EXPONENT, _MAX_EXPONENT = -100, 126  # 2**-e stays a normal float32
# floor(x * 2**-e) - first + 2**23 is an integer in [2**23, 2**24): exact in float32, and its bit
# pattern minus that of 2**23 is the bin index (cheaper than a float -> int conversion).
_MAGIC = float(1 << 23)
_MAGIC_BITS = 0x4B000000


class GrowingHistogram:
    """At most `capacity` bins of width 2**exponent over the running [low, high] of the values.

    When new values fall outside, the exponent becomes the least one whose grid covers the new
    range, and old bins merge into the coarser ones exactly. Counts are int64 on the device.
    """

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.counts = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.exponent = _MIN_EXPONENT
        self.first = 0  # the grid index (multiple of 2**exponent) of bin 0
        self.low, self.high = math.inf, -math.inf

    def add(self, values: Tensor, low: float, high: float) -> None:
        """Count `values` (finite, 1-D float32 with min `low` and max `high`)."""
        self._cover(min(low, self.low), max(high, self.high))
        scaled = (values * math.ldexp(1.0, -self.exponent)).floor_()
        offset = self.first - _MAGIC
        if abs(offset) <= 1 << 24:  # exactly representable in float32
            index = scaled.sub_(offset).view(torch.int32).sub_(_MAGIC_BITS)
        else:
            index = scaled.sub_(self.first).to(torch.int32)
        self.counts += torch.bincount(index, minlength=self.capacity)

    def _cover(self, low: float, high: float) -> None:
        if low >= self.low and high <= self.high:
            return
        exponent = max(self.exponent, _grid_exponent(low, high, self.capacity))
        first = math.floor(math.ldexp(low, -exponent))
        shift = exponent - self.exponent
        if self.high >= self.low and (shift or first != self.first):
            grid = self.first + torch.arange(self.capacity, device=self.counts.device)
            # Empty bins past the old data may fall off the new grid; clamping them adds 0.
            index = ((grid >> shift) - first).clamp_(0, self.capacity - 1)
            self.counts = torch.zeros_like(self.counts).index_add_(0, index, self.counts)
        self.exponent, self.first, self.low, self.high = exponent, first, low, high

    def merge(self, other: GrowingHistogram) -> None:
        """Add `other`'s counts (the values of another shard of the data). Exact: both grids
        coarsen to the one of the joint range, which is the grid one stream over all the
        values ends on, and aligned bins merge without moving a value."""
        if other.high < other.low:
            return
        self._cover(min(self.low, other.low), max(self.high, other.high))
        shift = self.exponent - other.exponent
        grid = other.first + torch.arange(other.capacity, device=other.counts.device)
        index = ((grid >> shift) - self.first).clamp_(0, self.capacity - 1)
        self.counts.index_add_(0, index.to(self.counts.device), other.counts.to(self.counts.device))

    def histogram(self, low: float, high: float, bins: int) -> Histogram:
        """The counts spread over `bins` equal bins of [low, high], a range holding all values.

        Values are taken as spread evenly over each bin's part of the observed [min, max]; the
        top edge is inclusive, as in `Histogram`. Exact zeros (ReLU) sit at the bottom of the bin
        [0, 2**e): when the final grid has an edge at zero and bins at least as wide, as the
        callers' zero-anchored ranges do, they all stay in the final bin above zero.
        """
        low, high = widen(low, high)
        device = self.counts.device
        width = math.ldexp(1.0, self.exponent)
        grid = torch.arange(self.first, self.first + self.capacity + 1, device=device) * width
        observed = (self.low, self.high) if self.high >= self.low else (low, low)
        edges = grid.to(torch.float64).clamp(*observed)
        counts = self.counts.to(torch.float64)
        cumulative = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        targets = torch.linspace(low, high, bins + 1, dtype=torch.float64, device=device)
        # j: the last internal edge strictly below each target edge (-1 when none is).
        j = torch.searchsorted(edges, targets, side="left") - 1
        inner = j.clamp(0, self.capacity - 1)
        span = (edges[inner + 1] - edges[inner]).clamp(min=1e-300)
        fraction = ((targets - edges[inner]) / span).clamp(0.0, 1.0)
        below = cumulative[inner] + fraction * counts[inner]
        below = torch.where(j < 0, 0.0, torch.where(j >= self.capacity, cumulative[-1], below))
        below[-1] = cumulative[-1]
        return Histogram(below.diff(), low, high)


def _grid_exponent(low: float, high: float, capacity: int) -> int:
    """The least exponent e whose grid of 2**e-wide bins covers [low, high] in `capacity` bins.

    A function of the range alone, non-decreasing as the range grows, which makes the final
    grid independent of the order and batching of the data.
    """
    magnitude = max(abs(low), abs(high))
    exponent = _MIN_EXPONENT
    if magnitude > 0.0:
        exponent = max(exponent, math.frexp(magnitude)[1] - 1 - _MAGNITUDE_BITS)
    if high > low:
        exponent = max(exponent, math.frexp((high - low) / (capacity - 1))[1] - 1)
    while _bins_spanned(low, high, exponent) > capacity:
        exponent += 1
    return min(exponent, _MAX_EXPONENT)


def _bins_spanned(low: float, high: float, exponent: int) -> int:
    return math.floor(math.ldexp(high, -exponent)) - math.floor(math.ldexp(low, -exponent)) + 1
