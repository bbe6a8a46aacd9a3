"""The quantize pipeline: canonicalize, calibrate, plan, emulate, export, verify.

Each stage writes its artifact into the run folder atomically; a rerun with the same inputs
reuses the finished calibration stage instead of recomputing it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from quantlens.artifacts.folder import RunFolder
from quantlens.artifacts.graph import build_graph
from quantlens.artifacts.quantize import OptimizeRecord, OutputQuality, QuantizeReport
from quantlens.calib import CalibrationStats, calibrate
from quantlens.data.preprocess import FeedSet, InputSpec, load_inputs, load_spec_file
from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.plan import QuantPoints, build_plan, quantization_points
from quantlens.errors import UserError
from quantlens.evaluate.distance import Distance, distance
from quantlens.export.qdq import export_qdq
from quantlens.export.verify import agreement_stats
from quantlens.fixes.levels import run_fixes, settings_for
from quantlens.ir.passes.optimize import optimize_graph
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import TargetProfile, get_profile
from quantlens.schemes.qparams import QuantPlan

Say = Callable[[str], None]
Progress = Callable[[int, int], None]


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

    def quantize_options(self, run_dir: Path, assignment: Path | None) -> QuantizeOptions:
        """`quantize` with these calibration settings, into `run_dir`."""
        shared = {f.name: getattr(self, f.name) for f in fields(CalibrationOptions)}
        return QuantizeOptions(**shared, run_dir=run_dir, assignment=assignment)


@dataclass
class QuantizeOptions(CalibrationOptions):
    run_dir: Path = Path("runs/quantize")
    assignment: Path | None = None
    # Optimization level 0-3 (see quantlens.fixes.levels); a fix set here (not None) overrides it.
    optimize: int = 0
    fixes: dict[str, bool | None] = field(default_factory=dict)
    # Time cap in seconds for each learned fix (AdaRound, fine-tune); None: their own defaults.
    fix_budget_s: float | None = None


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


def calibration_key(
    model: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    opts: QuantizeOptions,
    points: QuantPoints,
    graph: dict[str, bool] | None = None,
) -> str:
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(model.read_bytes()).digest())
    for feed in feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(feed[name]).tobytes())
    targets = {k: v.model_dump() for k, v in sorted(points.calibration_targets().items())}
    settings = {
        "method": opts.method,
        "percentile": opts.percentile,
        "targets": targets,
        "passes": 1,
        # Graph passes change the tensors calibration sees.
        "graph": graph or {},
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def run_calibration(
    executor: Executor,
    feeds: Sequence[dict[str, np.ndarray]],
    points: QuantPoints,
    opts: QuantizeOptions,
    key: str,
    progress: Progress | None,
) -> tuple[CalibrationStats, bool]:
    """Calibrate, or reuse the run folder's calibration when its key matches."""
    folder = RunFolder(opts.run_dir)
    if folder.read_calibration_key() == key:
        found = folder.read(CalibrationStats)
        if found is not None:
            return found, True
    stats = calibrate(
        executor,
        feeds,
        points.calibration_targets(),
        opts.method,
        percentile=opts.percentile,
        progress=progress,
    )
    folder.write(stats)
    folder.write_calibration_key(key)
    return stats, False


def compare_outputs(
    executor: Executor, plan: QuantPlan, feeds: Sequence[dict[str, np.ndarray]], device: str
) -> dict[str, Distance]:
    hooks = QuantHooks(plan, device)
    worst: dict[str, Distance] = {}
    with torch.inference_mode():
        for feed in feeds:
            reference = executor.run(feed)
            quantized = executor.run(feed, hooks=hooks)
            for name, value in reference.items():
                d = distance(value, quantized[name])
                worst[name] = worst[name].worst(d) if name in worst else d
    return worst


def mode_counts(executor: Executor, assignment: Assignment) -> dict[str, int]:
    counts = collections.Counter(assignment.mode_name(s.ctx.name) for s in executor.steps)
    return dict(counts.most_common())


