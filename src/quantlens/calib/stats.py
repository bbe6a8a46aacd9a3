"""The calibration artifact: per tensor, what was observed and which clip range was chosen."""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

from quantlens.artifacts import Artifact
from quantlens.calib.histogram import Histogram
from quantlens.schemes.formats import IntFormat

SUMMARY_BINS = 64
# Named like the report shows them; the values are fractions of the mass.
SUMMARY_PERCENTILES = {"p0.1": 0.001, "p1": 0.01, "p50": 0.5, "p99": 0.99, "p99.9": 0.999}


class HistogramSummary(BaseModel):
    """A small picture of the value distribution for the report, cut from the full histogram."""

    bins: int = Field(description="bins of the histogram the clip range was chosen on")
    counts: list[float]
    edges: list[float]
    percentiles: dict[str, float]
    beyond_clip: float = Field(description="fraction of the values outside [clip_min, clip_max]")


class TensorStats(BaseModel):
    name: str
    format: IntFormat
    numel: int = Field(description="values observed over the whole calibration set")
    min: float
    max: float
    clip_min: float
    clip_max: float
    histogram: HistogramSummary | None = None


class CalibrationStats(Artifact):
    """The result of one calibration run over one calibration set."""

    kind = "calibration"
    method: str
    settings: dict[str, float | int | str] = Field(default_factory=dict)
    samples: int
    device: str = "cpu"
    tensors: dict[str, TensorStats] = Field(default_factory=dict)


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
