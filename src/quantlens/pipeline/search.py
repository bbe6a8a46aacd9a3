"""The search stage: the cheapest mixed-precision assignment that meets the user's goal.

prepare → calibrate at 8 and 16 bits once (every candidate's plan is assembled from those
ranges) → units and closure rules → cost table → each unit's isolated noise → a strategy's
candidates, cheapest first → the oracle verifies them (balanced output SNR on a few samples, the
task metric on the evaluation set for at most `max_evals` points, by bisection along the
candidates) → search.json, the chosen assignment and its QDQ export through `quantize`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
import torch
from pydantic import BaseModel

from quantlens.analysis.metrics import channel_axes, nsr_to_db
from quantlens.artifacts import write_text_atomic
from quantlens.artifacts.folder import RunFolder
from quantlens.artifacts.search import FixTrial, FixVariant, MetricNoise
from quantlens.bench.latency import LatencySettings
from quantlens.emulate import Executor
from quantlens.emulate.plan import QuantPoints, build_plan, quantization_points
from quantlens.errors import UserError
from quantlens.export.qdq import export_qdq
from quantlens.export.simulation import export_simulation, simulation_refusal
from quantlens.fixes.bias_correction import bias_correction
from quantlens.fixes.levels import FixSettings
from quantlens.fixes.result import FixResult, apply_fix
from quantlens.pipeline.graph_guard import guard_passes
from quantlens.pipeline.search_fixes import (
    POST_PLAN,
    FixedParams,
    FixTrialResult,
    Range,
    fix_int8,
    place,
    search_graph,
    trial_variants,
)
from quantlens.pipeline.search_promotion import promotion_noise
from quantlens.pipeline.search_verify import ORT, score_in_onnxruntime
from quantlens.pipeline.session import OptimizeOptions, Session, open_session, prepare
from quantlens.pipeline.tasks import EvalOptions, TaskScorer
from quantlens.scale.options import ScaleOptions
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.modes import get_mode
from quantlens.schemes.profiles import TargetProfile, get_profile
from quantlens.schemes.qparams import QuantPlan
from quantlens.search.artifact import GroupInfo, SearchGoal, SearchPoint, SearchReport
from quantlens.search.cost import CostTable, get_cost_model
from quantlens.search.groups import Rules, State, build_rules
from quantlens.search.latency import LatencyMeter, MeasuredTable, measured_costs
from quantlens.search.oracle import BudgetExhausted, Evaluators, Oracle, modes_key
from quantlens.search.sensitivity import UnitNoise, output_noise, unit_noise, weight4_noise
from quantlens.search.strategies import Candidate, NoiseModel, get_strategy
from quantlens.search.units import Unit, element_counts, find_units, sized_like

if TYPE_CHECKING:
    from quantlens.scale.search import SearchFarm

Say = Callable[[str], None]
Progress = Callable[[int, int], None]
Feed = dict[str, np.ndarray]
FLOAT = {"*": "float"}  # the oracle key of the float model's own metric
# Report keys of the all-int8 point the fix trial did not continue from.
WITHOUT_FIXES = "all-int8-without-fixes"
WITH_FIXES = "all-int8-with-fixes"
DEFAULT_MIN_SNR = 30.0
DEFAULT_RECOVERY = 0.9
ENGINES = ("emulator", "onnxruntime")
# Activation grids the search calibrates (a plan on any other bit width reuses 8-bit ranges).
SEARCH_GRIDS = frozenset({8, 16})
# Full evaluations a further set of fixes must leave to the candidates: the costliest one, a
# bisection step and all-16-bit.
RESERVED_EVALS = 3


@dataclass
class SearchOptions(OptimizeOptions):
    target: str = "hailo8"
    run_dir: Path = Path("runs/search")
    # Evaluation data with ground truth and its task; without them the goal is an output SNR.
    data: Path | None = None
    task: str | None = None
    task_options: dict[str, object] = field(default_factory=dict)
    strategy: str = "milp"
    cost_model: str = "analytic"
    cost_table: Path | None = None
    max_drop: float | None = None
    min_snr: float | None = None
    max_cost: float | None = None
    max_evals: int = 10
    time_budget: float | None = None
    resume: bool = False
    samples: int = 8
    sensitivity_samples: int = 4
    eval_limit: int | None = None
    export: bool = True
    # Moves below int8 (4-bit weights, a16_w8 under a16_w16) where the profile allows them;
    # None: when the budget is below int8's or the cost is weight bytes.
    lower: bool | None = None
    # The measured cost model: seconds for timing each unit's move before planning.
    measure_budget_s: float = 300.0
    measure_rounds: int = 15
    # Where full evaluations run: "onnxruntime" (each candidate's QDQ export) or "emulator";
    # None: ONNX Runtime on an ONNX Runtime target, the emulator elsewhere.
    engine: str | None = None
    # Try bias correction and clip search on all-int8 before promoting (`--fixes`); the fixes
    # `--optimize` or a fix flag enables are tried instead when there are any.
    try_fixes: bool = True
    # Stop with all-int8 when its gap to float is within the evaluation set's noise.
    noise_stop: bool = True

    def searches_down(self) -> bool:
        if self.lower is not None:
            return self.lower
        return (self.max_cost is not None and self.max_cost < 1.0) or (
            self.cost_model == "weight-bytes"
        )


@dataclass
class Planner:
    """Plans for any assignment from ranges calibrated once per activation grid."""

    profile: TargetProfile
    model: ir.Model
    executor: Executor
    ranges: dict[int, dict[str, tuple[float, float]]]
    # Calibrates tensors a grid lacks (bits, names) -> ranges; None: every plan is in the grids.
    extend: Callable[[int, list[str]], dict[str, tuple[float, float]]] | None = None
    # What the fixes tried on all-int8 changed (clip ranges, weight grids); None: no fixes.
    fixed: FixedParams | None = None
    # A fix to run again on each candidate's plan (bias correction): plan -> its new values.
    refit: Callable[[QuantPlan], Mapping[str, np.ndarray]] | None = None
    _refits: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def plan_for(self, modes: Mapping[str, str], refit: bool = True) -> QuantPlan:
        """The plan of `modes`, its float values placed in the executor: with fixes, each
        candidate's own bias correction where `refit` is set (`_refit_values`), else the fixed
        all-int8's values where a layer stays int8 and the ones from before elsewhere."""
        assignment = Assignment(
            target=self.profile.name,
            default=self.profile.default_mode,
            layers=dict(modes),  # type: ignore[arg-type]
        )
        points = quantization_points(self.model, assignment, self.profile)
        grids = {name: self._grid(fmt.bits) for name, fmt in points.calibration_targets().items()}
        self._fill(grids)
        ranges = {name: self.ranges[bits][name] for name, bits in grids.items()}
        if self.fixed is None:
            return build_plan(points, ranges, self.executor.weights, self.profile.name)
        ranges.update(self.fixed.ranges_for(grids))
        plan = build_plan(points, ranges, self.executor.weights, self.profile.name)
        # Every caller runs or exports the plan at once, on the values placed here. Bias grids
        # depend on the bias values, so the plan is built again when they changed.
        if refit and modes and self.refit is not None:
            changed = place(self.executor, self._refit_values(modes, points, ranges))
        else:
            changed = self.fixed.place_values(plan, self.executor)
        if changed:
            plan = build_plan(points, ranges, self.executor.weights, self.profile.name)
        return self.fixed.overlay(plan)

    def _refit_values(
        self, modes: Mapping[str, str], points: QuantPoints, ranges: Mapping[str, Range]
    ) -> dict[str, np.ndarray]:
        """The fixed values corrected for this plan's own noise (cached per assignment): bias
        correction kept on all-int8 corrects the int8 noise of every layer above, and on a
        candidate that promotes some of them it over-corrects (picodet on hailo8: promotions
        up to 3.7x stalled at 6.6 dB output SNR, mAP 0.49-0.51, on the all-int8 point's biases;
        the 1.15x point with its own correction: 7.29 dB, mAP 0.586)."""
        assert self.fixed is not None and self.refit is not None
        key = modes_key(modes)
        found = self._refits.get(key)
        if found is None:
            before = {name: value.before for name, value in self.fixed.values.items()}
            place(self.executor, before)
            start = build_plan(points, ranges, self.executor.weights, self.profile.name)
            made = self.refit(self.fixed.overlay(start))
            found = self._refits[key] = {n: made.get(n, v) for n, v in before.items()}
        return found

    def _grid(self, bits: int) -> int:
        """The calibrated grid a format's ranges come from: its own, calibrated when a plan
        first needs it where the planner can calibrate; else the 8-bit grid's ranges."""
        if bits not in self.ranges and bits in SEARCH_GRIDS and self.extend is not None:
            self.ranges[bits] = {}
        return bits if bits in self.ranges else 8

    def _fill(self, grids: Mapping[str, int]) -> None:
        """Tensors the grids were not calibrated for (a mode that un-shares a range)."""
        for bits in set(grids.values()):
            missing = [n for n, b in grids.items() if b == bits and n not in self.ranges[bits]]
            if missing and self.extend is not None:
                self.ranges[bits].update(self.extend(bits, missing))


