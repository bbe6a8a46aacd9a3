"""Per-layer diagnostics, low-SNR flags and the suggested fix for each flagged layer."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from quantlens.analysis.ownership import LayerTensors
from quantlens.analysis.report import Diagnostics, LayerAnalysis, Suggestion
from quantlens.calib.stats import CalibrationStats, TensorStats
from quantlens.schemes.profiles import TargetProfile
from quantlens.schemes.qparams import QuantPlan

LOW_SNR_DB = 10.0
# A range whose max is this many times its p99.9 spends most of the grid on a few outliers.
OUTLIER_RATIO = 4.0
# Channels whose max |w| differ this much share one per-tensor scale badly.
CHANNEL_SPREAD = 8.0
# Weight vs activation noise: a 3 dB gap (twice the power) says which one to fix.
DOMINANCE_DB = 3.0
# A layer whose accumulated error is at least this much a per-channel mean shift: bias
# correction (free on the chip) removes that part, so it comes before buying 16 bits.
MEAN_SHIFT_SHARE = 0.5
# The layers bias correction corrects (quantlens.fixes.bias_correction).
BIAS_CORRECTABLE = ("Conv", "ConvTranspose", "Gemm")


def outlier_ratio(stats: TensorStats | None) -> float | None:
    if stats is None or stats.histogram is None:
        return None
    p = stats.histogram.percentiles
    bulk = max(abs(p.get("p0.1", 0.0)), abs(p.get("p99.9", 0.0)))
    peak = max(abs(stats.min), abs(stats.max))
    return peak / bulk if bulk > 0 else None


def channel_spread(weight: torch.Tensor, axis: int | None) -> float | None:
    if axis is None or weight.dim() == 0 or weight.shape[axis] < 2:
        return None
    per_channel = weight.detach().abs().movedim(axis, 0).reshape(weight.shape[axis], -1).amax(1)
    median = float(per_channel.median())
    return float(per_channel.max()) / median if median > 0 else None


def diagnose(
    lt: LayerTensors,
    calibration: CalibrationStats,
    weights: Mapping[str, torch.Tensor],
    plan: QuantPlan,
) -> Diagnostics:
    layer = lt.layer
    out_stats = calibration.tensors.get(lt.measured) or calibration.tensors.get(layer.output)
    weight_quant = plan.weights.get(layer.weight)
    return Diagnostics(
        clip_min=out_stats.clip_min if out_stats else None,
        clip_max=out_stats.clip_max if out_stats else None,
        range_width=out_stats.clip_max - out_stats.clip_min if out_stats else None,
        output_outlier_ratio=outlier_ratio(out_stats),
        input_outlier_ratio=outlier_ratio(calibration.tensors.get(layer.input)),
        weight_channel_spread=(
            channel_spread(weights[layer.weight], layer.weight_axis)
            if layer.weight in weights
            else None
        ),
        weight_per_channel=weight_quant.axis is not None if weight_quant else None,
        folded_bn=layer.folded_bn,
        conv_without_bn=layer.op_type == "Conv" and layer.folded_bn is None,
    )


def low_outliers(values: Sequence[float]) -> float:
    """Tukey's lower fence Q1 − 1.5·IQR over the finite values (−inf when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 4:
        return -math.inf
    q1, q3 = np.percentile(finite, [25, 75])
    return float(q1 - 1.5 * (q3 - q1))


def flag_low_snr(layers: Sequence[LayerAnalysis]) -> dict[str, float]:
    """Flag each layer whose accumulated or isolated SNR is ≤ 10 dB or below the lower fence of
    its column; returns the fences used."""
    columns = {
        "accumulated": [la.accumulated.snr_db if la.accumulated else None for la in layers],
        "isolated": [la.isolated.snr_db if la.isolated else None for la in layers],
    }
    fences: dict[str, float] = {"low_snr_db": LOW_SNR_DB}
    for column, values in columns.items():
        known = [v for v in values if v is not None]
        if not known:
            continue
        fence = fences[f"{column}_fence_db"] = low_outliers(known)
        for la, value in zip(layers, values):
            if value is None:
                continue
            if value <= LOW_SNR_DB:
                la.flags.append(f"{column} SNR {value:.1f} dB ≤ {LOW_SNR_DB:.0f} dB")
            elif value < fence:
                la.flags.append(f"{column} SNR {value:.1f} dB below Q1 − 1.5·IQR ({fence:.1f} dB)")
    return {k: v for k, v in fences.items() if math.isfinite(v)}


def _split(la: LayerAnalysis) -> tuple[float, float] | None:
    """(weight SNR, activation SNR), from isolated runs or else the gradient estimate."""
    for source in (la.isolated, la.gradient):
        if source is None or source.weight_snr_db is None or source.activation_snr_db is None:
            continue
        return source.weight_snr_db, source.activation_snr_db
    return None


def suggest(la: LayerAnalysis, profile: TargetProfile, method: str) -> Suggestion:
    shift = la.accumulated.mean_shift_share if la.accumulated is not None else None
    if shift is not None and shift >= MEAN_SHIFT_SHARE and la.op_type in BIAS_CORRECTABLE:
        return Suggestion(
            action="bias-correction",
            reason=f"{shift:.0%} of its output error is a per-channel mean shift, which bias "
            "correction moves into the bias at no cost (--bias-correction, or --optimize 1)",
        )
    d = la.diagnostics
    split = _split(la)
    weights_first = split is not None and split[0] < split[1] - DOMINANCE_DB
    acts_first = split is not None and split[1] < split[0] - DOMINANCE_DB
    noise = f"weight-only {split[0]:.1f} dB vs activation-only {split[1]:.1f} dB" if split else ""
    spread = d.weight_channel_spread or 0.0
    outliers = max(d.input_outlier_ratio or 0.0, d.output_outlier_ratio or 0.0)
    if (weights_first or split is None) and spread >= CHANNEL_SPREAD and not d.weight_per_channel:
        if profile.weight_per_channel:
            return Suggestion(
                action="per-channel",
                reason=f"channel max |w| spread {spread:.0f}x on one scale; {noise}".rstrip("; "),
            )
        return Suggestion(
            action="equalization",
            reason=f"channel max |w| spread {spread:.0f}x and {profile.name} weights are "
            f"per tensor: equalize channel ranges with the neighbour layer; {noise}".rstrip("; "),
        )
    if (acts_first or split is None) and outliers >= OUTLIER_RATIO and method == "minmax":
        return Suggestion(
            action="clipping",
            reason=f"activation max is {outliers:.0f}x its p99.9 and minmax keeps it; "
            f"calibrate with percentile or mse; {noise}".rstrip("; "),
        )
    what = "weights" if weights_first else "activations" if acts_first else "weights and inputs"
    return Suggestion(
        action="16-bit",
        mode="a16_w16",
        reason=f"noise from its {what} ({noise or 'no split measured'}); 16-bit removes it",
    )
