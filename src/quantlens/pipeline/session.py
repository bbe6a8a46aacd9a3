"""What every stage starts from: the model resolved, loaded and canonicalized, its
pre-processing, the profile, the assignment and the calibration set.

Functions here return values and never print; `progress(done, total)` callbacks let the CLI
draw bars.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch

from quantlens.artifacts.calibration import CalibrationStats
from quantlens.artifacts.folder import RunFolder
from quantlens.artifacts.quantize import PassesGuard
from quantlens.data import zoo
from quantlens.data.preprocess import FeedSet, InputSpec, load_inputs, load_spec_file
from quantlens.emulate import Executor
from quantlens.emulate.plan import QuantPoints, build_plan, quantization_points
from quantlens.errors import UserError
from quantlens.fixes.levels import FixSettings, settings_for
from quantlens.ir import CanonicalizeOptions, PassReport, canonicalize, load_model
from quantlens.ir.passes.fix_shapes import dynamic_inputs
from quantlens.ir.passes.opset import opset_of
from quantlens.ir.passes.optimize import GraphOptions, optimize_graph
from quantlens.pipeline.calibration import Calibrations, calibration_context
from quantlens.scale.options import ScaleOptions
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import TargetProfile, get_profile
from quantlens.schemes.qparams import QuantPlan

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


def spec_for(path: Path, model: ir.Model) -> InputSpec:
    """The zoo entry's pre-processing when `path` is a zoo model, else a generic spec; either
    way with the graph's input dims, which `.npy`/`.npz` data is checked against."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    graph_inputs = input_dims(model)
    for entry in zoo.list_entries():
        if entry.model_sha256 == digest:
            return entry.input.model_copy(update={"graph_inputs": graph_inputs})
    return generic_spec(model)


def generic_spec(model: ir.Model) -> InputSpec:
    """RGB scaled to [0, 1] and stretched to the input's fixed height and width (NCHW); for an
    input that is not an image of fixed size, a spec without `size`: tensors only."""
    value = model.graph.inputs[0]
    graph_inputs = input_dims(model)
    dims = graph_inputs[value.name or ""] or []
    spec = InputSpec(input_name=value.name or "", shape=dims, graph_inputs=graph_inputs)
    if len(dims) != 4 or dims[1] not in (1, 3) or min(dims[2:]) <= 0:
        return spec
    return spec.model_copy(update={"size": (dims[2], dims[3])})


def input_dims(model: ir.Model) -> dict[str, list[int] | None]:
    """Every graph input's dims, -1 for a dynamic one; None where the rank is unknown."""
    return {
        value.name or "": None
        if value.shape is None
        else [d if isinstance(d, int) else -1 for d in value.shape]
        for value in model.graph.inputs
    }


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


# --- the shared setup of the stages that calibrate -------------------------------------------


@dataclass
class CalibrationOptions:
    """What every command that calibrates takes: the data, the target, how ranges are chosen."""

    calib: Path
    target: str = "ort-cpu"
    method: str = "percentile"
    percentile: float = 99.999
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    spec: InputSpec | None = None
    # A YAML/JSON file whose keys override the model's default pre-processing.
    spec_file: Path | None = None
    limit: int | None = None
    device: str = "cpu"
    # Units of work on Ray workers (`--workers`, `--ray-address`); None: one process.
    scale: ScaleOptions | None = None


@dataclass
class OptimizeOptions(CalibrationOptions):
    """Calibration plus what `--optimize` changes: graph passes before, fixes after the plan."""

    # Optimization level 0-3 (see quantlens.fixes.levels); a fix set here (not None) overrides it.
    optimize: int = 0
    fixes: dict[str, bool | None] = field(default_factory=dict)
    # Time cap in seconds for each learned fix (AdaRound, fine-tune); None: their own defaults.
    fix_budget_s: float | None = None

    def fix_settings(self) -> FixSettings:
        return settings_for(self.optimize, self.fixes)


def load_assignment(path: Path | None, profile: TargetProfile) -> Assignment:
    if path is None:
        return Assignment(target=profile.name, default=profile.default_mode)
    assignment = Assignment.load(path)
    return assignment.model_copy(update={"target": profile.name})


def load_calibration_set(
    folder: Path, spec: InputSpec, limit: int | None, model_inputs: Sequence[str]
) -> FeedSet:
    """The calibration feeds (read from disk on each use), checked once for missing inputs."""
    feeds = load_inputs(folder, spec)
    if limit is not None:
        feeds = feeds[:limit]
    for index, feed in enumerate(feeds):
        missing = [name for name in model_inputs if name not in feed]
        if missing:
            raise UserError(
                f"calibration sample {index} in {folder} has no data for input(s) {missing}",
                "name .npz arrays after the model inputs, or use images for a one-input model",
            )
    return feeds