def quantize_model(
    path: Path,
    opts: QuantizeOptions,
    say: Say | None = None,
    progress: Progress | None = None,
) -> QuantizeReport:
    """Canonicalize, calibrate, plan, emulate, export and verify; artifacts go to opts.run_dir."""
    from quantlens.api import prepare, spec_for

    clock: dict[str, float] = {}
    start = time.perf_counter()
    profile = get_profile(opts.target)
    prepared = prepare(path, opts.input_shapes, batch=1)
    model = prepared.model
    settings = settings_for(opts.optimize, opts.fixes)
    graph_options = settings.graph_options()
    graph_reports = optimize_graph(model, graph_options)
    # The graph as quantized, for the report's graph view.
    RunFolder(opts.run_dir).write(build_graph(model))
    assignment = load_assignment(opts.assignment, profile)
    points = quantization_points(model, assignment, profile)
    executor = Executor(model, device=opts.device)
    spec = opts.spec or spec_for(path, model)
    if opts.spec_file is not None:
        spec = load_spec_file(opts.spec_file, spec)
    feeds = load_calibration_set(opts.calib, spec, opts.limit, executor.input_names)
    _check_feed_shapes(feeds, model)
    clock["prepare"] = time.perf_counter() - start

    _say(say, f"calibrating {len(feeds)} samples ({opts.method})")
    key = calibration_key(path, feeds, opts, points, graph_options.model_dump())
    start = time.perf_counter()
    stats, reused = run_calibration(executor, feeds, points, opts, key, progress)
    clock["calibrate"] = time.perf_counter() - start

    ranges = {name: (t.clip_min, t.clip_max) for name, t in stats.tensors.items()}
    plan = build_plan(points, ranges, executor.weights, profile.name)
    plan, fixes = run_fixes(
        executor, plan, points, feeds, settings, say, progress, opts.fix_budget_s
    )
    clock.update({f"fix:{f.name}": f.seconds for f in fixes})
    folder = RunFolder(opts.run_dir)
    files = _write_plan(folder, assignment, plan)
    # Later stages (vendor exports) read the graph and weights the plan names from here.
    _write_model(model, folder.canonical_model)
    if graph_options.any() or any(f.weights for f in fixes):
        # `evaluate --run` must see the graph and weights the plan names.
        files["float_model"] = str(_write_model(model, folder.optimized_model))
    else:
        folder.optimized_model.unlink(missing_ok=True)  # a stale one would mislead
    start = time.perf_counter()
    quality = compare_outputs(executor, plan, feeds, opts.device)
    clock["emulate"] = time.perf_counter() - start

    _say(say, "exporting the QDQ model and checking it in ONNX Runtime")
    start = time.perf_counter()
    qdq_path = export_qdq(model, plan, folder.qdq_model)
    files["qdq_model"] = str(qdq_path)
    agree = agreement_stats(executor, plan, qdq_path, feeds)
    clock["export"] = time.perf_counter() - start

    report = QuantizeReport(
        model=str(path.resolve()),
        input_shapes=opts.input_shapes,
        target=profile.name,
        method=opts.method,
        samples=len(feeds),
        calibration_reused=reused,
        modes=mode_counts(executor, assignment),
        quantized_activations=sum(1 for q in plan.activations.values() if q.is_int),
        quantized_weights=sum(1 for q in plan.weights.values() if q.is_int),
        outputs=[
            OutputQuality(name=name, float_vs_quantized=d, emulator_vs_onnxruntime=agree.get(name))
            for name, d in quality.items()
        ],
        files={**files, "calibration": str(folder.file(CalibrationStats))},
        seconds={k: round(v, 3) for k, v in clock.items()},
        notes=plan.notes,
        optimize=OptimizeRecord(
            level=opts.optimize,
            enabled=settings.enabled(),
            passes={r.name: r.details for r in graph_reports},
            fixes=[f.as_record() for f in fixes],
        ),
    )
    folder.write(report)
    return report


# Kept for existing imports; the run folder owns the name.
FLOAT_MODEL_FILE = RunFolder.OPTIMIZED_MODEL


def _write_model(model: object, path: Path) -> Path:
    import onnx_ir as ir

    assert isinstance(model, ir.Model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    ir.save(model, tmp)
    tmp.replace(path)
    return path


def _write_plan(folder: RunFolder, assignment: Assignment, plan: QuantPlan) -> dict[str, str]:
    return {"assignment": str(folder.write(assignment)), "plan": str(folder.write(plan))}


def _check_feed_shapes(feeds: Sequence[dict[str, np.ndarray]], model: object) -> None:
    from onnx_ir import Model

    assert isinstance(model, Model)
    for value in model.graph.inputs:
        if value.shape is None:
            continue
        expected = [d if isinstance(d, int) else None for d in value.shape]
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


def _say(say: Say | None, message: str) -> None:
    if say is not None:
        say(message)
