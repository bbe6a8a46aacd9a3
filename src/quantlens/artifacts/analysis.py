"""The analysis artifact: per layer noise three ways, diagnostics, flags and suggested fixes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from quantlens import __version__
from quantlens.artifacts import Artifact
from quantlens.artifacts.quantize import ModeChange
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.modes import ModeName


class NoiseStats(BaseModel):
    """Float vs quantized over all samples, pooled (sums over every element of every sample)."""

    snr_db: float
    cosine: float
    mse: float
    max_abs_error: float
    mean_shift_share: float | None = Field(
        default=None,
        description="share of the squared error that is a per-channel mean shift (axis 1): "
        "what bias correction removes",
    )


class ValueHistogram(BaseModel):
    edges: list[float]
    float_counts: list[int]
    quantized_counts: list[int]


class Scatter(BaseModel):
    """A deterministic subsample of (float, quantized) value pairs, for a scatter plot."""

    float_values: list[float]
    quantized_values: list[float]


class Diagnostics(BaseModel):
    clip_min: float | None = None
    clip_max: float | None = None
    range_width: float | None = Field(default=None, description="clip_max - clip_min of the output")
    output_outlier_ratio: float | None = Field(
        default=None, description="max |value| over the larger of |p0.1|, |p99.9| (calibration set)"
    )
    input_outlier_ratio: float | None = None
    weight_channel_spread: float | None = Field(
        default=None, description="max / median of the per-output-channel max |w|"
    )
    weight_per_channel: bool | None = None
    folded_bn: str | None = Field(default=None, description="the BatchNorm folded into this conv")
    conv_without_bn: bool = False


class Suggestion(BaseModel):
    action: str = Field(
        description="16-bit | per-channel | clipping | equalization | bias-correction"
    )
    mode: str | None = Field(default=None, description="the precision mode to try, if any")
    reason: str


class IsolatedNoise(BaseModel):
    snr_db: float | None = None
    weight_snr_db: float | None = None
    activation_snr_db: float | None = None
    metric: float | None = None


class GradientNoise(BaseModel):
    snr_db: float
    weight_snr_db: float | None = None
    activation_snr_db: float | None = None


class LayerAnalysis(BaseModel):
    id: str
    op_type: str
    measured_at: str = Field(description="tensor compared with float (after fused activations)")
    fused: list[str] = Field(default_factory=list)
    nodes: list[str] = Field(
        default_factory=list, description="the layer's node and its fused activation nodes"
    )
    weight_quantizers: list[str] = Field(default_factory=list)
    activation_quantizers: list[str] = Field(default_factory=list)
    accumulated: NoiseStats | None = None
    isolated: IsolatedNoise | None = None
    gradient: GradientNoise | None = None
    diagnostics: Diagnostics
    flags: list[str] = Field(default_factory=list)
    suggestion: Suggestion | None = None
    scatter: Scatter | None = None
    histogram: ValueHistogram | None = None


class AnalysisReport(Artifact):
    kind = "analysis"
    model: str
    target: str
    method: str
    modes: list[str]
    samples: int
    batch_size: int
    ranked_by: str = Field(description="the SNR the ranking sorts on, lowest first")
    ranking: list[str] = Field(description="layer ids, worst first")
    layers: list[LayerAnalysis]
    outputs: dict[str, NoiseStats] = Field(
        default_factory=dict, description="model outputs with every layer quantized"
    )
    spearman_gradient_isolated: float | None = None
    thresholds: dict[str, float] = Field(default_factory=dict)
    seconds: dict[str, float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    mode_changes: list[ModeChange] = Field(
        default_factory=list, description="modes of --assignment the target's rules changed"
    )
    quantlens_version: str = __version__

    def layer(self, layer_id: str) -> LayerAnalysis:
        return next(item for item in self.layers if item.id == layer_id)

    def worst(self, count: int) -> list[LayerAnalysis]:
        return [self.layer(name) for name in self.ranking[:count]]

    def promote(self, assignment: Assignment, count: int, mode: ModeName = "a16_w16") -> Assignment:
        """`assignment` with the `count` worst layers, fused activations included, in `mode`."""
        nodes = [node for la in self.worst(count) for node in la.nodes]
        return assignment.with_layers(dict.fromkeys(nodes, mode))
