"""The MSE observer: the clip range whose grid gives the least expected squared error.

The error of a candidate range is computed from the histogram, taking values as spread evenly
within each bin: clipped values cost their squared distance to the nearest end of the grid, and
values inside cost the exact mean rounding error of their bin on that grid (so a bin of zeros
that sits on a grid point costs almost nothing, unlike the usual step**2 / 12 shortcut). The
grid is built as `int_qparams` builds it: the range stretched to contain zero, the zero point
rounded. Candidates are searched coarse to fine over fractions of the observed extent.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quantlens.calib.histogram import Histogram
from quantlens.calib.observers import ValueRangeObserver, register_observer
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import MIN_RANGE

Tensor = torch.Tensor
# (points per axis, rounds): each round narrows the search to two grid spacings around the best
# point, so 1-D searches resolve about 1/10**4 of the range and 2-D ones (affine grids over
# signed data) about 1/2600 with 144 candidates a round.
_SEARCH = {1: (64, 3), 2: (12, 4)}
_CHUNK = 256


def grid_bounds(lows: Tensor, highs: Tensor, fmt: IntFormat) -> tuple[Tensor, Tensor, Tensor]:
    """Lowest and highest representable value and step of the grid `int_qparams` would build."""
    lows, highs = lows.clamp(max=0.0), highs.clamp(min=0.0)
    qmin, qmax = fmt.qmin, fmt.qmax
    if fmt.symmetric:
        amax = torch.maximum(-lows, highs).clamp(min=MIN_RANGE)
        step = amax / (qmax if fmt.signed else (qmax - qmin) / 2.0)
        zero = torch.full_like(step, 0.0 if fmt.signed else float((qmax + qmin + 1) // 2))
    else:
        step = (highs - lows).clamp(min=MIN_RANGE) / (qmax - qmin)
        zero = (qmin - lows / step).round().clamp(qmin, qmax)
    return (qmin - zero) * step, (qmax - zero) * step, step


def _rounding_integral(v: Tensor) -> Tensor:
    """Integral over [0, v] of (w - round(w))**2 dw, for a grid with unit step."""
    whole = v.floor()
    f = v - whole
    part = torch.where(f <= 0.5, f**3 / 3.0, 1.0 / 12.0 - (1.0 - f) ** 3 / 3.0)
    return whole / 12.0 + part


def expected_sq_error(hist: Histogram, lows: Tensor, highs: Tensor, fmt: IntFormat) -> Tensor:
    """Sum of squared quantization errors of the histogram's values, one per candidate range."""
    edges = hist.edges()
    a, b = edges[:-1][None, :], edges[1:][None, :]
    density = (hist.counts / hist.width)[None, :]
    out = []
    for start in range(0, lows.numel(), _CHUNK):
        bounds = grid_bounds(lows[start:][:_CHUNK], highs[start:][:_CHUNK], fmt)
        lower, upper, step = (t[:, None] for t in bounds)
        out.append((_bin_errors(a, b, lower, upper, step) * density).sum(1))
    return torch.cat(out)


def _bin_errors(a: Tensor, b: Tensor, lower: Tensor, upper: Tensor, step: Tensor) -> Tensor:
    """Integral of the squared error over each bin [a, b] (candidates x bins)."""
    lo_a, lo_b = torch.minimum(a, lower), torch.minimum(b, lower)
    below = ((lower - lo_a) ** 3 - (lower - lo_b) ** 3) / 3.0
    hi_a, hi_b = torch.maximum(a, upper), torch.maximum(b, upper)
    above = ((hi_b - upper) ** 3 - (hi_a - upper) ** 3) / 3.0
    u1 = (torch.maximum(a, lower) - lower).clamp(max=upper - lower) / step
    u2 = (torch.maximum(b, lower) - lower).clamp(max=upper - lower) / step
    inside = step**3 * (_rounding_integral(u2) - _rounding_integral(u1))
    return below + above + inside


def coarse_to_fine(error_of: Callable[[Tensor], Tensor], dims: int, device: torch.device) -> Tensor:
    """The fractions in (0, 1]**dims with the least error, by repeated grid refinement."""
    points, rounds = _SEARCH[dims]
    centre = torch.ones(dims, dtype=torch.float64)
    half = 1.0
    for _ in range(rounds):
        axes = [
            torch.linspace(max(float(c) - half, half / points), min(float(c) + half, 1.0), points)
            for c in centre
        ]
        grid = torch.cartesian_prod(*axes).reshape(-1, dims).to(torch.float64).to(device)
        centre = grid[int(torch.argmin(error_of(grid)))].cpu()
        half = 2.0 * half / points
    return centre


def mse_clip_range(hist: Histogram, low: float, high: float, fmt: IntFormat) -> tuple[float, float]:
    neg, pos = max(-low, 0.0), max(high, 0.0)
    device = hist.counts.device
    if fmt.symmetric or neg == 0.0 or pos == 0.0:
        extent = torch.tensor(
            [-max(neg, pos), max(neg, pos)] if fmt.symmetric else [-neg, pos],
            dtype=torch.float64,
            device=device,
        )

        def error_1d(f: Tensor) -> Tensor:
            return expected_sq_error(hist, f[:, 0] * extent[0], f[:, 0] * extent[1], fmt)

        (f,) = coarse_to_fine(error_1d, 1, device).tolist()
        lo, hi = (f * extent).tolist()
        return max(low, lo), min(high, hi)

    def error_2d(f: Tensor) -> Tensor:
        return expected_sq_error(hist, -f[:, 0] * neg, f[:, 1] * pos, fmt)

    f_neg, f_pos = coarse_to_fine(error_2d, 2, device).tolist()
    return max(low, -f_neg * neg), min(high, f_pos * pos)


@register_observer("mse")
class MseObserver(ValueRangeObserver):
    """The clip range that minimises the expected quantization MSE on the target grid."""

    needs_histogram = True

    def clip_range(
        self, low: float, high: float, hist: Histogram | None, fmt: IntFormat
    ) -> tuple[float, float]:
        assert hist is not None
        return mse_clip_range(hist, low, high, fmt)
