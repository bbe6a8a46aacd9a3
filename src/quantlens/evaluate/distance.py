"""Distances between a reference tensor and a candidate (float vs emulated, float vs quantized).

All are computed in float64 on the tensors' device. `relative_error` is normalised by the
reference's largest magnitude rather than element by element, so outputs with values near zero
(softmax tails, box offsets) do not blow it up.
"""

from __future__ import annotations

import math

import torch

from quantlens.artifacts.measures import Distance

Tensor = torch.Tensor


def distance(reference: Tensor, candidate: Tensor) -> Distance:
    ref = reference.detach().to(torch.float64).reshape(-1)
    cand = candidate.detach().to(ref.device, torch.float64).reshape(-1)
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    diff = cand - ref
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return Distance(
        max_abs_error=max_abs,
        relative_error=max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf),
        cosine=cosine(ref, cand),
        snr_db=snr_db(ref, cand),
    )


def cosine(reference: Tensor, candidate: Tensor) -> float:
    ref = reference.to(torch.float64).reshape(-1)
    cand = candidate.to(torch.float64).reshape(-1)
    norms = float(ref.norm() * cand.norm())
    if norms == 0.0:
        return 1.0 if bool(torch.equal(ref, cand)) else 0.0
    return float(ref.dot(cand)) / norms


def snr_db(reference: Tensor, candidate: Tensor) -> float:
    """Signal-to-noise ratio 10·log10(‖ref‖² / ‖cand − ref‖²) in dB (inf when identical)."""
    ref = reference.to(torch.float64).reshape(-1)
    noise = float((candidate.to(torch.float64).reshape(-1) - ref).pow(2).sum())
    signal = float(ref.pow(2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
