"""Calibration-set diagnostics: problems with the data that make quantization ranges wrong.

Each check returns warnings that say what was found, why it matters for calibration, and what to
do. Image checks work on a small grey thumbnail of every file; the optional activation check runs
the float model on both sets and compares per-tensor statistics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel

from quantlens.artifacts.doctor import DoctorReport, Warning_
from quantlens.data.preprocess import IMAGE_SUFFIXES, list_input_files, open_rgb
from quantlens.emulate import Executor

MIN_SAMPLES = 64
THUMB = 32


class ImageFacts(BaseModel):
    """What the checks need from one file, computed once."""

    path: str
    digest: str
    thumb: list[float]
    std: float
    colours: int
    neighbour_corr: float
    mean: float


def image_facts(path: Path) -> ImageFacts:
    rgb = open_rgb(path)
    grey = np.asarray(rgb.convert("L"), dtype=np.float64)
    small = np.asarray(rgb.convert("L").resize((THUMB, THUMB), Image.Resampling.BILINEAR), float)
    colours = len(np.unique(np.asarray(rgb.resize((64, 64))).reshape(-1, 3), axis=0))
    return ImageFacts(
        path=str(path),
        digest=hashlib.sha256(path.read_bytes()).hexdigest(),
        thumb=small.reshape(-1).tolist(),
        std=float(grey.std()),
        colours=colours,
        neighbour_corr=_neighbour_correlation(grey),
        mean=float(grey.mean()),
    )


def _neighbour_correlation(grey: np.ndarray) -> float:
    """Correlation of horizontally adjacent pixels: ~1 for photos and pages, ~0 for noise."""
    a, b = grey[:, :-1].reshape(-1), grey[:, 1:].reshape(-1)
    if a.std() == 0 or b.std() == 0:
        return 1.0
    return float(np.corrcoef(a, b)[0, 1])


def check_count(count: int) -> list[Warning_]:
    if count >= MIN_SAMPLES:
        return []
    return [
        Warning_(
            code="too-few-samples",
            message=f"only {count} calibration samples",
            why="ranges from a few samples miss rare large activations, and percentile or entropy "
            "estimates of the tails are noisy",
            fix=f"use at least {MIN_SAMPLES} representative samples (Hailo recommends 1024 for its "
            "optimization levels)",
        )
    ]


def check_duplicates(facts: Sequence[ImageFacts], near: float = 2.0) -> list[Warning_]:
    """Exact duplicates by content hash; near duplicates by mean thumbnail difference."""
    warnings: list[Warning_] = []
    first: dict[str, str] = {}
    exact = []
    for f in facts:
        if f.digest in first:
            exact.append((first[f.digest], f.path))
        else:
            first[f.digest] = f.path
    if exact:
        warnings.append(_duplicate_warning("exact-duplicates", exact, "identical files"))
    thumbs = np.array([f.thumb for f in facts]) if facts else np.zeros((0, THUMB * THUMB))
    pairs = [
        (facts[i].path, facts[j].path)
        for i, j in _close_pairs(thumbs, near)
        if facts[i].digest != facts[j].digest
    ]
    if pairs:
        warnings.append(_duplicate_warning("near-duplicates", pairs, "nearly identical images"))
    return warnings


def _close_pairs(thumbs: np.ndarray, near: float) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    for i in range(len(thumbs)):
        diffs = np.abs(thumbs[i + 1 :] - thumbs[i]).mean(axis=1)
        pairs.extend((i, i + 1 + int(j)) for j in np.nonzero(diffs < near)[0])
    return pairs


def _duplicate_warning(code: str, pairs: list[tuple[str, str]], what: str) -> Warning_:
    shown = [f"{Path(a).name} = {Path(b).name}" for a, b in pairs[:10]]
    return Warning_(
        code=code,
        message=f"{len(pairs)} pairs of {what}",
        why="duplicates add no new activation statistics and give their content double weight "
        "in histogram-based ranges",
        fix="remove the duplicates and add different, representative samples",
        files=shown,
    )


def check_degenerate(facts: Sequence[ImageFacts]) -> list[Warning_]:
    flat = [f.path for f in facts if f.std < 1.0 or f.colours <= 1]
    noise = [f.path for f in facts if f.std >= 1.0 and f.neighbour_corr < 0.2]
    warnings = []
    if flat:
        warnings.append(
            Warning_(
                code="constant-images",
                message=f"{len(flat)} constant or single-colour images",
                why="they drive every activation to one value and pull ranges towards it",
                fix="remove them; calibrate on real inputs",
                files=[Path(p).name for p in flat[:10]],
            )
        )
    if noise:
        warnings.append(
            Warning_(
                code="noise-images",
                message=f"{len(noise)} images look like random noise "
                "(adjacent pixels uncorrelated)",
                why="noise produces activation ranges unlike real inputs, usually much wider, "
                "which coarsens the int8 grid for real data",
                fix="replace them with real samples of the deployment domain",
                files=[Path(p).name for p in noise[:10]],
            )
        )
    return warnings


def check_domain(calib: Sequence[ImageFacts], data: Sequence[ImageFacts]) -> list[Warning_]:
    """Input-level shift: brightness and contrast of the two sets, in pooled standard deviations."""
    if not calib or not data:
        return []
    shifts = []
    for name in ("mean", "std"):
        a = np.array([getattr(f, name) for f in calib])
        b = np.array([getattr(f, name) for f in data])
        pooled = float(np.sqrt((a.var() + b.var()) / 2)) or 1.0
        shifts.append((name, abs(float(a.mean() - b.mean())) / pooled))
    far = [(n, s) for n, s in shifts if s > 2.0]
    if not far:
        return []
    detail = ", ".join(f"{'brightness' if n == 'mean' else 'contrast'} {s:.1f} sd" for n, s in far)
    return [
        Warning_(
            code="domain-shift",
            message=f"calibration images differ from the evaluation images: {detail}",
            why="ranges calibrated on another domain clip or waste the grid on the real data",
            fix="calibrate on samples drawn from the same source as the evaluation/deployment data",
        )
    ]


def activation_extremes(
    executor: Executor, feeds: Sequence[dict[str, np.ndarray]]
) -> dict[str, float]:
    """Largest |value| of every float activation over a set (one float pass per sample)."""
    extremes: dict[str, float] = {}

    class Watch:
        def weight(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
            return tensor

        def activation(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
            if tensor.is_floating_point() and tensor.numel():
                extremes[name] = max(extremes.get(name, 0.0), float(tensor.abs().max()))
            return tensor

    with torch.inference_mode():
        for feed in feeds:
            executor.run(feed, hooks=Watch())
    return extremes


def check_activations(
    calib: dict[str, float], data: dict[str, float], ratio: float = 1.5
) -> list[Warning_]:
    """Tensors whose evaluation-set peak exceeds the calibration-set peak by `ratio` or more."""
    over = sorted(
        (
            (data[n] / calib[n], n)
            for n in data
            if calib.get(n, 0) > 0 and data[n] > ratio * calib[n]
        ),
        reverse=True,
    )
    if not over:
        return []
    shown = [f"{name}: x{r:.1f}" for r, name in over[:10]]
    return [
        Warning_(
            code="activation-shift",
            message=f"{len(over)} of {len(data)} activations reach {ratio}x or more beyond their "
            "calibration range on the evaluation data",
            why="values beyond the calibrated range are clipped by the int8 grid: the quantized "
            "model is wrong exactly where the evaluation data differs",
            fix="add samples like the evaluation data to the calibration set",
            files=shown,
        )
    ]


def diagnose(calib: Path, data: Path | None = None) -> DoctorReport:
    """Every input file counts; the image checks see the images (.npy/.npz are taken as is)."""
    files = list_input_files(calib)
    facts = [image_facts(p) for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    checks = ["count", "duplicates", "degenerate"]
    warnings = check_count(len(files)) + check_duplicates(facts) + check_degenerate(facts)
    if data is not None:
        checks.append("domain")
        warnings += check_domain(facts, [image_facts(p) for p in _images(data)])
    return DoctorReport(
        calib=str(calib),
        data=str(data) if data else None,
        samples=len(files),
        checks=checks,
        warnings=warnings,
    )


def _images(folder: Path) -> list[Path]:
    return [p for p in list_input_files(folder) if p.suffix.lower() in IMAGE_SUFFIXES]
