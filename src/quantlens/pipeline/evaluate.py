"""Three-way evaluation: float vs ground truth, quantized vs ground truth, float vs quantized.

The float baseline is trusted only once checked: the task metric is computed on the emulator's
float outputs and on ONNX Runtime's, and any difference stops the evaluation (a wrong baseline
makes every later number meaningless). Quantized outputs come from the emulator under a
QuantPlan (a quantize run folder, or an assignment quantized here); when the run folder holds
the exported `model.qdq.onnx`, ONNX Runtime's result on it is reported beside the emulator's.
Nothing here prints; `progress(done, total)` lets the CLI draw a bar.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from quantlens.artifacts.evaluation import EvalReport, FloatCheck, SampleResult
from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.ort import OrtRunner
from quantlens.errors import UserError
from quantlens.evaluate import EvalContext, Evaluator, Sample, make_evaluator
from quantlens.evaluate.agreement import DistanceEvaluator, as_reference, make_distance
from quantlens.export.simulation import export_simulation
from quantlens.pipeline.session import prepare
from quantlens.pipeline.tasks import (
    EvalOptions,
    QuantizeRequest,
    TaskModel,
    eval_context,
    has_truth,
    image_size,
    is_input,
    list_samples,
    read_samples,
    task_model,
)
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan

if TYPE_CHECKING:
    from quantlens.scale.evaluate import EvalFarm

Progress = Callable[[int, int], None]
Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
# Result keys that count things rather than measure quality: not compared in the float check.
COUNT_KEYS = frozenset({"samples", "detections"})
QDQ_FILE = "model.qdq.onnx"


# --- inputs -------------------------------------------------------------------------------------


@dataclass
class _Quantized:
    plan: QuantPlan
    qdq: Path | None
    run_dir: Path | None
    target: str | None
    # The plan as an ONNX simulation (`quantlens.export.simulation`), where the target's own
    # simulator runs in ONNX Runtime (profile `metric_engine`, qnn-htp: AIMET's sim).
    simulation: Path | None = None


# --- quantized model ----------------------------------------------------------------------------


def _quantized(
    prepared: TaskModel, data: Path, executor: Executor, options: EvalOptions
) -> tuple[_Quantized | None, list[str]]:
    notes: list[str] = []
    if options.plan is not None:
        found = _Quantized(options.plan, None, options.run_dir, options.plan.target)
    elif options.assignment is not None or options.target is not None:
        found = _quantize_here(prepared, data, options, notes)
    elif options.run_dir is not None:
        found = _read_run(options.run_dir)
    else:
        return None, ["no run folder, assignment or target: only the float model was evaluated"]
    _check_plan(found.plan, executor)
    if not options.qdq:
        found.qdq = None
    elif found.qdq is None:
        notes.append(f"no {QDQ_FILE}: the quantized model was not run in ONNX Runtime")
    return found, notes


def _read_run(run_dir: Path) -> _Quantized:
    plan_path = run_dir / "plan.json"
    if not plan_path.is_file():
        raise UserError(
            f"{run_dir} has no plan.json", "pass a folder written by `quantlens quantize`"
        )
    plan = QuantPlan.load(plan_path)
    qdq = run_dir / QDQ_FILE
    return _Quantized(plan, qdq if qdq.is_file() else None, run_dir, plan.target)


def _quantize_here(
    prepared: TaskModel, data: Path, options: EvalOptions, notes: list[str]
) -> _Quantized:
    run_dir = options.run_dir or Path("runs/eval")
    assignment = options.assignment
    if isinstance(assignment, Assignment):
        assignment = assignment.save(run_dir / "assignment.request.json")
    target = options.target
    if target is None and assignment is not None:
        target = Assignment.load(assignment).target
    calib = options.calib or data
    if options.calib is None and data.is_dir() and not any(map(is_input, data.iterdir())):
        raise UserError(
            f"cannot calibrate on {data}: its images are in sub-folders",
            "pass a calibration folder (calib) holding the images themselves",
        )
    if options.calib is None:
        notes.append("calibrated on the evaluation data itself (pass calib for a held-out set)")
    if options.quantizer is None:
        raise UserError(
            "no quantizer to quantize the model here",
            "call quantlens.pipeline.flows.evaluate_three_way, or pass a run folder",
        )
    options.quantizer(
        QuantizeRequest(
            model=prepared.path,
            calib=calib,
            target=target or "ort-cpu",
            run_dir=run_dir,
            assignment=assignment,
            input_shapes=options.input_shapes,
            spec=prepared.spec,
            device=options.device,
            scale=options.scale,
        )
    )
    return _read_run(run_dir)


def _check_plan(plan: QuantPlan, executor: Executor) -> None:
    """A plan from another model would silently quantize nothing: refuse it."""
    tensors = set(executor.activation_names()) | set(executor.input_names)
    missing = [n for n in plan.activations if n not in tensors]
    missing += [n for n in plan.weights if n not in executor.weights]
    if missing:
        raise UserError(
            f"the quantization plan names {len(missing)} tensor(s) this model lacks "
            f"(e.g. {', '.join(missing[:3])})",
            "pass the run folder made for this model (and the same --input-shape)",
        )


# --- the passes ---------------------------------------------------------------------------------


@dataclass
class _Arms:
    """One evaluator per (outputs, metric) pair; ground-truth arms are None for `distance`."""

    float_emulator: Evaluator | None
    float_onnxruntime: Evaluator | None
    emulator_vs_onnxruntime: DistanceEvaluator
    quantized: Evaluator | None = None
    quantized_onnxruntime: Evaluator | None = None
    float_vs_quantized: Evaluator | None = None
    float_vs_quantized_onnxruntime: Evaluator | None = None
    quantized_simulation: Evaluator | None = None
    float_vs_quantized_simulation: Evaluator | None = None


@dataclass
class _Cached:
    sample: Sample
    feed: Feed
    reference: Outputs


class _Runner:
    """Streams samples through the float and quantized models, feeding every arm."""

    def __init__(
        self,
        prepared: TaskModel,
        executor: Executor,
        files: Sequence[tuple[str, Path]],
        options: EvalOptions,
        progress: Progress | None,
        passes: int = 1,
    ) -> None:
        self.prepared = prepared
        self.files = files
        self.options = options
        self.progress = progress
        self.executor = self.float_executor = executor
        # Sample shards on Ray workers (`options.scale`); None: everything runs here.
        self.farm: EvalFarm | None = None
        self.cache: list[_Cached] = []
        self._cache_full = False
        self._cached_bytes = 0
        self._done = 0
        self._total = len(files) * passes

    def inputs(self, start: int = 0) -> Iterator[tuple[Sample, Feed]]:
        return read_samples(self.files, self.prepared.spec, start)

    def float_outputs(self, feed: Feed, hooks: QuantHooks | None = None) -> Outputs:
        with torch.inference_mode():
            return as_reference(self.executor.run(feed, hooks=hooks))

    def float_pass(self, arms: _Arms) -> None:
        for sample, feed, emulated, expected in self._float_records():
            if arms.float_emulator is not None and arms.float_onnxruntime is not None:
                arms.float_emulator.update(emulated, sample)
                arms.float_onnxruntime.update(expected, sample)
            arms.emulator_vs_onnxruntime.update(emulated, _with_reference(sample, expected))
            if feed is not None:
                self._remember(sample, feed, emulated)
            self._tick()

    def quantized_pass(self, arms: _Arms, quantized: _Quantized) -> None:
        for sample, candidate, exported, simulated in self._quantized_records(quantized):
            _update(arms.quantized, candidate, sample)
            _update(arms.float_vs_quantized, candidate, sample)
            if exported is not None:
                _update(arms.quantized_onnxruntime, exported, sample)
                _update(arms.float_vs_quantized_onnxruntime, exported, sample)
            if simulated is not None:
                _update(arms.quantized_simulation, simulated, sample)
                _update(arms.float_vs_quantized_simulation, simulated, sample)
            self._tick()

    def _float_records(self) -> Iterator[tuple[Sample, Feed | None, Outputs, Outputs]]:
        """(sample, its feed when read here, emulator outputs, ONNX Runtime outputs)."""
        if self.farm is not None:
            for sample, (emulated, expected) in zip(self.samples(), self.farm.float_records()):
                yield sample, None, emulated, expected
            return
        reference = OrtRunner(self.prepared.path, threads=torch.get_num_threads())
        for sample, feed in self.inputs():
            yield sample, feed, self.float_outputs(feed), reference.run(feed)

    def _quantized_records(
        self, quantized: _Quantized
    ) -> Iterator[tuple[Sample, Outputs, Outputs | None, Outputs | None]]:
        """(sample with its float reference, quantized outputs, QDQ outputs or None, the ONNX
        simulation's outputs or None)."""
        if self.farm is not None:
            model = None if self.executor is self.float_executor else self.executor.model
            records = self.farm.quantized_records(quantized.plan, model, quantized.qdq)
            for sample, (reference, candidate, exported) in zip(self.samples(), records):
                yield _with_reference(sample, reference), candidate, exported, None
            return
        hooks = QuantHooks(quantized.plan, self.options.device)
        threads = torch.get_num_threads()
        qdq = OrtRunner(quantized.qdq, threads=threads) if quantized.qdq else None
        sim = quantized.simulation
        simulation = OrtRunner(sim, threads=threads, optimize=False) if sim else None
        for item in self._replay():
            exported = qdq.run(item.feed) if qdq is not None else None
            simulated = simulation.run(item.feed) if simulation is not None else None
            sample = _with_reference(item.sample, item.reference)
            yield sample, self.float_outputs(item.feed, hooks), exported, simulated

    def samples(self) -> Iterator[Sample]:
        """The samples as `inputs` names them, without reading their data (workers do)."""
        for index, (name, path) in enumerate(self.files):
            yield Sample(index, name, path, image_size(path))

    def _remember(self, sample: Sample, feed: Feed, reference: Outputs) -> None:
        size = sum(a.nbytes for a in (*feed.values(), *reference.values()))
        if self._cache_full or self._cached_bytes + size > self.options.cache_bytes:
            self._cache_full = True
            return
        self._cached_bytes += size
        self.cache.append(_Cached(sample, feed, reference))

    def _replay(self) -> Iterator[_Cached]:
        yield from self.cache
        for sample, feed in self.inputs(start=len(self.cache)):
            yield _Cached(sample, feed, self.float_outputs(feed))

    def _tick(self) -> None:
        self._done += 1
        if self.progress is not None:
            self.progress(self._done, self._total)


def _with_reference(sample: Sample, reference: Outputs) -> Sample:
    return Sample(sample.index, sample.name, sample.path, sample.image_size, reference)


def _update(evaluator: Evaluator | None, outputs: Outputs, sample: Sample) -> None:
    if evaluator is not None:
        evaluator.update(outputs, sample)


# --- the pipeline -------------------------------------------------------------------------------


def evaluate_three_way(
    model: str | Path,
    data: str | Path,
    task: str,
    options: EvalOptions | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate the float and quantized model on `data` with `task`'s metric; see the module doc.

    `task` is a registered evaluator name or `path/to/file.py:factory`. The report is saved as
    `options.out`, else `eval.json` in the run folder when there is one.
    """
    opts = options or EvalOptions()
    clock: dict[str, float] = {}
    start = time.perf_counter()
    folder = Path(data)
    prepared = task_model(model, opts)
    files = list_samples(folder)
    context = eval_context(folder, [name for name, _ in files], prepared, opts, task)
    files = files[: opts.limit] if opts.limit is not None else files
    executor = Executor(prepared.model, device=opts.device)
    runner = _Runner(prepared, executor, files, opts, progress, 2 if _wants_quantized(opts) else 1)
    arms = _make_arms(task, context)
    if opts.scale is not None:
        from quantlens.scale.evaluate import eval_farm  # imports Ray: only when asked for

        paths = [path for _, path in files]
        runner.farm = eval_farm(
            opts.scale, opts.device, paths, prepared.spec, prepared.model, prepared.path
        )
    try:
        return _evaluate(prepared, folder, task, opts, runner, arms, context, clock, start)
    finally:
        if runner.farm is not None:
            runner.farm.close()


def _evaluate(
    prepared: TaskModel,
    folder: Path,
    task: str,
    opts: EvalOptions,
    runner: _Runner,
    arms: _Arms,
    context: EvalContext,
    clock: dict[str, float],
    start: float,
) -> EvalReport:
    clock["prepare"] = time.perf_counter() - start
    start = time.perf_counter()
    runner.float_pass(arms)
    check = _float_check(arms, opts)
    clock["float"] = time.perf_counter() - start
    # Only a trusted float baseline is worth quantizing against.
    start = time.perf_counter()
    quantized_executor = _run_executor(opts) or runner.float_executor
    quantized, notes = _quantized(prepared, folder, quantized_executor, opts)
    runner.executor = quantized_executor
    if quantized is not None:
        with tempfile.TemporaryDirectory(prefix="quantlens-sim-") as scratch:
            quantized.simulation = _simulation(quantized, runner, Path(scratch), notes)
            _add_quantized_arms(arms, task, context, quantized)
            runner.quantized_pass(arms, quantized)
        clock["quantized"] = time.perf_counter() - start
    report = _report(prepared, folder, task, arms, check, quantized, len(runner.files))
    report.notes.extend(notes + _nonfinite_notes(report))
    report.seconds = {k: round(v, 3) for k, v in clock.items()}
    out = opts.out or (quantized.run_dir / "eval.json" if quantized and quantized.run_dir else None)
    if out is not None:
        report.save(out)
    return report


def _simulation(
    quantized: _Quantized, runner: _Runner, scratch: Path, notes: list[str]
) -> Path | None:
    """The plan as an ONNX simulation, where the target's own simulator runs in ONNX Runtime
    (profile `metric_engine`; qnn-htp: AIMET's sim, which it equals bit for bit): the number a
    search on that target scores, beside the emulator's."""
    if not get_profile(quantized.plan.target).simulated():
        return None
    if runner.farm is not None:
        notes.append("no ONNX simulation arm with workers: it runs on the driver only")
        return None
    try:
        return export_simulation(runner.executor.model, quantized.plan, scratch / "sim.onnx")
    except UserError as exc:
        notes.append(f"no ONNX simulation arm: {exc.problem}")
        return None


def _run_executor(opts: EvalOptions) -> Executor | None:
    """The run folder's own float model when `quantize --optimize` changed the graph or weights:
    the plan names its tensors and was fitted to its weights (float arms keep the original)."""
    optimized = opts.run_dir / "model.float.onnx" if opts.run_dir is not None else None
    if optimized is None or not optimized.is_file() or opts.plan is not None:
        return None
    model = prepare(optimized, opts.input_shapes, batch=1).model
    return Executor(model, device=opts.device)


def _nonfinite_notes(report: EvalReport) -> list[str]:
    arms = {
        "the emulated quantized model": report.float_vs_quantized,
        "the QDQ model in ONNX Runtime": report.float_vs_quantized_onnxruntime,
        "the ONNX simulation": report.float_vs_quantized_simulation,
    }
    return [
        f"{what} produced NaN/Inf in {metrics['nonfinite_fraction']:.2%} of its output values"
        for what, metrics in arms.items()
        if metrics and metrics.get("nonfinite_fraction")
    ]


def _wants_quantized(options: EvalOptions) -> bool:
    sources = (options.plan, options.run_dir, options.assignment, options.target)
    return any(source is not None for source in sources)


def _make_arms(task: str, context: EvalContext) -> _Arms:
    metric = make_evaluator(task, context) if has_truth(task) else None
    other = make_evaluator(task, context) if has_truth(task) else None
    return _Arms(metric, other, make_distance(context))


def _add_quantized_arms(
    arms: _Arms, task: str, context: EvalContext, quantized: _Quantized
) -> None:
    def metric() -> Evaluator | None:
        return make_evaluator(task, context) if has_truth(task) else None

    arms.quantized, arms.float_vs_quantized = metric(), make_distance(context)
    if quantized.qdq is not None:
        arms.quantized_onnxruntime, arms.float_vs_quantized_onnxruntime = (
            metric(),
            make_distance(context),
        )
    if quantized.simulation is not None:
        arms.quantized_simulation = metric()
        arms.float_vs_quantized_simulation = make_distance(context)


def _float_check(arms: _Arms, options: EvalOptions) -> FloatCheck:
    """Stop unless the emulator's float metric equals ONNX Runtime's (the baseline is wrong)."""
    distances = arms.emulator_vs_onnxruntime.result()
    if arms.float_emulator is None or arms.float_onnxruntime is None:
        worst = max((v for k, v in distances.items() if k.endswith("relative_error")), default=0)
        tolerance, what = options.output_tolerance, f"relative output error {worst:.3g}"
    else:
        emulated, expected = arms.float_emulator.result(), arms.float_onnxruntime.result()
        gaps = {
            k: abs(emulated[k] - expected[k])
            for k in emulated.keys() & expected.keys()
            if k not in COUNT_KEYS
        }
        primary = arms.float_emulator.primary
        key = max(gaps, key=lambda k: (_finite_gap(gaps[k]), k == primary), default="")
        worst = _finite_gap(gaps[key]) if key else 0.0
        tolerance = options.tolerance
        what = f"{key} {emulated.get(key, 0):.6g} (emulator) vs {expected.get(key, 0):.6g} (ORT)"
    if not worst <= tolerance:
        raise UserError(
            f"the float model scores differently in the emulator and in ONNX Runtime: {what}, "
            f"tolerance {tolerance:g}; quantized results would not be trustworthy",
            "run `quantlens check` on the same data to find the output that differs, and report "
            "it as a quantlens bug",
        )
    return FloatCheck(
        passed=True,
        tolerance=tolerance,
        max_metric_difference=worst,
        emulator_vs_onnxruntime=distances,
    )


def _finite_gap(gap: float) -> float:
    return math.inf if math.isnan(gap) else gap


def _result(evaluator: Evaluator | None) -> dict[str, float] | None:
    return evaluator.result() if evaluator is not None else None


def _report(
    prepared: TaskModel,
    folder: Path,
    task: str,
    arms: _Arms,
    check: FloatCheck,
    quantized: _Quantized | None,
    samples: int,
) -> EvalReport:
    primary = arms.float_emulator or arms.float_vs_quantized or arms.emulator_vs_onnxruntime
    return EvalReport(
        model=str(prepared.path),
        data=str(folder),
        task=task,
        primary=primary.primary,
        samples=samples,
        target=quantized.target if quantized else None,
        run_dir=str(quantized.run_dir) if quantized and quantized.run_dir else None,
        float_vs_gt=_result(arms.float_emulator),
        float_onnxruntime_vs_gt=_result(arms.float_onnxruntime),
        quantized_vs_gt=_result(arms.quantized),
        quantized_onnxruntime_vs_gt=_result(arms.quantized_onnxruntime),
        float_vs_quantized=_result(arms.float_vs_quantized),
        float_vs_quantized_onnxruntime=_result(arms.float_vs_quantized_onnxruntime),
        quantized_simulation_vs_gt=_result(arms.quantized_simulation),
        float_vs_quantized_simulation=_result(arms.float_vs_quantized_simulation),
        float_check=check,
        per_sample=_per_sample(arms),
    )


def _per_sample(arms: _Arms) -> list[SampleResult]:
    """One row per sample, worst first: largest drop from float to quantized, then lowest
    quantized score, then lowest SNR."""

    def scores(evaluator: Evaluator | None) -> dict[str, float]:
        return evaluator.sample_scores() if evaluator is not None else {}

    base = scores(arms.float_emulator)
    quant = scores(arms.quantized)
    exported = scores(arms.quantized_onnxruntime)
    snr = scores(arms.float_vs_quantized)
    names = list(base or snr)
    rows = [
        SampleResult(
            name=n,
            float_score=base.get(n),
            quantized_score=quant.get(n),
            quantized_onnxruntime_score=exported.get(n),
            snr_db=snr.get(n),
        )
        for n in names
    ]
    return sorted(rows, key=_worst_first)


def _worst_first(row: SampleResult) -> tuple[float, float, float]:
    snr = row.snr_db if row.snr_db is not None else math.inf
    if row.float_score is None:
        return snr, 0.0, 0.0
    if row.quantized_score is None:
        return row.float_score, 0.0, 0.0
    return row.quantized_score - row.float_score, row.quantized_score, snr
