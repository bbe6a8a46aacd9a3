"""The analyze stage: which layers make the quantized model wrong, and why.

On a session (the calibration of a quantize run in the same folder is reused), it plans like
`quantize`, then measures every layer in the modes asked for and writes `analysis.json` into
the run folder (the CLI renders it as a table).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from quantlens.analysis import (
    VARIANTS,
    AccumulatedResult,
    AnalysisReport,
    Evaluator,
    GradientResult,
    IsolatedResult,
    LayerAnalysis,
    LayerTensors,
    batches,
    choose_batch_size,
    diagnose,
    flag_low_snr,
    layer_tensors,
    node_tensors,
    run_accumulated,
    run_gradient,
    run_isolated,
    spearman,
    suggest,
)
from quantlens.analysis.report import GradientNoise, IsolatedNoise
from quantlens.artifacts.folder import RunFolder
from quantlens.artifacts.journal import stage
from quantlens.artifacts.quantize import ModeChange
from quantlens.calib import CalibrationStats
from quantlens.emulate import Executor
from quantlens.errors import UserError
from quantlens.ir import discover_layers
from quantlens.pipeline.closure import close_assignment
from quantlens.pipeline.session import (
    CalibrationOptions,
    Session,
    load_calibration_set,
    open_session,
)
from quantlens.schemes.profiles import TargetProfile
from quantlens.schemes.qparams import QuantPlan

Say = Callable[[str], None]
Progress = Callable[[int, int], None]
Feed = dict[str, np.ndarray]
MODES = ("accumulated", "isolated", "gradient")
T = TypeVar("T")


@dataclass
class AnalyzeOptions(CalibrationOptions):
    run_dir: Path = Path("runs/analyze")
    mode: str = "all"
    assignment: Path | None = None
    # Samples to analyse (default: the calibration set) and how many of them.
    data: Path | None = None
    samples: int | None = None
    # Weight-only / activation-only isolated runs: None for every layer, N for the N worst only.
    split: int | None = None
    max_batch: int = 8
    memory_budget_mb: int = 2048
    # Also analyse weightless nodes that own a quantizer (targets that quantize every output).
    all_nodes: bool = False
    pairs: int = 512
    bins: int = 32
    evaluator: Evaluator | None = None


@dataclass
class Setup:
    path: Path
    profile: TargetProfile
    executor: Executor
    plan: QuantPlan
    calibration: CalibrationStats
    feeds: Sequence[Feed]
    layers: list[LayerTensors]
    # Modes of the given assignment that the target's rules changed (what is measured).
    mode_changes: list[ModeChange] = field(default_factory=list)


def modes_for(mode: str) -> tuple[str, ...]:
    if mode == "all":
        return MODES
    if mode not in MODES:
        raise UserError(f"unknown analysis mode {mode!r}", f"use one of {', '.join(MODES)}, all")
    return (mode,)


def prepare_analysis(path: Path, opts: AnalyzeOptions, progress: Progress | None) -> Setup:
    """Canonicalize (batch axis left open), calibrate or reuse the folder's calibration, plan."""
    session = open_session(path, opts, opts.run_dir, assignment=opts.assignment, batch=None)
    return analysis_setup(session, opts, progress)


def analysis_setup(session: Session, opts: AnalyzeOptions, progress: Progress | None) -> Setup:
    """The plan to measure and the layers to measure it at, on `session`'s model: the
    session's assignment closed under the target's rules, as `quantize` realizes it."""
    assignment, changes = close_assignment(session.model, session.assignment, session.profile)
    points = session.points(assignment)
    stats, _ = session.calibrate(points, progress)
    if not session.folder.has(QuantPlan):
        # An analysis-only folder: its calibration is this one. Beside a quantize run's plan,
        # calibration.json stays that plan's.
        session.calibrations.commit(stats)
    plan = session.plan(points, stats)
    executor, profile = session.executor, session.profile
    feeds = session.feeds
    if opts.data is not None:
        feeds = load_calibration_set(opts.data, session.spec, None, executor.input_names)
    feeds = feeds[: opts.samples] if opts.samples is not None else feeds
    layers = layer_tensors(executor, discover_layers(session.model).layers, plan, profile.placement)
    if opts.all_nodes and profile.placement == "all-outputs":
        layers = sorted([*layers, *node_tensors(executor, layers, plan)], key=lambda lt: lt.step)
    return Setup(session.path, profile, executor, plan, stats, feeds, layers, changes)


