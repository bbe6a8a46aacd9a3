"""Three-way evaluation: float vs ground truth, quantized vs ground truth, float vs quantized.

The float baseline is trusted only once checked: the task metric is computed on the emulator's
float outputs and on ONNX Runtime's, and any difference stops the evaluation (a wrong baseline
makes every later number meaningless). Quantized outputs come from the emulator under a
QuantPlan (a quantize run folder, or an assignment quantized here); when the run folder holds
the exported `model.qdq.onnx`, ONNX Runtime's result on it is reported beside the emulator's.
Nothing here prints; `progress(done, total)` lets the CLI draw a bar.
"""

from __future__ import annotations

import ast
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from PIL import Image

from quantlens.artifacts.evaluation import EvalReport, FloatCheck, SampleResult
from quantlens.data import zoo
from quantlens.data.preprocess import (
    IMAGE_SUFFIXES,
    InputSpec,
    list_input_files,
    load_feed,
    load_spec_file,
)
from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.ort import OrtRunner
from quantlens.errors import UserError
from quantlens.evaluate import EvalContext, Evaluator, Sample, make_evaluator
from quantlens.evaluate.agreement import DistanceEvaluator, as_reference, make_distance
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan

Progress = Callable[[int, int], None]
Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
# Result keys that count things rather than measure quality: not compared in the float check.
COUNT_KEYS = frozenset({"samples", "detections"})
QDQ_FILE = "model.qdq.onnx"


@dataclass
class EvalOptions:
    """Where the quantized model comes from, and how to read the data.

    Quantized arms: `plan` as given; else `run_dir` holding plan.json (and model.qdq.onnx);
    else, with `assignment` or `target`, quantize here into `run_dir` (default runs/eval),
    calibrating on `calib` (default: the evaluation data). With none of them: float only.
    """

    run_dir: Path | None = None
    assignment: Path | Assignment | None = None
    target: str | None = None
    plan: QuantPlan | None = None
    calib: Path | None = None
    ground_truth: Path | None = None
    limit: int | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    spec: InputSpec | None = None
    spec_file: Path | None = None
    # Task settings: score_threshold, f1_threshold, iou_threshold, max_det, postprocess,
    # dictionary, labels, output, class_axis, class_start.
    task_options: dict[str, Any] = field(default_factory=dict)
    # Largest allowed |emulator - ONNX Runtime| difference of any float metric. Outputs agree
    # to ~1e-5 relative, so metrics are normally identical; the slack covers a rare box or
    # character that sits exactly on a threshold in a large dataset.
    tolerance: float = 1e-4
    # For the `distance` task (no metric): largest relative error of the float outputs.
    output_tolerance: float = 1e-4
    qdq: bool = True
    device: str = "cpu"
    out: Path | None = None
    # Inputs and float outputs kept in memory between the float and quantized passes.
    cache_bytes: int = 1 << 30


# --- inputs -------------------------------------------------------------------------------------


@dataclass
class _Model:
    path: Path
    model: ir.Model
    spec: InputSpec
    labels: list[str]


@dataclass
class _Quantized:
    plan: QuantPlan
    qdq: Path | None
    run_dir: Path | None
    target: str | None


def _prepare_model(model: str | Path, options: EvalOptions) -> _Model:
    from quantlens.api import prepare, resolve_model, spec_for

    path = resolve_model(str(model))
    prepared = prepare(path, options.input_shapes, batch=1)
    spec = options.spec or spec_for(path, prepared.model)
    if options.spec_file is not None:
        spec = load_spec_file(options.spec_file, spec)
    labels = model_labels(path, prepared.model, options.task_options.get("labels"))
    return _Model(path, prepared.model, spec, labels)


