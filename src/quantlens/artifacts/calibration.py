"""The calibration artifact: per tensor, what was observed and which clip range was chosen."""

from __future__ import annotations

from pydantic import BaseModel, Field

from quantlens.artifacts import Artifact
from quantlens.schemes.formats import IntFormat


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
