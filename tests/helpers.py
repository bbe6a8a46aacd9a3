"""Helpers the tests share: calibration folders on disk and the `quantlens` command in a
subprocess."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir

from quantlens.emulate import Executor
from quantlens.emulate.ort import OrtRunner
from quantlens.emulate.plan import build_plan, quantization_points
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan


def npz_folder(
    folder: Path, count: int, shape: tuple[int, ...] = (1, 3, 8, 8), seed: int = 0
) -> Path:
    """`count` random inputs named after the models' input `x`, seeded so runs repeat."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        np.savez(folder / f"{i:03d}.npz", x=rng.standard_normal(shape).astype(np.float32))
    return folder


def labelled_npy(folder: Path, model: Path, count: int, seed: int = 7) -> Path:
    """`count` random `.npy` inputs with a labels.txt of the float model's classes, every 4th
    label wrong so that float scores below 1 and a quantized model can gain or lose."""
    folder.mkdir(parents=True, exist_ok=True)
    runner = OrtRunner(model)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
        np.save(folder / f"s{i:02d}.npy", x)
        label = int(runner.run({"x": x})["y"].argmax())
        rows.append(f"s{i:02d}.npy\t{(label + 1) % 10 if i % 4 == 0 else label}\n")
    (folder / "labels.txt").write_text("".join(rows))
    return folder


def outlier_set(root: Path, calib_seed: int) -> tuple[Path, Path, Path]:
    """The outlier classifier (`tests.models.outlier_model`) saved under `root`, 6 calibration
    inputs seeded `calib_seed` and 12 labelled samples (`labelled_npy`)."""
    import onnx

    from tests.models import outlier_model

    model = root / "outlier.onnx"
    onnx.save(outlier_model(), model)
    data = labelled_npy(root / "data", model, 12)
    return model, npz_folder(root / "calib", 6, seed=calib_seed), data


def quantlens(*args: str) -> subprocess.CompletedProcess[str]:
    # A private working folder: default outputs (runs/<command>) of tests that run at the same
    # time must not meet in the checkout (a run folder takes one writer at a time).
    with tempfile.TemporaryDirectory(prefix="quantlens-cwd-") as cwd:
        return subprocess.run(
            [sys.executable, "-m", "quantlens", *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=cwd,
        )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    # Status lines (progress) may precede it; the problem itself is one `error:` line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def minmax_plan(model: ir.Model, feed: np.ndarray, target: str = "bm1684x") -> QuantPlan:
    """The all-int8 plan of `model` (one input, "x") on `target`, ranges from `feed`'s min/max."""
    points = quantization_points(model, Assignment(target=target), get_profile(target))
    executor = Executor(model)
    seen = executor.run({"x": feed}, outputs=[], keep=list(points.calibration_targets()))
    ranges = {n: (float(v.min()), float(v.max())) for n, v in seen.items()}
    return build_plan(points, ranges, executor.weights, target)
