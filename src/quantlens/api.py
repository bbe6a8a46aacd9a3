"""Pipeline functions behind the CLI: inspect and check (more stages arrive with later issues).

Functions here return artifacts and never print; `progress(done, total)` callbacks let the CLI
draw bars.
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from pydantic import BaseModel, Field

from quantlens.artifacts import Artifact
from quantlens.data import zoo
from quantlens.data.doctor import DoctorReport, activation_extremes, check_activations, diagnose
from quantlens.data.preprocess import InputSpec, load_inputs
from quantlens.emulate import Executor, unsupported_nodes
from quantlens.emulate.ort import OrtRunner
from quantlens.errors import UserError
from quantlens.evaluate.distance import Distance, distance
from quantlens.ir import CanonicalizeOptions, PassReport, canonicalize, discover_layers, load_model
from quantlens.ir.layers import Layer, Rejection
from quantlens.ir.passes.fix_shapes import dynamic_inputs
from quantlens.ir.passes.opset import opset_of

Progress = Callable[[int, int], None]


# --- resolving and preparing a model -----------------------------------------------------------


def resolve_model(spec: str, say: Callable[[str], None] | None = None) -> Path:
    """A model argument is a path to an .onnx file or the name of a zoo model (fetched once)."""
    path = Path(spec)
    if path.exists():
        return path
    names = [entry.name for entry in zoo.list_entries()]
    if spec in names:
        return zoo.fetch(spec, progress=say)
    raise UserError(
        f"model {spec!r} is neither a file nor a zoo model",
        f"pass a path to an .onnx file or one of: {', '.join(names)}",
    )


@dataclass
class SourceInfo:
    """Facts about the file as loaded, before canonicalization."""

    ir_version: int
    producer: str
    opset: int
    op_histogram: dict[str, int]
    metadata_keys: list[str]


@dataclass
class Prepared:
    path: Path
    original: SourceInfo
    model: ir.Model
    reports: list[PassReport]


def prepare(
    path: Path, input_shapes: dict[str, list[int]] | None = None, batch: int | None = None
) -> Prepared:
    """Load and canonicalize; the original's facts are kept for reports."""
    model = load_model(path)
    info = SourceInfo(
        ir_version=model.ir_version,
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        opset=opset_of(model),
        op_histogram=dict(collections.Counter(node.op_type for node in model.graph).most_common()),
        metadata_keys=sorted(model.metadata_props),
    )
    options = CanonicalizeOptions(input_shapes=input_shapes or {}, default_batch=batch)
    canonical, reports = canonicalize(model, options)
    return Prepared(path=path, original=info, model=canonical, reports=reports)


# --- inspect ------------------------------------------------------------------------------------


class TensorInfo(BaseModel):
    name: str
    shape: list[int | str]
    dtype: str


class UnsupportedNode(BaseModel):
    node: str
    op_type: str
    domain: str = ""


class InspectReport(Artifact):
    kind = "inspect"
    model: str
    producer: str
    ir_version: int
    opset: int
    opset_canonical: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_histogram: dict[str, int]
    parameters: int
    canonicalization: list[PassReport]
    layers: list[Layer]
    rejected: list[Rejection]
    activations: int
    unsupported: list[UnsupportedNode] = Field(default_factory=list)
    metadata_keys: list[str] = Field(default_factory=list)


def inspect_model(path: Path, input_shapes: dict[str, list[int]] | None = None) -> InspectReport:
    prepared = prepare(path, input_shapes)
    model = prepared.model
    layer_map = discover_layers(model)
    return InspectReport(
        model=str(path),
        producer=prepared.original.producer,
        ir_version=prepared.original.ir_version,
        opset=prepared.original.opset,
        opset_canonical=opset_of(model),
        inputs=[_tensor_info(v) for v in model.graph.inputs],
        outputs=[_tensor_info(v) for v in model.graph.outputs],
        op_histogram=prepared.original.op_histogram,
        parameters=sum(
            v.const_value.size
            for v in model.graph.initializers.values()
            if v.const_value is not None
        ),
        canonicalization=prepared.reports,
        layers=layer_map.layers,
        rejected=layer_map.rejected,
        activations=len(layer_map.activations),
        unsupported=[
            UnsupportedNode(node=n, op_type=o, domain=d) for n, o, d in unsupported_nodes(model)
        ],
        metadata_keys=prepared.original.metadata_keys,
    )


def _tensor_info(value: ir.Value) -> TensorInfo:
    dims: list[int | str] = []
    if value.shape is not None:
        dims = [d if isinstance(d, int) else str(d.value or "?") for d in value.shape]
    dtype = value.dtype.name.lower() if value.dtype is not None else "unknown"
    return TensorInfo(name=value.name or "", shape=dims, dtype=dtype)


# --- check --------------------------------------------------------------------------------------


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


def spec_for(path: Path, model: ir.Model) -> InputSpec:
    """The zoo entry's pre-processing when `path` is a zoo model, else a generic image spec."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for entry in zoo.list_entries():
        if entry.model_sha256 == digest:
            return entry.input
    return generic_spec(model)


def generic_spec(model: ir.Model) -> InputSpec:
    """RGB scaled to [0, 1] and stretched to the input's fixed height and width (NCHW)."""
    value = model.graph.inputs[0]
    dims = [d if isinstance(d, int) else -1 for d in value.shape] if value.shape else []
    if len(dims) != 4 or dims[1] not in (1, 3) or min(dims[2:]) <= 0:
        raise UserError(
            f"cannot tell how to turn images into input {value.name!r} of shape {dims}",
            "pass .npy/.npz tensors with --data, or fix the height and width with --input-shape",
        )
    return InputSpec(input_name=value.name or "", shape=dims, size=(dims[2], dims[3]))


def random_inputs(model: ir.Model, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """`count` random feeds; every dimension must be fixed (by the model or --input-shape)."""
    dynamic = dynamic_inputs(model)
    if dynamic:
        name, dims = next(iter(dynamic.items()))
        example = ",".join(
            str(d) if isinstance(d, int) else ("1" if axis == 0 else "?")
            for axis, d in enumerate(dims)
        )
        raise UserError(
            f"input {name!r} has dynamic dimensions {dims}",
            f"give concrete sizes with --input-shape {name}:{example} (each ? replaced by a size)",
        )
    rng = np.random.default_rng(seed)
    return [
        {v.name or "": _random_tensor(v, rng) for v in model.graph.inputs} for _ in range(count)
    ]


def _random_tensor(value: ir.Value, rng: np.random.Generator) -> np.ndarray:
    assert value.shape is not None
    shape = [int(d) for d in value.shape.numpy()]
    dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    return rng.integers(0, 8, size=shape).astype(dtype)


def supported_devices() -> Sequence[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


# --- doctor -------------------------------------------------------------------------------------


def doctor(
    calib: Path, data: Path | None = None, model: Path | None = None, limit: int = 32
) -> DoctorReport:
    """Image checks on the calibration set; with a model and --data, activation-range shift."""
    report = diagnose(calib, data)
    if model is None or data is None:
        return report
    prepared = prepare(model, batch=1)
    executor = Executor(prepared.model)
    spec = spec_for(model, prepared.model)
    calib_peaks = activation_extremes(executor, load_inputs(calib, spec)[:limit])
    data_peaks = activation_extremes(executor, load_inputs(data, spec)[:limit])
    report.checks.append("activations")
    report.warnings.extend(check_activations(calib_peaks, data_peaks))
    return report
