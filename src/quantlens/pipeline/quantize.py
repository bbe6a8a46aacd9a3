"""The quantize stage: calibrate, plan, fix, emulate, export and verify on a session.

Each step writes its artifact into the run folder atomically; a rerun with the same inputs (or
any stage in the same folder before it) reuses the calibration instead of recomputing it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from quantlens.artifacts import replace_file
from quantlens.artifacts.folder import RunFolder
from quantlens.artifacts.graph import build_graph
from quantlens.artifacts.journal import stage
from quantlens.artifacts.quantize import (
    LatencyRecord,
    ModeChange,
    OptimizeRecord,
    OutputQuality,
    QuantizeReport,
)
from quantlens.bench.latency import LatencySettings, export_latency
from quantlens.calib import CalibrationStats
from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.evaluate.distance import Distance, distance
from quantlens.export.qdq import export_qdq
from quantlens.export.verify import agreement_stats
from quantlens.fixes.levels import run_fixes
from quantlens.fixes.result import FixResult
from quantlens.pipeline.closure import close_assignment
from quantlens.pipeline.graph_guard import guard_passes
from quantlens.pipeline.session import (
    OptimizeOptions,
    Session,
    check_feed_shapes,
    open_session,
)
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import ORT_VENDOR
from quantlens.schemes.qparams import QuantPlan

Say = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass
class QuantizeOptions(OptimizeOptions):
    run_dir: Path = Path("runs/quantize")
    assignment: Path | None = None
    # Rounds of the float vs QDQ latency measurement in ONNX Runtime (ORT targets); 0: none.
    latency_rounds: int = 10


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


@stage("quantize")
def quantize_model(
    path: Path,
    opts: QuantizeOptions,
    say: Say | None = None,
    progress: Progress | None = None,
) -> QuantizeReport:
    """Canonicalize, calibrate, plan, emulate, export and verify; artifacts go to opts.run_dir."""
    start = time.perf_counter()
    graph = opts.fix_settings().graph_options()
    session = open_session(path, opts, opts.run_dir, assignment=opts.assignment, graph=graph)
    session = guard_passes(session, path, opts, opts.assignment, say, progress)
    return quantize(session, opts, say, progress, prepared_in=time.perf_counter() - start)


def quantize(
    session: Session,
    opts: QuantizeOptions,
    say: Say | None = None,
    progress: Progress | None = None,
    assignment: Assignment | None = None,
    prepared_in: float = 0.0,
    planned: tuple[QuantPlan, list[FixResult]] | None = None,
) -> QuantizeReport:
    """Quantize `session`'s model with `assignment` (default: the session's) into its folder;
    `planned`: the plan and the fixes already applied to the session (the search's), which
    are exported as they are instead of fixing again."""
    clock: dict[str, float] = {"prepare": prepared_in}
    model, executor, feeds, folder = session.model, session.executor, session.feeds, session.folder
    # What the chip realizes: an explicit assignment closed under the target's rules.
    given = assignment or session.assignment
    assignment, changes = close_assignment(model, given, session.profile)
    unapplied = _unapplied(changes) if planned is not None and changes else []
    if unapplied:
        # The search's plan scored its own modes: exported as scored (plan and assignment
        # agree), with what the chip's rules would change said and kept in the notes.
        assignment, changes = given, []
        for line in unapplied:
            _say(say, line)
    folder.write(build_graph(model))  # the graph as quantized, for the report's graph view
    check_feed_shapes(feeds, model)
    points = session.points(assignment)
    _say(say, f"calibrating {len(feeds)} samples ({opts.method})")
    start = time.perf_counter()
    stats, reused = session.calibrate(points, progress)
    session.calibrations.commit(stats)
    clock["calibrate"] = time.perf_counter() - start

    settings = opts.fix_settings()
    if planned is None:
        plan = session.plan(points, stats)
        plan, fixes = run_fixes(
            executor, plan, points, feeds, settings, say, progress, opts.fix_budget_s
        )
    else:
        plan, fixes = planned
    clock.update({f"fix:{f.name}": f.seconds for f in fixes})
    files = _write_plan(folder, assignment, plan)
    # Later stages (vendor exports) read the graph and weights the plan names from here.
    _write_model(model, folder.canonical_model)
    if session.graph.any() or any(f.weights for f in fixes):
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
    start = time.perf_counter()
    latency = _latency(session, opts, qdq_path, say)
    if latency is not None:
        clock["latency"] = time.perf_counter() - start

    report = QuantizeReport(
        model=str(session.path.resolve()),
        input_shapes=opts.input_shapes,
        target=session.profile.name,
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
        notes=[*plan.notes, *unapplied],
        optimize=OptimizeRecord(
            level=opts.optimize,
            enabled=settings.enabled(),
            passes={r.name: r.details for r in session.graph_reports},
            passes_guard=session.passes_guard,
            fixes=[f.as_record() for f in fixes],
        ),
        latency=latency,
        mode_changes=changes,
    )
    folder.write(report)
    return report


# Kept for existing imports; the run folder owns the name.
FLOAT_MODEL_FILE = RunFolder.OPTIMIZED_MODEL


def _write_model(model: object, path: Path) -> Path:
    import onnx_ir as ir

    assert isinstance(model, ir.Model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    ir.save(model, tmp)
    return replace_file(tmp, path)


def _latency(
    session: Session, opts: QuantizeOptions, qdq_path: Path, say: Say | None
) -> LatencyRecord | None:
    """Float vs QDQ latency in ONNX Runtime, where ONNX Runtime is the target: what a user
    deploying the export will see (a vendor chip does not run the QDQ model)."""
    if session.profile.vendor != ORT_VENDOR or opts.latency_rounds <= 0:
        return None
    _say(say, "timing the float model and the QDQ export in ONNX Runtime")
    settings = LatencySettings(rounds=opts.latency_rounds, warmup=2)
    return export_latency(session.path, qdq_path, session.feeds[:4], settings)


def _write_plan(folder: RunFolder, assignment: Assignment, plan: QuantPlan) -> dict[str, str]:
    return {"assignment": str(folder.write(assignment)), "plan": str(folder.write(plan))}


def _unapplied(changes: Sequence[ModeChange]) -> list[str]:
    return [
        f"not applied (the search's plan is exported as scored): {c.node}: {c.requested} -> "
        f"{c.mode} ({c.reason})"
        for c in changes
    ]


def _say(say: Say | None, message: str) -> None:
    if say is not None:
        say(message)