def check_feed_shapes(feeds: Sequence[dict[str, np.ndarray]], model: object) -> None:
    from onnx_ir import Model

    assert isinstance(model, Model)
    for value in model.graph.inputs:
        if value.shape is None:
            continue
        # Some exports write a dynamic dim as -1 instead of a name.
        expected = [d if isinstance(d, int) and d >= 0 else None for d in value.shape]
        for index, feed in enumerate(feeds):
            actual = list(feed[value.name or ""].shape)
            fits = len(actual) == len(expected) and all(
                e is None or e == a for e, a in zip(expected, actual)
            )
            if not fits:
                raise UserError(
                    f"calibration sample {index}: input {value.name!r} has shape {actual}, the "
                    f"model expects {[e if e is not None else '?' for e in expected]}",
                    "check the channel count and size of the images, or the --input-shape",
                )


def check_feed_dtypes(feeds: Sequence[dict[str, np.ndarray]], model: object, source: Path) -> None:
    """Each array's kind must match its input's: a float input fed int64 or bool would fail
    deep in a kernel (or worse, be cast silently); integer inputs (token ids) need integers."""
    from onnx_ir import DataType, Model

    assert isinstance(model, Model)
    for value in model.graph.inputs:
        dtype = value.dtype
        if dtype is None or value.name is None:
            continue
        wanted = "f" if dtype.is_floating_point() else "b" if dtype == DataType.BOOL else "iu"
        for index, feed in enumerate(feeds):
            array = feed.get(value.name)
            if array is not None and array.dtype.kind not in wanted:
                raise UserError(
                    f"{source}: sample {index} gives input {value.name!r} {array.dtype} data, "
                    f"the model's input is {dtype.name}",
                    f"save the arrays as {dtype.numpy().name}",
                )


@dataclass
class Session:
    """What every calibrating stage shares, built once per run: the model loaded, canonicalized
    and optimized once, the profile, the assignment, the executor, the pre-processing, the
    calibration set and its calibrations per grid (shared through the run folder)."""

    path: Path
    folder: RunFolder
    profile: TargetProfile
    model: ir.Model
    graph: GraphOptions
    graph_reports: list[PassReport]
    assignment: Assignment
    executor: Executor
    spec: InputSpec
    feeds: Sequence[dict[str, np.ndarray]]
    calibrations: Calibrations
    # What the graph passes' guard measured (pipeline.graph_guard), once it has run.
    passes_guard: PassesGuard | None = None

    def points(self, assignment: Assignment | None = None) -> QuantPoints:
        return quantization_points(self.model, assignment or self.assignment, self.profile)

    def calibrate(
        self, points: QuantPoints, progress: Progress | None = None
    ) -> tuple[CalibrationStats, bool]:
        """The calibration of `points`' targets; True when it was all reused."""
        return self.calibrations.stats_for(points.calibration_targets(), progress)

    def plan(self, points: QuantPoints, stats: CalibrationStats) -> QuantPlan:
        ranges = {name: (t.clip_min, t.clip_max) for name, t in stats.tensors.items()}
        return build_plan(points, ranges, self.executor.weights, self.profile.name)


def profile_passes(graph: GraphOptions, profile: TargetProfile) -> GraphOptions:
    """`graph` plus the passes the target's integer kernels need: where HardSigmoid and Mul run
    as integer ops (ort-cpu-fast), HardSwish is split into them, since no runtime kernel takes
    a quantized HardSwish. Part of the calibration key like the user's passes."""
    ops = set(profile.integer_ops or ())
    if {"HardSigmoid", "Mul"} <= ops and not graph.split_hardswish:
        return graph.model_copy(update={"split_hardswish": True})
    return graph


def open_session(
    path: Path,
    opts: CalibrationOptions,
    run_dir: Path,
    *,
    assignment: Path | None = None,
    batch: int | None = 1,
    graph: GraphOptions | None = None,
    read_calibration_set: bool = True,
) -> Session:
    """Prepare `path` for `opts.target` with `batch` fixed (None: left open), apply `graph`'s
    passes, read the calibration set and the run folder's calibrations (without
    `read_calibration_set`, a session that cannot calibrate: enough for closures and costs)."""
    profile = get_profile(opts.target)
    model = prepare(path, opts.input_shapes, batch=batch).model
    graph = profile_passes(graph or GraphOptions(), profile)
    graph_reports = optimize_graph(model, graph)
    executor = Executor(model, device=opts.device)
    spec = opts.spec or spec_for(path, model)
    if opts.spec_file is not None:
        spec = load_spec_file(opts.spec_file, spec)
    feeds: Sequence[dict[str, np.ndarray]] = []
    context = "uncalibrated"
    if read_calibration_set:
        feeds = load_calibration_set(opts.calib, spec, opts.limit, executor.input_names)
        check_feed_dtypes(feeds, model, opts.calib)
        context = calibration_context(path, feeds, opts.method, opts.percentile, graph.model_dump())
    folder = RunFolder(run_dir)
    calibrations = Calibrations(
        folder, context, executor, feeds, opts.method, opts.percentile, opts.scale
    )
    return Session(
        path=path,
        folder=folder,
        profile=profile,
        model=model,
        graph=graph,
        graph_reports=graph_reports,
        assignment=load_assignment(assignment, profile),
        executor=executor,
        spec=spec,
        feeds=feeds,
        calibrations=calibrations,
    )
