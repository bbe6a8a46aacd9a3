"""Shared fixtures for the vendor-format tests: small real run folders made by quantize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from quantlens.api import prepare
from quantlens.export.vendors import ExportContext, ModelIndex
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan
from tests.models import conv_bn_model


def small_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "conv_bn.onnx"
    if not path.exists():
        onnx.save(conv_bn_model(unnamed=False), path)
    return path


def npz_folder(folder: Path, count: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        np.savez(folder / f"{i:03d}.npz", x=rng.standard_normal((1, 3, 8, 8)).astype(np.float32))
    return folder


def make_run(
    folder: Path,
    target: str,
    assignment: Assignment,
    method: str = "percentile",
    limit: int | None = None,
) -> tuple[Path, Path]:
    """(run folder, model) for `assignment` on the small conv/BN model."""
    model = small_model(folder)
    calib = folder / "calib"
    if not calib.exists():
        npz_folder(calib)
    run_dir = folder / f"run-{target}-{method}-{abs(hash(assignment.to_json())) % 10**8}"
    saved = assignment.model_copy(update={"target": target}).save(folder / "assignment-in.json")
    quantize_model(
        model,
        QuantizeOptions(
            calib=calib,
            target=target,
            run_dir=run_dir,
            assignment=saved,
            method=method,
            limit=limit,
        ),
    )
    return run_dir, model


def model_index(model: Path) -> ModelIndex:
    return ModelIndex.from_model(prepare(model, batch=1).model)


def context(assignment: Assignment, model: Path, target: str = "hailo8") -> ExportContext:
    """An export context without calibration, for grammar-level tests."""
    return ExportContext(
        assignment=assignment, plan=QuantPlan(target=target), model=model_index(model)
    )


def effective(assignment: Assignment, index: ModelIndex) -> dict[str, str]:
    return {name: assignment.mode_name(name) for name in index.names}