@dataclass
class Setup:
    path: Path
    planner: Planner
    feeds: Sequence[Feed]
    units: list[Unit]
    rules: Rules
    costs: CostTable
    context_key: str
    int8: QuantPlan  # the all-int8 plan (after the fixes the search kept)
    session: Session
    scorer: TaskScorer | None = None  # the task metric, once the oracle is built
    fix_trial: FixTrialResult | None = None  # the fixes kept on all-int8
    # When the command began (before the model was loaded): search.json's `seconds` is wall
    # time from here, set-up and export included.
    started: float = field(default_factory=time.perf_counter)

    @property
    def profile(self) -> TargetProfile:
        return self.planner.profile

    @property
    def executor(self) -> Executor:
        return self.planner.executor

    def plan_for(self, modes: Mapping[str, str], refit: bool = True) -> QuantPlan:
        return self.planner.plan_for(modes, refit)

    def all16(self) -> State:
        return self.rules.closure((u, max(self.rules.levels[u])) for u in self.rules.units)


def check_options(opts: SearchOptions) -> None:
    get_strategy(opts.strategy)
    get_cost_model(opts.cost_model)
    if opts.cost_model == "imported" and opts.cost_table is None:
        raise UserError("the imported cost model needs a table", "pass --cost-table times.csv")
    if opts.max_drop is not None and (opts.data is None or opts.task is None):
        raise UserError("--max-drop needs evaluation data", "pass --data FOLDER and --task TASK")
    if (opts.task is None) != (opts.data is None):
        given, missing = ("--task", "--data") if opts.data is None else ("--data", "--task")
        raise UserError(f"{given} needs {missing}", f"pass {missing} too, or neither")
    if opts.max_evals < 2:
        raise UserError("--max-evals must be at least 2", "the float model and int8 need one each")
    if opts.engine not in (None, *ENGINES):
        raise UserError(f"unknown engine {opts.engine!r}", f"pick one of: {', '.join(ENGINES)}")
    profile = get_profile(opts.target)
    refusal = simulation_refusal(profile) if profile.vendor != ORT else None
    if opts.engine == "onnxruntime" and refusal is not None:
        raise UserError(
            f"{refusal}: its candidates cannot be scored in ONNX Runtime",
            "use --engine emulator (the default there)",
        )


def metric_engine(opts: SearchOptions) -> str:
    """Where full evaluations run: the export in ONNX Runtime where that is the target, the
    plan's ONNX simulation where the profile says the vendor's simulator is ONNX Runtime."""
    return opts.engine if opts.engine is not None else get_profile(opts.target).default_engine()


def prepare_search(
    path: Path,
    opts: SearchOptions,
    say: Say | None = None,
    progress: Progress | None = None,
    calibrated: bool = True,
) -> Setup:
    """Units, rules and costs; with `calibrated`, ranges on every activation grid too (without,
    plans use placeholder ranges: enough for closures and costs, as `--explain` needs)."""
    started = time.perf_counter()
    graph = search_graph(opts.fix_settings(), opts.fixes, opts.try_fixes, path)
    session = open_session(path, opts, opts.run_dir, graph=graph, read_calibration_set=calibrated)
    if calibrated:  # `--optimize`'s graph passes, kept only where they add no output noise
        session = guard_passes(session, path, opts, None, say, progress)
    setup = search_setup(session, opts, say, progress, calibrated)
    setup.started = started
    return setup


def search_setup(
    session: Session,
    opts: SearchOptions,
    say: Say | None = None,
    progress: Progress | None = None,
    calibrated: bool = True,
) -> Setup:
    """The search's view of `session`: a planner over its calibration grids, units, costs."""
    model, executor, profile = session.model, session.executor, session.profile
    base = Assignment(target=profile.name, default=profile.default_mode)
    points = quantization_points(model, base, profile)
    feeds: Sequence[Feed] = session.feeds if calibrated else []
    context = _context_key(session.path, feeds, opts, model) if calibrated else "uncalibrated"
    if calibrated:
        ranges = _ranges(session, points, say, progress)
        planner = Planner(profile, model, executor, ranges, _extender(session, progress))
    else:
        names = [n for n, f in points.activations.items() if isinstance(f, IntFormat)]
        planner = Planner(profile, model, executor, {8: dict.fromkeys(names, (0.0, 1.0))})
    int8 = planner.plan_for({})
    units = find_units(model, executor, int8, profile)
    sized = _sized(session.path, model, feeds, opts)
    if sized is not model:
        units = sized_like(units, sized)
    rules = build_rules(units, profile, element_counts(sized), lower=opts.searches_down())
    costs = _cost_table(rules, profile, opts)
    return Setup(session.path, planner, feeds, units, rules, costs, context, int8, session)


def _sized(path: Path, model: ir.Model, feeds: Sequence[Feed], opts: SearchOptions) -> ir.Model:
    """`model`, or where its inputs have dynamic dimensions, the model prepared again with the
    first sample's input shapes: the cost model needs sizes (only costs read this copy)."""
    dynamic = [v for v in model.graph.inputs if v.shape is None or not v.shape.is_static()]
    if not dynamic or not feeds:
        return model
    first = feeds[0]
    shapes = {v.name or "": list(np.shape(first[v.name or ""])) for v in model.graph.inputs}
    return prepare(path, {**shapes, **(opts.input_shapes or {})}, batch=1).model


def _context_key(path: Path, feeds: Sequence[Feed], opts: SearchOptions, model: ir.Model) -> str:
    digest = hashlib.sha256(hashlib.sha256(path.read_bytes()).digest())
    for feed in feeds:
        for name in sorted(feed):
            digest.update(np.ascontiguousarray(feed[name]).tobytes())
    # The evaluation folder by its absolute path: `--data pages` and `--data /abs/pages` are
    # one set (picodet: a relative and an absolute path measured the units' noise twice).
    data = str(Path(opts.data).resolve()) if opts.data is not None else None
    settings = [opts.target, opts.method, opts.percentile, opts.samples, data]
    settings += [opts.task, opts.eval_limit, opts.sensitivity_samples, sorted(opts.task_options)]
    # Graph passes change what every candidate measures (an unoptimized search keeps its key).
    enabled = search_graph(opts.fix_settings(), opts.fixes, opts.try_fixes, path).model_dump()
    if any(enabled.values()):
        settings.append(sorted(name for name, on in enabled.items() if on))
    if metric_engine(opts) != "emulator":  # the emulator's searches keep their keys
        settings.append(f"engine={metric_engine(opts)}")
    # Outputs compared along an axis other than 1 measure every SNR anew (other models keep
    # their keys, and the noise and SNRs cached under them).
    moved = sorted((n, a) for n, a in channel_axes(model.graph.outputs).items() if a is not None)
    if moved:  # channel_axes names an axis only where it is not 1
        settings.append(f"channel-axes={moved}")
    digest.update(json.dumps(settings, default=str).encode())
    return digest.hexdigest()[:16]


