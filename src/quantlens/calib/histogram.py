"""Fixed-range histograms that accumulate on the device, and the queries observers make of them.

The range is fixed before the first value arrives (calibration pass 1 finds it), so histograms
of many batches add bin by bin and the result does not depend on how the data was batched.
Counts are kept in float64: float32 counts stop being exact at 2**24 values per bin.
"""

from __future__ import annotations

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
        flat = values.detach().reshape(-1)
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
