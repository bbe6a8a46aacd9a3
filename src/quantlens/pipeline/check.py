"""The check stage: the emulator against ONNX Runtime on the same inputs (float validation)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from pydantic import BaseModel

from quantlens.artifacts import Artifact
from quantlens.data.preprocess import InputSpec, load_inputs
from quantlens.emulate import Executor
from quantlens.emulate.ort import OrtRunner
from quantlens.errors import UserError
from quantlens.evaluate.distance import Distance, distance
from quantlens.pipeline.session import Progress, prepare, random_inputs, spec_for


class OutputCheck(BaseModel):
    name: str
    shape: list[int]
    max_abs_error: float
    relative_error: float
    cosine: float
    snr_db: float
    passed: bool


class CheckReport(Artifact):
    kind = "check"
    model: str
    inputs: str
    samples: int
    tolerance: float
    device: str
    threads: int
    relative_error_definition: str = (
        "max |emulator - onnxruntime| / max |onnxruntime|, per output, worst over samples"
    )
    outputs: list[OutputCheck]
    canonicalization: list[str]
    emulator_seconds: float
    onnxruntime_seconds: float
    passed: bool


@dataclass
class CheckOptions:
    data: Path | None = None
    random: int = 0
    input_shapes: dict[str, list[int]] | None = None
    tolerance: float = 1e-4
    device: str = "cpu"
    seed: int = 0
    spec: InputSpec | None = None


def check_model(path: Path, options: CheckOptions, progress: Progress | None = None) -> CheckReport:
    """Run the emulator and ONNX Runtime on the same inputs and compare every output."""
    _check_device(options.device)
    prepared = prepare(path, options.input_shapes, batch=1)
    feeds_list, source = _check_inputs(path, prepared.model, options)
    executor = Executor(prepared.model, device=options.device)
    reference = OrtRunner(path, threads=torch.get_num_threads())
    worst: dict[str, Distance] = {}
    shapes: dict[str, list[int]] = {}
    emu_time = ort_time = 0.0
    for done, feeds in enumerate(feeds_list, start=1):
        start = time.perf_counter()
        expected = reference.run(feeds)
        ort_time += time.perf_counter() - start
        start = time.perf_counter()
        got = executor.run(feeds)
        emu_time += time.perf_counter() - start
        for name, want in expected.items():
            result = _compare(name, torch.from_numpy(want), got[name])
            worst[name] = worst[name].worst(result) if name in worst else result
            shapes[name] = list(want.shape)
        if progress:
            progress(done, len(feeds_list))
    outputs = [
        OutputCheck(
            name=name,
            shape=shapes[name],
            **d.model_dump(),
            passed=d.relative_error <= options.tolerance,
        )
        for name, d in worst.items()
    ]
    return CheckReport(
        model=str(path),
        inputs=source,
        samples=len(feeds_list),
        tolerance=options.tolerance,
        device=options.device,
        threads=torch.get_num_threads(),
        outputs=outputs,
        canonicalization=[r.summary() for r in prepared.reports if r.changed],
        emulator_seconds=emu_time,
        onnxruntime_seconds=ort_time,
        passed=all(o.passed for o in outputs),
    )


def _compare(name: str, want: torch.Tensor, got: torch.Tensor) -> Distance:
    if tuple(want.shape) != tuple(got.shape):
        raise UserError(
            f"output {name!r}: emulator shape {tuple(got.shape)} differs from ONNX Runtime's "
            f"{tuple(want.shape)}",
            "this is a quantlens bug; please report it with the model",
        )
    if not bool(torch.isfinite(got).all()) and bool(torch.isfinite(want).all()):
        raise UserError(
            f"output {name!r}: the emulator produced NaN/Inf where ONNX Runtime did not",
            "this is a quantlens bug; please report it with the model",
        )
    return distance(want, got.detach().cpu())


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"device {device!r} requested but CUDA is not available", "use --device cpu"
        )


def _check_inputs(
    path: Path, model: ir.Model, options: CheckOptions
) -> tuple[Sequence[dict[str, np.ndarray]], str]:
    if options.data is not None:
        spec = options.spec or spec_for(path, model)
        return load_inputs(options.data, spec), f"data: {options.data}"
    count = options.random or 4
    return random_inputs(
        model, count, options.seed
    ), f"random: {count} samples, seed {options.seed}"