def _ranges(
    session: Session, points: QuantPoints, say: Say | None, progress: Progress | None
) -> dict[int, dict[str, tuple[float, float]]]:
    """Clip ranges of every calibrated activation on each activation grid the profile has,
    from the session's calibrations (a grid already calibrated in the folder is reused)."""
    profile = session.profile
    names = list(points.calibration_targets())
    result = {}
    for bits in sorted(_eager_grids(profile)):
        targets = dict.fromkeys(names, profile.activation_format(bits))
        before = session.calibrations.passes
        result[bits] = session.calibrations.ranges_for(targets, progress)
        if session.calibrations.passes > before:
            _say(say, f"calibrated {len(session.feeds)} samples on the {bits}-bit grid")
    return result


def _eager_grids(profile: TargetProfile) -> set[int]:
    """The grids every search plans on: 8-bit and the promoted mode's (a 16-bit grid is not
    calibrated up front where promoted layers run in float, as on ort-cpu-fast)."""
    rules = profile.search
    modes = [get_mode(m) for m in (profile.default_mode, rules.promote, rules.output_mode) if m]
    wanted = {b for m in modes for b in (m.act_in_bits, m.act_out_bits) if b is not None}
    return {8} | (wanted & set(profile.activation_formats) & SEARCH_GRIDS)


def _extender(
    session: Session, progress: Progress | None
) -> Callable[[int, list[str]], dict[str, tuple[float, float]]]:
    def extend(bits: int, names: list[str]) -> dict[str, tuple[float, float]]:
        fmt = session.profile.activation_format(bits)
        return session.calibrations.ranges_for(dict.fromkeys(names, fmt), progress)

    return extend


def _cost_table(rules: Rules, profile: TargetProfile, opts: SearchOptions) -> CostTable:
    return get_cost_model(opts.cost_model).table(rules, profile, opts.cost_table)


# --- explain ------------------------------------------------------------------------------------


class Explanation(BaseModel):
    unit: str
    op_type: str
    modes: dict[str, str]
    cost: float
    cost_delta: float


def explain(setup: Setup, layer: str) -> Explanation:
    """The closure of promoting `layer` (a unit id or any of its nodes) and its cost."""
    unit = _find_unit(setup, layer)
    group = setup.rules.group(unit.id)
    cost = setup.costs.relative(group)
    modes = setup.rules.node_modes(group)
    return Explanation(
        unit=unit.id, op_type=unit.op_type, modes=modes, cost=cost, cost_delta=cost - 1
    )


