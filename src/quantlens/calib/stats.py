"""Summaries for the calibration artifact (the schema lives in `quantlens.artifacts`)."""

from __future__ import annotations

import torch

from quantlens.artifacts.calibration import CalibrationStats, HistogramSummary, TensorStats
from quantlens.calib.histogram import Histogram

__all__ = ["CalibrationStats", "HistogramSummary", "TensorStats", "summarize"]

SUMMARY_BINS = 64
# Named like the report shows them; the values are fractions of the mass.
SUMMARY_PERCENTILES = {"p0.1": 0.001, "p1": 0.01, "p50": 0.5, "p99": 0.99, "p99.9": 0.999}


def summarize(hist: Histogram, clip_min: float, clip_max: float) -> HistogramSummary:
    """Downsampled counts, a few percentiles and the clipped fraction, read back in one go."""
    small = hist.downsample(min(SUMMARY_BINS, hist.bins))
    fractions = torch.tensor(list(SUMMARY_PERCENTILES.values()), dtype=torch.float64)
    percentiles = hist.quantiles(fractions)
    clip = torch.tensor([clip_min, clip_max], dtype=torch.float64, device=hist.counts.device)
    below = hist.mass_below(clip)
    beyond = below[0] + (1.0 - below[1])
    counts, values, beyond_clip = (
        small.counts.cpu().tolist(),
        percentiles.cpu().tolist(),
        float(beyond.clamp(0.0, 1.0)),
    )
    return HistogramSummary(
        bins=hist.bins,
        counts=counts,
        edges=small.edges().cpu().tolist(),
        percentiles=dict(zip(SUMMARY_PERCENTILES, values)),
        beyond_clip=beyond_clip,
    )