def model_labels(path: Path, model: ir.Model, labels_file: str | Path | None = None) -> list[str]:
    """Class names: a labels file (one per line), the zoo entry's, Ultralytics' `names`
    metadata, or the `character` metadata of PaddlePaddle exports; else none."""
    if labels_file is not None:
        try:
            return Path(labels_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UserError(f"cannot read labels {labels_file}: {exc}", "check the path") from exc
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for entry in zoo.list_entries():
        if entry.model_sha256 == digest and entry.labels:
            return list(entry.labels)
    names = model.metadata_props.get("names")
    if names:
        try:
            table = ast.literal_eval(names)
        except (ValueError, SyntaxError):
            table = None
        if isinstance(table, dict):
            return [str(table[k]) for k in sorted(table)]
    return model.metadata_props.get("character", "").splitlines()


def list_samples(data: Path) -> list[tuple[str, Path]]:
    """(name relative to `data`, file) of every input: the folder's own files, or else those
    one level down in per-class sub-folders."""
    if not data.is_dir() or any(_is_input(p) for p in data.iterdir()):
        return [(p.name, p) for p in list_input_files(data)]
    nested = sorted(p for sub in data.iterdir() if sub.is_dir() for p in sub.iterdir())
    found = [(p.relative_to(data).as_posix(), p) for p in nested if _is_input(p)]
    if not found:
        list_input_files(data)  # raises the usual "no images" error
    return found


def _is_input(path: Path) -> bool:
    suffixes = (*IMAGE_SUFFIXES, ".npy", ".npz")
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in suffixes


def _image_size(path: Path) -> tuple[int, int] | None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    try:
        with Image.open(path) as image:
            return image.size
    except OSError:
        return None


# --- quantized model ----------------------------------------------------------------------------


def _quantized(
    prepared: _Model, data: Path, executor: Executor, options: EvalOptions
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
    prepared: _Model, data: Path, options: EvalOptions, notes: list[str]
) -> _Quantized:
    run_dir = options.run_dir or Path("runs/eval")
    assignment = options.assignment
    if isinstance(assignment, Assignment):
        assignment = assignment.save(run_dir / "assignment.request.json")
    target = options.target
    if target is None and assignment is not None:
        target = Assignment.load(assignment).target
    calib = options.calib or data
    if options.calib is None and data.is_dir() and not any(map(_is_input, data.iterdir())):
        raise UserError(
            f"cannot calibrate on {data}: its images are in sub-folders",
            "pass a calibration folder (calib) holding the images themselves",
        )
    if options.calib is None:
        notes.append("calibrated on the evaluation data itself (pass calib for a held-out set)")
    quantize_model(
        prepared.path,
        QuantizeOptions(
            calib=calib,
            target=target or "ort-cpu",
            run_dir=run_dir,
            assignment=assignment,
            input_shapes=options.input_shapes,
            spec=prepared.spec,
            device=options.device,
        ),
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


@dataclass
class _Cached:
    sample: Sample
    feed: Feed
    reference: Outputs


class _Runner:
    """Streams samples through the float and quantized models, feeding every arm."""

    def __init__(
        self,
        prepared: _Model,
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
        self.executor = executor
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
        reference = OrtRunner(self.prepared.path, threads=torch.get_num_threads())
        for sample, feed in self.inputs():
            emulated = self.float_outputs(feed)
            expected = reference.run(feed)
            if arms.float_emulator is not None and arms.float_onnxruntime is not None:
                arms.float_emulator.update(emulated, sample)
                arms.float_onnxruntime.update(expected, sample)
            arms.emulator_vs_onnxruntime.update(emulated, _with_reference(sample, expected))
            self._remember(sample, feed, emulated)
            self._tick()

    def quantized_pass(self, arms: _Arms, quantized: _Quantized) -> None:
        hooks = QuantHooks(quantized.plan, self.options.device)
        qdq = OrtRunner(quantized.qdq, threads=torch.get_num_threads()) if quantized.qdq else None
        for item in self._replay():
            sample = _with_reference(item.sample, item.reference)
            candidate = self.float_outputs(item.feed, hooks)
            _update(arms.quantized, candidate, sample)
            _update(arms.float_vs_quantized, candidate, sample)
            if qdq is not None:
                exported = qdq.run(item.feed)
                _update(arms.quantized_onnxruntime, exported, sample)
                _update(arms.float_vs_quantized_onnxruntime, exported, sample)
            self._tick()

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


def read_samples(
    files: Sequence[tuple[str, Path]], spec: InputSpec, start: int = 0
) -> Iterator[tuple[Sample, Feed]]:
    """(sample, model inputs) of every file from `start`, read through the pre-processing."""
    for index, (name, path) in enumerate(files[start:], start=start):
        yield Sample(index, name, path, _image_size(path)), load_feed(path, spec)


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
    prepared = _prepare_model(model, opts)
    files = list_samples(folder)
    context = _context(folder, [name for name, _ in files], prepared, opts, task)
    files = files[: opts.limit] if opts.limit is not None else files
    executor = Executor(prepared.model, device=opts.device)
    runner = _Runner(prepared, executor, files, opts, progress, 2 if _wants_quantized(opts) else 1)
    arms = _make_arms(task, context)
    clock["prepare"] = time.perf_counter() - start

    start = time.perf_counter()
    runner.float_pass(arms)
    check = _float_check(arms, opts)
    clock["float"] = time.perf_counter() - start
    # Only a trusted float baseline is worth quantizing against.
    start = time.perf_counter()
    quantized_executor = _run_executor(opts) or executor
    quantized, notes = _quantized(prepared, folder, quantized_executor, opts)
    runner.executor = quantized_executor
    if quantized is not None:
        _add_quantized_arms(arms, task, context, with_qdq=quantized.qdq is not None)
        runner.quantized_pass(arms, quantized)
        clock["quantized"] = time.perf_counter() - start
    report = _report(prepared, folder, task, arms, check, quantized, len(files))
    report.notes.extend(notes + _nonfinite_notes(report))
    report.seconds = {k: round(v, 3) for k, v in clock.items()}
    out = opts.out or (quantized.run_dir / "eval.json" if quantized and quantized.run_dir else None)
    if out is not None:
        report.save(out)
    return report


def _run_executor(opts: EvalOptions) -> Executor | None:
    """The run folder's own float model when `quantize --optimize` changed the graph or weights:
    the plan names its tensors and was fitted to its weights (float arms keep the original)."""
    from quantlens.api import prepare

    optimized = opts.run_dir / "model.float.onnx" if opts.run_dir is not None else None
    if optimized is None or not optimized.is_file() or opts.plan is not None:
        return None
    model = prepare(optimized, opts.input_shapes, batch=1).model
    return Executor(model, device=opts.device)


def _nonfinite_notes(report: EvalReport) -> list[str]:
    arms = {
        "the emulated quantized model": report.float_vs_quantized,
        "the QDQ model in ONNX Runtime": report.float_vs_quantized_onnxruntime,
    }
    return [
        f"{what} produced NaN/Inf in {metrics['nonfinite_fraction']:.2%} of its output values"
        for what, metrics in arms.items()
        if metrics and metrics.get("nonfinite_fraction")
    ]


def _wants_quantized(options: EvalOptions) -> bool:
    sources = (options.plan, options.run_dir, options.assignment, options.target)
    return any(source is not None for source in sources)


def _context(
    folder: Path, names: list[str], prepared: _Model, options: EvalOptions, task: str
) -> EvalContext:
    task_options = dict(options.task_options)
    if task == "detection" and "postprocess" not in task_options:
        # YOLOv8 layout [1, 4 + classes, anchors]: the distances compare class scores per anchor.
        task_options.setdefault("class_axis", 1)
        task_options.setdefault("class_start", 4)
        task_options.setdefault("min_score", task_options.get("f1_threshold", 0.25))
    return EvalContext(
        data=folder,
        sample_names=names,
        spec=prepared.spec,
        labels=prepared.labels,
        metadata=dict(prepared.model.metadata_props),
        output_names=[v.name or "" for v in prepared.model.graph.outputs],
        ground_truth=options.ground_truth,
        options=task_options,
    )


def _has_truth(task: str) -> bool:
    return task != "distance"


def _make_arms(task: str, context: EvalContext) -> _Arms:
    metric = make_evaluator(task, context) if _has_truth(task) else None
    other = make_evaluator(task, context) if _has_truth(task) else None
    return _Arms(metric, other, make_distance(context))


def _add_quantized_arms(arms: _Arms, task: str, context: EvalContext, with_qdq: bool) -> None:
    def metric() -> Evaluator | None:
        return make_evaluator(task, context) if _has_truth(task) else None

    arms.quantized, arms.float_vs_quantized = metric(), make_distance(context)
    if with_qdq:
        arms.quantized_onnxruntime, arms.float_vs_quantized_onnxruntime = (
            metric(),
            make_distance(context),
        )


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
    prepared: _Model,
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


class TaskScorer:
    """The task metric of one model on one data folder for many quantization plans.

    The inputs are read once and the float outputs computed once, so scoring a plan costs one
    quantized pass; the search's oracle calls it for every full evaluation.
    """

    def __init__(
        self,
        model: str | Path,
        data: str | Path,
        task: str,
        executor: Executor,
        options: EvalOptions | None = None,
    ) -> None:
        opts = options or EvalOptions()
        folder = Path(data)
        self.prepared = _prepare_model(model, opts)
        files = list_samples(folder)
        self.context = _context(folder, [name for name, _ in files], self.prepared, opts, task)
        files = files[: opts.limit] if opts.limit is not None else files
        if not _has_truth(task):
            raise UserError(
                f"task {task!r} has no ground truth to score plans with",
                "pick a task with a metric (classification, detection, ocr)",
            )
        self.task, self.executor = task, executor
        self.samples = list(read_samples(files, self.prepared.spec))
        self.primary = make_evaluator(task, self.context).primary

    def score(self, plan: QuantPlan | None, progress: Progress | None = None) -> dict[str, float]:
        """Every metric of the task; `plan` None scores the float model."""
        evaluator = make_evaluator(self.task, self.context)
        hooks = QuantHooks(plan, self.executor.device) if plan is not None else None
        with torch.inference_mode():
            for done, (sample, feed) in enumerate(self.samples, start=1):
                outputs = as_reference(self.executor.run(feed, hooks=hooks))
                evaluator.update(outputs, sample)
                if progress is not None:
                    progress(done, len(self.samples))
        return evaluator.result()