def _find_unit(setup: Setup, layer: str) -> Unit:
    for unit in setup.units:
        if layer == unit.id or layer in unit.nodes:
            return unit
    import difflib

    names = [u.id for u in setup.units]
    close = difflib.get_close_matches(layer, names, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else "run `quantlens inspect` for layer ids"
    raise UserError(f"no searchable layer {layer!r} in the model", hint)


# --- the search ---------------------------------------------------------------------------------


@dataclass
class _Run:
    setup: Setup
    opts: SearchOptions
    oracle: Oracle
    report: SearchReport
    # Measured once the all-int8 point is settled; the first predicts (`noise_model`), each
    # proposes candidates.
    noise: list[NoiseModel] | None = None
    candidates: dict[str, Candidate] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    meter: LatencyMeter | None = None

    @property
    def noise_models(self) -> list[NoiseModel]:
        assert self.noise is not None, "the units' noise is measured after the fix trial"
        return self.noise

    @property
    def noise_model(self) -> NoiseModel:
        return self.noise_models[0]

    def point(self, candidate: Candidate, full: bool = False) -> SearchPoint:
        """Verify `candidate` (proxy SNR, and the task metric when `full`) and record it."""
        modes = self.setup.rules.node_modes(candidate.state)
        key = modes_key(modes)
        found = self.report.point(key)
        if found is None:
            found = SearchPoint(
                key=key,
                label=candidate.label,
                strategy=candidate.strategy,
                promoted=candidate.promoted,
                lowered=candidate.lowered,
                modes=modes,
                cost=round(candidate.cost, 5),
                # NaN: no prediction (all-int8 before the units' noise is measured)
                predicted_snr_db=None
                if math.isnan(candidate.predicted_nsr)
                else _rounded(nsr_to_db(candidate.predicted_nsr)),
            )
            self.report.points.append(found)
            self.candidates[key] = candidate
        if found.snr_db is None:
            found.snr_db = _rounded(self.oracle.snr(modes))
            found.verified = True
        if full and found.metric is None:
            found.metric = self.oracle.metric(modes)
        self.checkpoint()
        return found

    def checkpoint(self) -> None:
        self.report.full_evaluations = len(self.oracle.full_done)
        self.report.search_seconds = round(time.perf_counter() - self.started, 2)
        self.report.seconds = round(time.perf_counter() - self.setup.started, 2)
        self.report.pareto = pareto(self.report.points)
        folder = RunFolder(self.opts.run_dir)
        folder.write(self.report)
        best = self.report.point(self.report.chosen)
        if best is not None:
            folder.write(self.assignment(best))

    def assignment(self, point: SearchPoint) -> Assignment:
        profile = self.setup.profile
        modes = point.modes
        return Assignment(target=profile.name, default=profile.default_mode, layers=modes)  # type: ignore[arg-type]


def pareto(points: Sequence[SearchPoint]) -> list[str]:
    """Verified points no other point beats on both cost and quality (metric, else SNR)."""
    use_metric = any(p.metric is not None for p in points)

    def quality(p: SearchPoint) -> float | None:
        return p.metric if use_metric else p.snr_db

    scored = [p for p in points if quality(p) is not None]
    scored.sort(key=lambda p: (p.cost, -(quality(p) or 0.0)))
    front, best = [], -math.inf
    for p in scored:
        q = quality(p)
        assert q is not None
        if q > best:
            front.append(p.key)
            best = q
    return front


def run_search(
    setup: Setup, opts: SearchOptions, say: Say | None = None, progress: Progress | None = None
) -> SearchReport:
    """Search on `setup`; search.json and the chosen assignment.json go to run_dir (exporting
    the chosen point is the quantize stage's job, see `quantlens.pipeline.flows`)."""
    check_options(opts)
    cache = _fresh_cache(opts, setup.context_key)
    meter = _meter(setup, opts, cache)
    notes = _plan_with_measured_costs(setup, opts, meter, say) if meter is not None else []
    noise = None
    if opts.scale is not None:
        # Before the oracle's workers take the cluster's CPUs (the units' farm would wait for
        # them forever); no fix is tried on workers, so all-int8 is already settled.
        noise = _noise_models(setup, opts, cache, say, progress)
    oracle, farm = _oracle(setup, opts, cache, progress)
    run = _Run(setup, opts, oracle, _new_report(setup, opts), noise)
    run.meter = meter
    run.report.notes.extend(notes)
    try:
        _search(run, say, progress)
    except BudgetExhausted as exc:
        run.report.notes.append(f"stopped early: {exc}; the best point so far is chosen")
    finally:
        if farm is not None:
            farm.close()
    if run.report.chosen is None:
        run.report.notes.append("no point was evaluated before the stop: nothing is chosen")
    gain = cheapest_gain(run.report)
    run.report.cheapest_gain = gain.key if gain is not None else None
    run.report.finished = True
    run.checkpoint()
    return run.report


def _fresh_cache(opts: SearchOptions, context_key: str) -> Path:
    """The oracle's folder for `context_key`; without `--resume`, emptied of evaluations (the
    ranges and noise depend only on the context and stay)."""
    cache = opts.run_dir / RunFolder.SEARCH_CACHE / context_key
    if not opts.resume:
        for stale in [*cache.glob("*.json"), *(cache / "latency").glob("*")]:
            if not stale.name.startswith(("ranges", "noise")):
                stale.unlink()
    return cache


def cheapest_gain(report: SearchReport) -> SearchPoint | None:
    """The cheapest scored point whose metric beats every all-int8 point (plain and each fixed
    one, i.e. the best free fix), when the chosen point is dearer: the front's first step above
    what fixes alone give, for a user whose budget is below the goal's price (picodet on hailo8:
    the goal asked for 2x; a 1.10x point scored mAP 0.559 against 0.458 for the best fix)."""
    chosen = report.point(report.chosen)
    best = _best_int8_metric(report)
    if chosen is None or best is None:
        return None
    int8 = {p.key for p in report.points if p.key == report.baseline or _other_int8(p.key)}
    better = [
        p
        for p in report.points
        if p.metric is not None and p.metric > best and p.cost < chosen.cost and p.key not in int8
    ]
    return min(better, key=lambda p: (p.cost, -(p.metric or 0.0)), default=None)


def chosen_assignment(
    report: SearchReport, profile: TargetProfile, key: str | None = None
) -> Assignment | None:
    """The assignment of the report's chosen point, or of the point `key` (None when there is
    no such point)."""
    point = report.point(key or report.chosen)
    if point is None:
        return None
    return Assignment(target=profile.name, default=profile.default_mode, layers=point.modes)  # type: ignore[arg-type]


def record_measured_cost(
    report: SearchReport, folder: RunFolder, chosen: float, base: float
) -> None:
    """The chosen point's cost as ONNX Runtime latency of its export against the all-int8 one."""
    point = report.point(report.chosen)
    assert point is not None
    report.notes.append(
        f"measured in ONNX Runtime here: chosen {chosen * 1e3:.2f} ms vs all-int8 "
        f"{base * 1e3:.2f} ms ({chosen / base:.3f}x; the analytic model said {point.cost:.3f}x)"
    )
    point.cost = round(chosen / base, 5)
    folder.write(report)


def _new_report(setup: Setup, opts: SearchOptions) -> SearchReport:
    groups = []
    for unit in setup.units:
        group = setup.rules.group(unit.id)
        groups.append(
            GroupInfo(
                unit=unit.id,
                op_type=unit.op_type,
                modes=setup.rules.node_modes(group),
                cost_delta=round(setup.costs.relative(group) - 1.0, 6),
            )
        )
    goal = SearchGoal(max_drop=opts.max_drop, min_snr=opts.min_snr, max_cost=opts.max_cost)
    return SearchReport(
        engine=metric_engine(opts),
        model=str(setup.path.resolve()),
        target=setup.profile.name,
        cost_model=opts.cost_model,
        strategy=opts.strategy,
        goal=goal,
        baseline=modes_key({}),
        groups=groups,
    )


def _noise_models(
    setup: Setup, opts: SearchOptions, cache: Path, say: Say | None, progress: Progress | None
) -> list[NoiseModel]:
    """The units' isolated noise; on a fixed all-int8 whose fixes changed values (corrected
    biases), first what each unit's promotion removes from that point (`search.promotion`).
    Each is blind to something on such a point: isolated runs count a corrected bias as noise,
    single promotions on the point's biases miss units whose gain shows only with a candidate's
    own correction (picodet on hailo8: the promotion model's points scored best up to 1.15x,
    the isolated model's from 2x). The strategy runs on each; verification decides."""
    models = []
    fixed = setup.planner.fixed
    if fixed is not None and fixed.values and opts.scale is None:
        feeds = setup.feeds[: opts.sensitivity_samples]
        variants = sum(len(setup.rules.up_levels(u.id)) for u in setup.units)
        _say(say, f"measuring what each of {variants} promotions removes from the fixed int8")
        found, residual = promotion_noise(setup, feeds, cache, progress)
        lowered = _lower_noise(setup, opts, cache, found, say, progress)
        models.append(NoiseModel(lowered, setup.rules, residual, label="promotion noise"))
    isolated = _unit_noise(setup, opts, cache, say, progress)
    models.append(
        NoiseModel(_lower_noise(setup, opts, cache, isolated, say, progress), setup.rules)
    )
    return models


def _unit_noise(
    setup: Setup, opts: SearchOptions, cache: Path, say: Say | None, progress: Progress | None
) -> dict[str, UnitNoise]:
    fixed = setup.planner.fixed
    values = fixed.unit_values(setup.units, setup.executor) if fixed is not None else {}
    # Measured on the fixed values: a cache from before that rule would be read as this one.
    path = cache / ("noise-fixed-values.json" if values else "noise.json")
    cached = _cached_noise(path)
    if cached is not None and set(cached) == {unit.id for unit in setup.units}:
        return cached
    feeds = setup.feeds[: opts.sensitivity_samples]
    _say(say, f"measuring the isolated noise of {len(setup.units)} units on {len(feeds)} samples")
    if opts.scale is not None:
        found = _unit_noise_on_workers(setup, opts.scale, feeds)
    elif fixed is not None and values:
        # The float run on the float model's values and each unit's weight-only run on its fixed
        # ones, so a unit's noise is what it leaves after its fix (picodet on hailo8: bias
        # correction took all-int8 from -6.04 to 2.54 dB, while the units' noise, measured with
        # the corrected biases on both sides, still predicted -5.96 dB and the search bought
        # 16-bit layers for a mean shift the fix had already removed).
        with fixed.unfixed(setup.executor):
            found = unit_noise(setup.executor, setup.int8, setup.units, feeds, progress, values)
    else:
        found = unit_noise(setup.executor, setup.int8, setup.units, feeds, progress)
    write_text_atomic(path, json.dumps({k: vars(v) for k, v in found.items()}))
    return found


def _lower_noise(
    setup: Setup,
    opts: SearchOptions,
    cache: Path,
    noise: dict[str, UnitNoise],
    say: Say | None,
    progress: Progress | None,
) -> dict[str, UnitNoise]:
    """Each lowerable unit's weight noise on the 4-bit grid, measured like the upward moves'."""
    lowerable = [u for u in setup.units if setup.rules.can_lower(u.id)]
    path = cache / "noise-w4.json"
    if not lowerable:
        return noise
    if path.is_file():
        weight4 = json.loads(path.read_text())
    else:
        feeds = setup.feeds[: opts.sensitivity_samples]
        _say(say, f"measuring the 4-bit weight noise of {len(lowerable)} units")
        plan4 = setup.plan_for(setup.rules.node_modes(setup.rules.lowest()))
        weight4 = weight4_noise(setup.executor, plan4, lowerable, feeds, progress)
        write_text_atomic(path, json.dumps(weight4))
    return {k: replace(v, weight4=weight4.get(k)) for k, v in noise.items()}


def _unit_noise_on_workers(
    setup: Setup, scale: ScaleOptions, feeds: Sequence[Feed]
) -> dict[str, UnitNoise]:
    """`unit_noise` with the units in groups on Ray actors (one sample a batch, as there)."""
    from quantlens.scale.isolated import isolated_farm  # imports Ray

    farm = isolated_farm(scale, setup.executor, setup.int8, setup.units, feeds, 1, 1 << 30)
    try:
        found = farm.run(setup.units, ("weight", "activation"))
    finally:
        farm.close()
    return {
        u.id: UnitNoise(found.noise[u.id]["weight"].nsr, found.noise[u.id]["activation"].nsr)
        for u in setup.units
    }


def _cached_noise(path: Path) -> dict[str, UnitNoise] | None:
    """The noise cache of a resumed search; a damaged one is measured again, not trusted."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        found = {str(k): UnitNoise(**v) for k, v in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    numbers = all(
        isinstance(x, (int, float)) for n in found.values() for x in (n.weight, n.activation)
    )
    return found if numbers else None


def _meter(setup: Setup, opts: SearchOptions, cache: Path) -> LatencyMeter | None:
    if not get_cost_model(opts.cost_model).measures_candidates:
        return None
    settings = LatencySettings(rounds=opts.measure_rounds, warmup=3)
    feeds = setup.feeds[:2]
    return LatencyMeter(setup.planner.model, setup.plan_for, feeds, cache / "latency", settings)


def _plan_with_measured_costs(
    setup: Setup, opts: SearchOptions, meter: LatencyMeter, say: Say | None
) -> list[str]:
    """Replace the planning table by each unit's move timed in ONNX Runtime."""
    _say(say, f"timing each unit's move in ONNX Runtime (up to {opts.measure_budget_s:g} s)")
    found = measured_costs(setup.rules, setup.costs, meter, opts.measure_budget_s)
    setup.costs = found.table
    notes = measured_notes(found, meter.settings, len(setup.units))
    if setup.profile.vendor != ORT:
        notes.append(f"{setup.profile.name} does not run QDQ models: ORT latency is a proxy")
    return notes


def measured_notes(found: MeasuredTable, settings: LatencySettings, units: int) -> list[str]:
    """What `search.json` says about a measured cost table: method, noise floor, which moves
    were timed, which made the model faster, and the boundaries priced by pairs."""
    notes = [
        f"cost = ONNX Runtime CPU latency of each export over the all-int8 export's "
        f"({settings.threads} threads, {settings.rounds} interleaved rounds a batch, median of "
        f"the per-round ratios, more batches where its interval is wide); all-int8 against "
        f"itself differs by {found.noise_floor:.1%} (the noise floor here)",
        f"planned with measured moves of {len(found.measured)} of {units} units (moves within "
        f"the noise floor keep the analytic estimate); the others' analytic estimates scaled by "
        f"{found.scale:.3f}",
    ]
    if found.faster:
        notes.append(f"promoting these units made the model faster: {', '.join(found.faster)}")
    if found.boundaries:
        priced = ", ".join(f"{a}|{b} {cost:+.3f}" for a, b, cost in found.boundaries)
        notes.append(f"precision boundaries priced by timing neighbours together: {priced}")
    return notes


def _oracle(
    setup: Setup, opts: SearchOptions, cache: Path, progress: Progress | None
) -> tuple[Oracle, SearchFarm | None]:
    """The oracle, and with `opts.scale` the workers its evaluations run on (close them)."""
    proxy = _Proxy(setup, setup.feeds[: opts.samples])
    scorer = _scorer(setup, opts)
    setup.scorer = scorer
    farm = None
    if opts.scale is not None:
        farm = _farm(setup, opts.scale, proxy.feeds, scorer)
    name = scorer.primary if scorer is not None else None
    evaluators = Evaluators(proxy, _metric(setup, scorer, opts, cache, progress), name)
    if farm is not None:
        evaluators.proxy_many = partial(_snr_many, farm, setup)
    return Oracle(cache, evaluators, opts.time_budget, opts.max_evals), farm


@dataclass
class _Proxy:
    """A candidate's balanced output SNR against the float model's outputs on a few samples;
    those are computed once, before any fix changes the float weights (bias correction does)."""

    setup: Setup
    feeds: Sequence[Feed]
    references: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def prime(self) -> None:
        if not self.references:  # never when the workers compute them
            with torch.inference_mode():
                self.references.extend(self.setup.executor.run(feed) for feed in self.feeds)

    def __call__(self, modes: Mapping[str, str]) -> float:
        self.prime()
        plan = self.setup.plan_for(modes)
        return output_noise(self.setup.executor, plan, self.feeds, self.references).snr_db


def _farm(
    setup: Setup, scale: ScaleOptions, feeds: Sequence[Feed], scorer: TaskScorer | None
) -> SearchFarm:
    from quantlens.scale.search import search_farm  # imports Ray

    files = [path for _, path in scorer.files] if scorer is not None else []
    spec = scorer.prepared.spec if scorer is not None else None
    farm = search_farm(scale, setup.executor, feeds, files, spec)
    if scorer is not None:
        scorer.remote = farm.outputs
    return farm


def _snr_many(
    farm: SearchFarm, setup: Setup, candidates: Sequence[Mapping[str, str]]
) -> Iterator[float]:
    return farm.snr_many([setup.plan_for(modes) for modes in candidates])


def _scorer(setup: Setup, opts: SearchOptions) -> TaskScorer | None:
    if opts.data is None or opts.task is None:
        return None
    eval_opts = EvalOptions(
        limit=opts.eval_limit,
        input_shapes=opts.input_shapes,
        spec=opts.spec,
        spec_file=opts.spec_file,
        task_options=dict(opts.task_options),
    )
    return TaskScorer(setup.path, opts.data, opts.task, setup.executor, eval_opts)


def _metric(
    setup: Setup,
    scorer: TaskScorer | None,
    opts: SearchOptions,
    cache: Path,
    progress: Progress | None,
) -> Callable[[Mapping[str, str]], float] | None:
    if scorer is None:
        return None
    scored: Callable[[Mapping[str, str]], float]
    if metric_engine(opts) == "onnxruntime":
        scored = partial(_onnxruntime_metric, setup, scorer, cache / "qdq", progress)
    else:

        def scored(modes: Mapping[str, str]) -> float:
            plan = None if dict(modes) == FLOAT else setup.plan_for(modes)
            return scorer.score(plan, progress)[scorer.primary]

    def metric(modes: Mapping[str, str]) -> float:
        value = scored(modes)
        samples = json.dumps(scorer.last_sample_scores)
        write_text_atomic(cache / f"samples-{modes_key(modes)}.json", samples)
        return value

    return metric


def _sample_scores(cache: Path, modes: Mapping[str, str]) -> dict[str, float]:
    """The per-sample scores a full evaluation of `modes` left in the cache ({}: none)."""
    try:
        found = json.loads((cache / f"samples-{modes_key(modes)}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in found.items()} if isinstance(found, dict) else {}


def metric_noise(
    float_scores: Mapping[str, float], int8_scores: Mapping[str, float], gap: float
) -> MetricNoise | None:
    """All-int8's gap to float against the sampling noise of the pair's per-sample scores
    (None: fewer than two samples scored in both)."""
    common = sorted(set(float_scores) & set(int8_scores))
    if len(common) < 2:
        return None
    diffs = np.array([int8_scores[n] - float_scores[n] for n in common], dtype=np.float64)
    half = 2.0 * float(diffs.std(ddof=1)) / math.sqrt(len(common))
    return MetricNoise(
        samples=len(common),
        gap=round(gap, 6),
        half_width=round(half, 6),
        within_noise=0.0 < gap <= half,
    )


def _stops_at_noise(run: _Run, base: SearchPoint) -> bool:
    """Whether all-int8's gap to float is too small for this evaluation set to tell any point
    from it (recorded in the report either way). Only under the default goal (recover most of
    the gap): an explicit --max-drop is searched, with a warning; never when a point below
    int8's cost is asked for."""
    report, opts = run.report, run.opts
    if report.float_metric is None or base.metric is None:
        return False
    cache = run.oracle.folder
    gap = report.float_metric - base.metric
    noise = metric_noise(_sample_scores(cache, FLOAT), _sample_scores(cache, {}), gap)
    report.metric_noise = noise
    if noise is None or not noise.within_noise or not opts.noise_stop:
        return False
    if opts.searches_down() or (opts.max_cost is not None and opts.max_cost < 1.0):
        return False
    if opts.max_drop is not None:  # the user's own goal on this set: searched, with a warning
        if gap > opts.max_drop:
            report.notes.append(
                f"all-int8's gap to float ({gap:.4f}) is within the evaluation set's noise "
                f"(+/-{noise.half_width:.4f}): a point that meets --max-drop here may not on "
                "other data"
            )
        return False
    report.notes.append(
        f"stopped early: all-int8's gap to float ({gap:.4f}) is within the evaluation set's "
        f"noise (+/-{noise.half_width:.4f}, 2 standard errors of {noise.samples} paired "
        "per-sample scores): no point can be shown to recover it on this set; all-int8 is "
        "kept (more evaluation samples narrow the noise; --no-noise-stop searches anyway)"
    )
    return True


def _search(run: _Run, say: Say | None, progress: Progress | None) -> None:
    setup, opts, report = run.setup, run.opts, run.report
    full = run.oracle.has_metric
    if full:
        report.metric_name = run.oracle.evaluators.metric_name
        _say(say, "scoring the float model")
        report.float_metric = run.oracle.metric(FLOAT)
    int8 = Candidate({}, "all-int8", "baseline", [], math.nan, 1.0)
    base = run.point(int8, full=full)
    report.chosen = base.key
    if full and (_stops_at_noise(run, base) or _int8_suffices(run, base)):
        return
    variants = trial_variants(opts.fix_settings(), opts.fixes, opts.try_fixes)
    if variants:
        plain, base = base, _try_fixes(run, variants, base, say, progress)
        if full and base is not plain and _int8_suffices(run, base, plain):
            return
    if run.noise is None:  # measured on the all-int8 point the search goes on from
        run.noise = _noise_models(setup, opts, run.oracle.folder, say, progress)
    base.predicted_snr_db = _rounded(nsr_to_db(run.noise_model.nsr({})))
    max_cost = opts.max_cost or math.inf
    candidates = _strategy(run, max_cost)
    high = setup.all16()
    top = Candidate(high, _top_label(setup), "baseline", list(high), run.noise_model.nsr(high), 1.0)
    top.cost = setup.costs.relative(high)
    if top.cost <= max_cost:
        candidates.append(top)  # the last resort when no cheaper point meets the goal
    _say(say, f"{opts.strategy}: {len(candidates)} candidates; verifying their output SNR")
    # On workers, every candidate's SNR at once (the cache skips those already known).
    run.oracle.prefetch_snr([setup.rules.node_modes(c.state) for c in candidates])
    verified = []
    for done, candidate in enumerate(candidates):  # each a full pass (and a bias sweep)
        verified.append(run.point(candidate))
        if progress is not None:
            progress(done + 1, len(candidates))
    if run.meter is not None:
        _say(say, f"timing {len(verified) + 1} candidate exports in ONNX Runtime")
        others = [p for p in report.points if _other_int8(p.key)]
        for point in [base, *others, *verified]:
            _measure(run, point)
    base_ok = base.cost <= max_cost
    admissible = [p for p in verified if p.cost <= max_cost and p.key != base.key]
    if base_ok:
        # A dearer point must beat all-int8's output SNR to be worth scoring; a cheaper one
        # (measured costs, 4-bit weights) may be worth it at a lower SNR: the goal judges it
        # (pplcnet on ort-cpu-fast: 0.849x and 0.790x points within 0.05 and 1.7 dB of int8's
        # SNR were dropped here).
        floor = base.snr_db or -math.inf
        admissible = [
            p for p in admissible if p.cost < base.cost or (p.snr_db or -math.inf) > floor
        ]
        if len(run.noise_models) > 1:
            admissible = _rising_snr(admissible, base.cost)
    else:
        report.notes.append(f"the budget {max_cost:g}x is below all-int8's: int8 is not a choice")
        cheapest = setup.costs.relative(setup.rules.lowest())
        if cheapest > max_cost:  # says why no candidate exists, in the search's own numbers
            report.notes.append(
                f"no state fits the budget: the cheapest the target's rules allow (every unit "
                f"that can go below int8 there) costs {cheapest:.4f}x"
            )
    if full:
        _bisect_metric(run, admissible, base, base_ok)
    else:
        _pick_by_snr(run, admissible)
    report.all16 = run.point(top).key
    if run.meter is not None:
        _measure(run, run.point(top))
    if full:
        run.point(top, full=True)


def _rising_snr(points: list[SearchPoint], cost: float) -> list[SearchPoint]:
    """From `cost` up, only points that measure above every cheaper one: two noise models'
    lists interleave by cost, and a bisection along them assumes quality rises with cost
    (picodet on hailo8: it scored three promotion-noise points at 1.3-3.7x below the goal, never
    the isolated model's 2x point that met it, and chose 5x)."""
    kept, best = [], -math.inf
    for point in sorted(points, key=lambda p: p.cost):
        snr = point.snr_db if point.snr_db is not None else -math.inf
        if point.cost < cost:
            kept.append(point)
        elif snr > best:
            kept.append(point)
            best = snr
    return kept


def _top_label(setup: Setup) -> str:
    """The every-unit-promoted point: all-16-bit, or all-fp32 where the target promotes to
    float (ort-cpu-fast, where that is the float model)."""
    return "all-fp32" if setup.profile.search.promote == "fp32" else "all-16-bit"


def _onnxruntime_metric(
    setup: Setup,
    scorer: TaskScorer,
    folder: Path,
    progress: Progress | None,
    modes: Mapping[str, str],
) -> float:
    """The task metric of `modes` run by ONNX Runtime: on an ONNX Runtime target its QDQ export,
    which is what ships (ONNX Runtime runs graphs of many small ops several times faster than
    the emulator; issue #22: `check` timed 0.65 s in ORT against 3.56 s in the emulator); on a
    chip, the plan's ONNX simulation, with the float kernels a simulator on ONNX Runtime uses."""
    if dict(modes) == FLOAT:
        return score_in_onnxruntime(scorer, setup.path, progress)[scorer.primary]
    plan, path = setup.plan_for(modes), folder / f"{modes_key(modes)}.onnx"
    chip = setup.profile.vendor != ORT
    write = export_simulation if chip else export_qdq
    path = write(setup.session.model, plan, path)
    try:
        return score_in_onnxruntime(scorer, path, progress, optimize=not chip)[scorer.primary]
    finally:
        path.unlink(missing_ok=True)  # a candidate's export is as large as the model


@dataclass
class _Tried:
    """One set of fixes applied to all-int8 and scored in its own oracle context."""

    trial: FixTrialResult
    oracle: Oracle
    snr: float
    metric: float | None
    after: dict[str, np.ndarray]  # the float weights its fixes left, to apply them again

    @property
    def outcome(self) -> tuple[float | None, float | None]:
        return self.metric, self.snr

    def names(self) -> str:
        return " + ".join(r.name for r in self.trial.kept())


def _try_fixes(
    run: _Run,
    variants: Sequence[FixSettings],
    plain: SearchPoint,
    say: Say | None,
    progress: Progress | None,
) -> SearchPoint:
    """Fix all-int8 with each set in turn (stopping once one meets the goal) and go on from the
    best fixed point when it scores at least as well as the plain one (the task metric where
    there is one, then the output SNR); returns the all-int8 point the search goes on from."""
    report = run.report
    if run.opts.scale is not None:
        report.notes.append("no fixes tried on all-int8: the workers hold the unfixed weights")
        return plain
    proxy = run.oracle.evaluators.proxy
    if isinstance(proxy, _Proxy):
        proxy.prime()  # the float references, before bias correction changes the float weights
    tried: list[tuple[FixVariant, _Tried]] = []
    records: list[FixVariant] = []
    last: FixTrialResult | None = None
    for index, settings in enumerate(variants):  # each starts from the plain point
        if index and not _affords_another_set(run):
            report.notes.append(
                f"{len(variants) - index} more set(s) of fixes not tried: the full evaluations "
                "left are kept for the candidates"
            )
            break
        oracles = {t.oracle.folder: t.oracle for _, t in tried}
        last, done = _try_variant(run, settings, oracles, say, progress)
        records.append(_variant_record(last, done))
        if done is not None:
            tried.append((records[-1], done))
            if _meets_goal(run, plain, done):
                break
    best = max((t for _, t in tried), key=lambda t: _ranked(t.outcome), default=None)
    keep = best is not None and _at_least(best.outcome, (plain.metric, plain.snr_db))
    base = _settle(run, plain, best if keep else None)
    shown = best.trial if best is not None else last
    report.fix_trial = FixTrial(
        fixes=shown.records() if shown is not None else [],
        tried=records,
        kept=keep,
        reason=_trial_reason(plain, best, keep),
        without=WITHOUT_FIXES if keep else plain.key,
        fixed=base.key if keep else plain.key,
    )
    for record, done in tried:
        if done is not best or not keep:
            report.points.append(_fixed_point(plain, done, record))
    _say(say, report.fix_trial.reason)
    run.checkpoint()
    return base


def _try_variant(
    run: _Run,
    settings: FixSettings,
    oracles: dict[Path, Oracle],
    say: Say | None,
    progress: Progress | None,
) -> tuple[FixTrialResult, _Tried | None]:
    """Apply `settings`' fixes to all-int8, score the fixed point, and undo them again."""
    setup = run.setup
    names = [n for n in POST_PLAN if getattr(settings, n)]
    _say(say, f"trying {' + '.join(names)} on all-int8 before promoting any layer")
    points = setup.session.points()
    trial = fix_int8(
        setup.executor,
        setup.int8,
        points,
        setup.feeds,
        settings,
        say,
        progress,
        run.opts.fix_budget_s,
        by_metric=run.oracle.has_metric,
    )
    kept = trial.kept()
    if not kept:
        return trial, None
    # "per-layer": promoted layers run on their values from before the fixes; "refit": every
    # candidate on its own bias correction (scores cached before either are not reused).
    label = "+".join(r.name for r in kept) + (":refit" if _refits(trial) else ":per-layer")
    suffix = hashlib.sha256(label.encode()).hexdigest()[:6]
    folder = run.opts.run_dir / RunFolder.SEARCH_CACHE / f"{setup.context_key}-fix{suffix}"
    # Two sets can keep the same fixes: the second reads the first's scores, never erases them.
    oracle = oracles.get(folder) or run.oracle.sibling(_fresh_cache(run.opts, folder.name))
    setup.planner.fixed = trial.params
    try:
        snr = oracle.snr({})
        metric = oracle.metric({}) if oracle.has_metric else None
        return trial, _Tried(trial, oracle, snr, metric, trial.weights_after(setup.executor))
    finally:  # the next set, or the plain point if the budget ran out, starts unfixed
        trial.undo(setup.executor)
        setup.planner.fixed = None


def _settle(run: _Run, plain: SearchPoint, best: _Tried | None) -> SearchPoint:
    """Apply the fixed point kept (its weights, clip ranges and weight grids) and make it the
    search's all-int8 point; None: the plain point stays."""
    if best is None:
        return plain
    setup = run.setup
    apply_fix(setup.executor, FixResult(name="fixes kept", weights=best.after))
    setup.planner.fixed = best.trial.params
    if _refits(best.trial):
        executor, feeds = setup.executor, setup.feeds
        setup.planner.refit = lambda plan: bias_correction(executor, plan, feeds).weights
    setup.fix_trial = best.trial
    setup.int8 = setup.plan_for({})
    run.oracle = best.oracle
    plain.key, plain.label = WITHOUT_FIXES, "all-int8 without fixes"
    int8 = Candidate({}, f"all-int8 + {best.names()}", "baseline", [], math.nan, 1.0)
    base = run.point(int8, full=best.metric is not None)
    run.report.chosen = base.key
    return base


def _refits(trial: FixTrialResult) -> bool:
    """Whether candidates get their own bias correction: where it is among the kept fixes."""
    return any(r.name == "bias-correction" for r in trial.kept())


def _variant_record(trial: FixTrialResult, done: _Tried | None) -> FixVariant:
    if done is None:
        return FixVariant(fixes=trial.records())
    return FixVariant(
        fixes=trial.records(),
        key=f"{WITH_FIXES}:{done.names()}",
        metric=done.metric,
        snr_db=_rounded(done.snr),
    )


def _fixed_point(plain: SearchPoint, done: _Tried, record: FixVariant) -> SearchPoint:
    """A fixed all-int8 point the search did not go on from, kept in the report."""
    point = plain.model_copy(update={"key": record.key, "label": f"all-int8 + {done.names()}"})
    point.snr_db, point.metric = _rounded(done.snr), done.metric
    point.predicted_snr_db = None
    return point


def _trial_reason(plain: SearchPoint, best: _Tried | None, keep: bool) -> str:
    if best is None:
        return "no fix changed the all-int8 point or each lowered its output SNR (undone)"
    if best.metric is not None and plain.metric is not None:
        shown = f"{best.metric:.4f} (without fixes {plain.metric:.4f})"
    else:
        shown = f"{best.snr:.2f} dB output SNR (without fixes {plain.snr_db} dB)"
    what = "the search goes on from it" if keep else "the fixes are dropped"
    return f"all-int8 + {best.names()} scores {shown}: {what}"


def _meets_goal(run: _Run, plain: SearchPoint, done: _Tried) -> bool:
    """Whether a fixed all-int8 already meets the goal (no other set need be tried)."""
    report, opts = run.report, run.opts
    if done.metric is not None and report.float_metric is not None and plain.metric is not None:
        return done.metric >= report.float_metric - _allowed_drop(run, plain.metric)
    return done.snr >= (opts.min_snr if opts.min_snr is not None else DEFAULT_MIN_SNR)


def _allowed_drop(run: _Run, int8_metric: float) -> float:
    """`--max-drop`, else 10% of the gap between float and all-int8 without fixes (none when
    all-int8 scores at or above float: the goal is then float's metric, not above it)."""
    assert run.report.float_metric is not None
    if run.opts.max_drop is not None:
        return run.opts.max_drop
    return (1 - DEFAULT_RECOVERY) * max(run.report.float_metric - int8_metric, 0.0)


def _affords_another_set(run: _Run) -> bool:
    """Whether one more fixed all-int8 leaves `RESERVED_EVALS` full evaluations to the search."""
    oracle = run.oracle
    if not oracle.has_metric or oracle.max_full is None:
        return True
    return oracle.max_full - len(oracle.full_done) - 1 >= RESERVED_EVALS


def _other_int8(key: str) -> bool:
    """An all-int8 point the search did not go on from (without fixes, or other fixes)."""
    return key == WITHOUT_FIXES or key.startswith(WITH_FIXES)


def _ranked(outcome: tuple[float | None, float | None]) -> tuple[float, float]:
    return tuple(-math.inf if v is None or math.isnan(v) else v for v in outcome)  # type: ignore[return-value]


def _at_least(
    ours: tuple[float | None, float | None], theirs: tuple[float | None, float | None]
) -> bool:
    """Metric first, output SNR on a tie (a missing value loses)."""
    for mine, other in zip(ours, theirs):
        a = -math.inf if mine is None or math.isnan(mine) else mine
        b = -math.inf if other is None or math.isnan(other) else other
        if a != b:
            return a > b
    return True


def _measure(run: _Run, point: SearchPoint) -> None:
    """The point's cost becomes its export's ONNX Runtime latency over all-int8's."""
    assert run.meter is not None
    if point.latency_ms is not None:
        return
    found = run.meter.measure(point.modes)
    point.modeled_cost = point.cost
    if point.key == run.report.baseline or _other_int8(point.key):  # all-int8: 1.0
        point.cost, point.latency_ms = 1.0, found.int8_ms
    else:
        point.cost, point.latency_ms = round(found.ratio, 5), found.ms
    run.checkpoint()


def _strategy(run: _Run, max_cost: float) -> list[Candidate]:
    setup = run.setup
    strategy = get_strategy(run.opts.strategy)
    found: list[Candidate] = []
    for model in run.noise_models:
        for candidate in strategy(setup.rules, setup.costs, model, max_cost):
            if model.label:
                candidate.label += f" ({model.label})"
            found.append(candidate)
    return found


def _bisect_metric(
    run: _Run, points: list[SearchPoint], base: SearchPoint, base_ok: bool = True
) -> None:
    """The cheapest point meeting the metric goal, by bisection along the candidates (all-int8
    itself when it is within the budget and meets the goal)."""
    report = run.report
    assert base.metric is not None
    # The gap is the plain all-int8's: a fixed all-int8 that closes enough of it is the answer.
    plain = report.point(WITHOUT_FIXES) or base
    target = _goal(run, plain)
    base_meets = base_ok and base.metric >= target
    if base_meets:  # only a point cheaper than all-int8 can beat it (measured costs)
        points = [p for p in points if p.cost < base.cost]
    if not points:
        if not base_ok:
            report.notes.append("no candidate within the budget: all-int8 is kept")
        return
    points = sorted(points, key=lambda p: p.cost)
    low, high = 0, len(points) - 1
    if _score(run, points[high]) < target:
        if not base_meets:
            report.chosen = points[high].key
            report.notes.append("no candidate within the budget meets the goal: the best is chosen")
        return
    # Chosen as soon as it is known to meet the goal: a budget that stops the bisection midway
    # keeps the cheapest point found so far, not all-int8.
    report.chosen = points[high].key
    while low < high:
        middle = (low + high) // 2
        if _score(run, points[middle]) >= target:
            high = middle
            report.chosen = points[high].key
        else:
            low = middle + 1
    _refine_gain(run, points[:high])


def _refine_gain(run: _Run, cheaper: list[SearchPoint]) -> None:
    """Bisect the points cheaper than the chosen one (by cost) for the cheapest that beats every
    all-int8 point, with the full evaluations the budget has left: the goal's bisection scores
    only the points it passes on its way to the goal (picodet on hailo8: the goal chose 2x and
    scored 1.10x above the best free fix; 1.05x, unscored, beat it too)."""
    bar = _best_int8_metric(run.report)
    if bar is None:
        return
    while (probe := gain_probe([_scored_metric(run, p) for p in cheaper], bar)) is not None:
        try:
            _score(run, cheaper[probe])
        except BudgetExhausted:  # --max-evals or --time-budget: the gain found so far stands
            return


def gain_probe(metrics: Sequence[float | None], bar: float) -> int | None:
    """The next point to score in a bisection, along points sorted by cost (`metrics`: a scored
    point's metric, None for the others), for the cheapest whose metric is above `bar`: the
    middle of the unscored points between the cheapest scored one above the bar and the
    dearest cheaper scored one. None when nothing lies between them, or when no scored point
    is above the bar: the goal's bisection scores the point just below the chosen one, so if
    the metric rises with cost, nothing cheaper is above the bar either."""
    above = [i for i, m in enumerate(metrics) if m is not None and m > bar]
    if not above:
        return None
    gain = above[0]
    below = [i for i, m in enumerate(metrics[:gain]) if m is not None]
    low = below[-1] if below else -1
    return None if gain - low <= 1 else (low + gain) // 2


def _scored_metric(run: _Run, point: SearchPoint) -> float | None:
    done = run.report.point(point.key)
    return None if done is None else done.metric


def _best_int8_metric(report: SearchReport) -> float | None:
    """The best metric of the all-int8 points (plain and each fixed one): the best free fix."""
    int8 = [p.metric for p in report.points if p.key == report.baseline or _other_int8(p.key)]
    return max((m for m in int8 if m is not None), default=None)


def _goal(run: _Run, plain: SearchPoint) -> float:
    """The metric a point must reach, recorded in the report with how it was set."""
    report = run.report
    assert report.float_metric is not None and plain.metric is not None
    drop = _allowed_drop(run, plain.metric)
    if run.opts.max_drop is None and plain.metric >= report.float_metric:
        report.notes.append(
            f"all-int8 scores {plain.metric:.4f}, at or above float's {report.float_metric:.4f}: "
            "no gap to recover, the goal is float's metric"
        )
    elif run.opts.max_drop is None:
        report.notes.append(
            f"goal: recover {DEFAULT_RECOVERY:.0%} of the float-int8 gap "
            f"({report.float_metric:.4f} - {plain.metric:.4f}), i.e. a drop of at most {drop:.4f}"
        )
    report.goal.max_drop = round(drop, 6)
    return report.float_metric - drop


def _int8_suffices(run: _Run, base: SearchPoint, plain: SearchPoint | None = None) -> bool:
    """Whether all-int8 (`base`; with the fixes the trial kept when `plain`, the point without
    them, which sets the goal, is given) already meets the metric goal where no point can cost
    less (analytic or table costs, nothing below int8 asked for): then nothing is bought (PP-OCR's
    text detector on hailo8, int8 above float, spent a fix trial, the units' noise and 772 s in
    all before the bisection kept all-int8; PP-OCRv4's, fixed by bias correction, the units'
    noise and every candidate's SNR)."""
    report, opts = run.report, run.opts
    unfixed = plain or base
    if report.float_metric is None or base.metric is None or unfixed.metric is None:
        return False
    if run.meter is not None or opts.searches_down():
        return False
    if opts.max_cost is not None and opts.max_cost < 1.0:
        return False
    if base.metric < report.float_metric - _allowed_drop(run, unfixed.metric):
        return False
    _goal(run, unfixed)
    what = "no fix tried, no layer promoted" if plain is None else "no layer promoted"
    report.notes.append(
        f"{base.label} scores {base.metric:.4f} and meets the goal at the lowest cost: {what}"
    )
    return True


def _score(run: _Run, point: SearchPoint) -> float:
    done = run.point(run.candidates[point.key], full=True)
    assert done.metric is not None
    return done.metric


def _pick_by_snr(run: _Run, points: list[SearchPoint]) -> None:
    goal = run.opts.min_snr if run.opts.min_snr is not None else DEFAULT_MIN_SNR
    run.report.goal.min_snr = goal
    meets = [p for p in points if (p.snr_db or -math.inf) >= goal]
    if _base_suffices(run, goal, meets):
        return
    if meets:
        run.report.chosen = min(meets, key=lambda p: p.cost).key
    elif points:
        run.report.chosen = max(points, key=lambda p: p.snr_db or -math.inf).key
        run.report.notes.append(f"no candidate reaches {goal} dB: the best one is chosen")


def _base_suffices(run: _Run, goal: float, meets: list[SearchPoint]) -> bool:
    """All-int8 meets the goal within the budget and no point that meets it is cheaper."""
    base = run.report.point(run.report.baseline)
    if base is None or (base.snr_db or -math.inf) < goal:
        return False
    cheapest = min((p.cost for p in meets), default=math.inf)
    return base.cost <= min(cheapest, run.opts.max_cost or math.inf)


def _rounded(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return value
    return round(value, 3)


def _say(say: Say | None, message: str) -> None:
    if say is not None:
        say(message)


__all__ = ["SearchOptions", "explain", "prepare_search", "run_search", "search_setup"]