class _Ticker:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def __call__(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


@stage("analyze")
def analyze_model(
    path: Path, opts: AnalyzeOptions, say: Say | None = None, progress: Progress | None = None
) -> AnalysisReport:
    """Measure every layer in the requested modes; the artifact goes to run_dir/analysis.json."""
    modes = modes_for(opts.mode)
    clock: dict[str, float] = {}
    start = time.perf_counter()
    setup = prepare_analysis(path, opts, progress)
    clock["prepare"] = time.perf_counter() - start
    keep = [n for lt in setup.layers for n in (lt.cut if "isolated" in modes else (lt.measured,))]
    size = choose_batch_size(
        setup.executor, setup.feeds, set(keep), opts.memory_budget_mb << 20, opts.max_batch
    )
    runs = len(modes) + (1 if "isolated" in modes and opts.split is not None else 0)
    tick = _Ticker(runs * math.ceil(len(setup.feeds) / size), progress)
    accumulated = isolated = gradient = None
    if "accumulated" in modes:
        _say(say, f"accumulated noise over {len(setup.feeds)} samples")
        accumulated, clock["accumulated"] = _timed(lambda: _accumulated(setup, opts, size, tick))
    if "isolated" in modes:
        _say(say, f"isolated noise of {len(setup.layers)} layers")
        isolated, clock["isolated"] = _timed(lambda: _isolated(setup, opts, size, tick))
    if "gradient" in modes:
        _say(say, "gradient estimate")
        gradient, clock["gradient"] = _timed(
            lambda: run_gradient(
                setup.executor, setup.plan, setup.layers, batches(setup.feeds, size), tick=tick
            )
        )
    report = assemble(setup, opts, modes, size, accumulated, isolated, gradient)
    report.seconds = {k: round(v, 3) for k, v in clock.items()}
    report.mode_changes = setup.mode_changes
    RunFolder(opts.run_dir).write(report)
    return report


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    begin = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - begin


def _accumulated(setup: Setup, opts: AnalyzeOptions, size: int, tick: _Ticker) -> AccumulatedResult:
    ranges = {name: (t.min, t.max) for name, t in setup.calibration.tensors.items()}
    return run_accumulated(
        setup.executor,
        setup.plan,
        setup.layers,
        batches(setup.feeds, size),
        ranges,
        pairs=opts.pairs,
        bins=opts.bins,
        tick=tick,
    )


def _isolated(setup: Setup, opts: AnalyzeOptions, size: int, tick: _Ticker) -> IsolatedResult:
    """Every variant for every layer, or (with `split`) the weight/activation split for only the
    `split` worst layers of the first run."""
    ex, plan = setup.executor, setup.plan
    variants = VARIANTS if opts.split is None else ("both",)

    def measure(
        layers: Sequence[LayerTensors], variants: Sequence[str], evaluator: Evaluator | None
    ) -> IsolatedResult:
        if farm is not None:
            return farm.run(layers, variants, evaluator, tick)
        return run_isolated(ex, plan, layers, batches(setup.feeds, size), variants, evaluator, tick)

    farm = None
    if opts.scale is not None:
        from quantlens.scale.isolated import isolated_farm  # imports Ray

        budget = opts.memory_budget_mb << 20
        farm = isolated_farm(opts.scale, ex, plan, setup.layers, setup.feeds, size, budget)
    try:
        result = measure(setup.layers, variants, opts.evaluator)
        if opts.split is not None and opts.split > 0:
            order = sorted(setup.layers, key=lambda lt: result.snr_db(lt.id) or math.inf)
            split = measure(order[: opts.split], ("weight", "activation"), None)
            for name, noise in split.noise.items():
                result.noise[name].update(noise)
    finally:
        if farm is not None:
            farm.close()
    return result


def assemble(
    setup: Setup,
    opts: AnalyzeOptions,
    modes: Sequence[str],
    batch_size: int,
    accumulated: AccumulatedResult | None,
    isolated: IsolatedResult | None,
    gradient: GradientResult | None,
) -> AnalysisReport:
    layers = [_layer_analysis(setup, lt, accumulated, isolated, gradient) for lt in setup.layers]
    thresholds = flag_low_snr(layers)
    for la in layers:
        if la.flags:
            la.suggestion = suggest(la, setup.profile, opts.method)
    ranked_by, key = _ranking_key(isolated, gradient)
    ranking = [la.id for la in sorted(layers, key=key)]
    rho = None
    if isolated is not None and gradient is not None:
        rho = spearman(
            [_value(la.isolated.snr_db if la.isolated else None) for la in layers],
            [_value(la.gradient.snr_db if la.gradient else None) for la in layers],
        )
    return AnalysisReport(
        model=str(setup.path),
        target=setup.profile.name,
        method=opts.method,
        modes=list(modes),
        samples=len(setup.feeds),
        batch_size=batch_size,
        ranked_by=ranked_by,
        ranking=ranking,
        layers=layers,
        outputs={k: v.stats() for k, v in accumulated.outputs.items()} if accumulated else {},
        spearman_gradient_isolated=rho,
        thresholds=thresholds,
        notes=[*_fusion_notes(setup.layers), *setup.plan.notes],
    )


def _value(snr: float | None) -> float:
    return math.nan if snr is None else snr


def _ranking_key(
    isolated: IsolatedResult | None, gradient: GradientResult | None
) -> tuple[str, Callable[[LayerAnalysis], float]]:
    def pick(la: LayerAnalysis) -> float | None:
        if isolated is not None:
            return la.isolated.snr_db if la.isolated else None
        if gradient is not None:
            return la.gradient.snr_db if la.gradient else None
        return la.accumulated.snr_db if la.accumulated else None

    name = "isolated" if isolated else "gradient" if gradient else "accumulated"
    return name, lambda la: (lambda v: math.inf if v is None else v)(pick(la))


def _layer_analysis(
    setup: Setup,
    lt: LayerTensors,
    accumulated: AccumulatedResult | None,
    isolated: IsolatedResult | None,
    gradient: GradientResult | None,
) -> LayerAnalysis:
    la = LayerAnalysis(
        id=lt.id,
        op_type=lt.layer.op_type,
        measured_at=lt.measured,
        fused=list(lt.fused),
        nodes=list(lt.nodes),
        weight_quantizers=list(lt.weights),
        activation_quantizers=list(lt.activations),
        diagnostics=diagnose(lt, setup.calibration, setup.executor.weights, setup.plan),
    )
    if accumulated is not None and lt.measured in accumulated.tensors:
        la.accumulated = accumulated.tensors[lt.measured].stats()
        la.scatter = accumulated.scatter.get(lt.measured)
        la.histogram = accumulated.histograms[lt.measured].result()
    if isolated is not None:
        la.isolated = IsolatedNoise(
            snr_db=isolated.snr_db(lt.id),
            weight_snr_db=isolated.snr_db(lt.id, "weight"),
            activation_snr_db=isolated.snr_db(lt.id, "activation"),
            metric=isolated.metric.get(lt.id),
        )
    if gradient is not None:
        la.gradient = GradientNoise(
            snr_db=gradient.snr_db(lt.id),
            weight_snr_db=gradient.snr_db(lt.id, "weight"),
            activation_snr_db=gradient.snr_db(lt.id, "activation"),
        )
    return la


def _fusion_notes(layers: Sequence[LayerTensors]) -> list[str]:
    fused = collections.Counter("+".join(lt.fused) for lt in layers if lt.fused)
    if not fused:
        return []
    kinds = ", ".join(f"{name} x{count}" for name, count in fused.most_common())
    return [
        f"like with like: {sum(fused.values())} layers are compared after their fused "
        f"activation ({kinds}), as the chip writes them; an asymmetric range starting at 0 "
        "before a ReLU clips exactly as the ReLU does, so a pre-activation SNR would measure "
        "the ReLU rather than quantization noise"
    ]


def _say(say: Say | None, message: str) -> None:
    if say is not None:
        say(message)
