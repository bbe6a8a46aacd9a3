"""What scoring a model on a data folder needs, shared by the evaluate and search stages:
the evaluation options, the model with its pre-processing and labels, the samples read through
it, the evaluator context, and `TaskScorer` (one task metric for many quantization plans).
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from PIL import Image

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
from quantlens.errors import UserError, read_user_text
from quantlens.evaluate import EvalContext, Sample, make_evaluator
from quantlens.evaluate.agreement import as_reference
from quantlens.pipeline.session import prepare, resolve_model, spec_for
from quantlens.scale.options import ScaleOptions
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan

Progress = Callable[[int, int], None]
Feed = dict[str, np.ndarray]


@dataclass
class QuantizeRequest:
    """What the evaluate stage asks of the quantize stage when it quantizes the model itself."""

    model: Path
    calib: Path
    target: str
    run_dir: Path
    assignment: Path | None
    input_shapes: dict[str, list[int]]
    spec: InputSpec
    device: str
    scale: ScaleOptions | None = None  # calibration shards on Ray workers


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
    # Sample shards on Ray workers (`--workers`, `--ray-address`); None: one process.
    scale: ScaleOptions | None = None
    # Runs the quantize stage when the evaluation quantizes here (stages never import each
    # other; `quantlens.pipeline.flows` wires it).
    quantizer: Callable[[QuantizeRequest], object] | None = None


@dataclass
class TaskModel:
    path: Path
    model: ir.Model
    spec: InputSpec
    labels: list[str]


def task_model(model: str | Path, options: EvalOptions) -> TaskModel:
    path = resolve_model(str(model))
    prepared = prepare(path, options.input_shapes, batch=1)
    spec = options.spec or spec_for(path, prepared.model)
    if options.spec_file is not None:
        spec = load_spec_file(options.spec_file, spec)
    labels = model_labels(path, prepared.model, options.task_options.get("labels"))
    return TaskModel(path, prepared.model, spec, labels)


def model_labels(path: Path, model: ir.Model, labels_file: str | Path | None = None) -> list[str]:
    """Class names: a labels file (one per line), the zoo entry's, Ultralytics' `names`
    metadata, or the `character` metadata of PaddlePaddle exports; else none."""
    if labels_file is not None:
        return read_user_text(labels_file, "labels file", "one class name a line").splitlines()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for entry in zoo.list_entries():
        if entry.model_sha256 == digest and entry.labels:
            return list(entry.labels)
    names = model.metadata_props.get("names")
    if names:
        try:  # metadata is whatever the exporter (or anyone) wrote: trust none of it
            table = ast.literal_eval(names)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            table = None
        if isinstance(table, dict) and all(isinstance(k, int) for k in table):
            return [str(table[k]) for k in sorted(table)]
    return model.metadata_props.get("character", "").splitlines()


def list_samples(data: Path) -> list[tuple[str, Path]]:
    """(name relative to `data`, file) of every input: the folder's own files, or else those
    one level down in per-class sub-folders."""
    if not data.is_dir() or any(is_input(p) for p in data.iterdir()):
        return [(p.name, p) for p in list_input_files(data)]
    nested = sorted(p for sub in data.iterdir() if sub.is_dir() for p in sub.iterdir())
    found = [(p.relative_to(data).as_posix(), p) for p in nested if is_input(p)]
    if not found:
        list_input_files(data)  # raises the usual "no images" error
    return found


def is_input(path: Path) -> bool:
    suffixes = (*IMAGE_SUFFIXES, ".npy", ".npz")
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in suffixes


def image_size(path: Path) -> tuple[int, int] | None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, Image.DecompressionBombError):
        return None  # reading the samples says what is wrong with the file


def read_samples(
    files: Sequence[tuple[str, Path]], spec: InputSpec, start: int = 0
) -> Iterator[tuple[Sample, Feed]]:
    """(sample, model inputs) of every file from `start`, read through the pre-processing."""
    for index, (name, path) in enumerate(files[start:], start=start):
        yield Sample(index, name, path, image_size(path)), load_feed(path, spec)


def eval_context(
    folder: Path, names: list[str], prepared: TaskModel, options: EvalOptions, task: str
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


def has_truth(task: str) -> bool:
    return task != "distance"


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
        self.prepared = task_model(model, opts)
        files = list_samples(folder)
        self.context = eval_context(folder, [name for name, _ in files], self.prepared, opts, task)
        files = files[: opts.limit] if opts.limit is not None else files
        if not has_truth(task):
            raise UserError(
                f"task {task!r} has no ground truth to score plans with",
                "pick a task with a metric (classification, detection, ocr)",
            )
        self.task, self.executor, self.files = task, executor, files
        self._samples: list[tuple[Sample, Feed]] | None = None
        self.primary = make_evaluator(task, self.context).primary
        # Per-sample scores of the last plan scored (the evaluator's `sample_scores`).
        self.last_sample_scores: dict[str, float] = {}
        # Every sample's outputs under a plan, computed elsewhere (Ray workers reading `files`)
        # and handed back in sample order; None: computed here.
        self.remote: Callable[[QuantPlan | None], Iterator[dict[str, np.ndarray]]] | None = None

    @property
    def samples(self) -> list[tuple[Sample, Feed]]:
        """Read once, on first use (never when the workers read the files)."""
        if self._samples is None:
            self._samples = list(read_samples(self.files, self.prepared.spec))
        return self._samples

    def score(self, plan: QuantPlan | None, progress: Progress | None = None) -> dict[str, float]:
        """Every metric of the task; `plan` None scores the float model."""
        return self.evaluate(self._outputs(plan), progress)

    def evaluate(
        self,
        outputs: Iterable[tuple[Sample, dict[str, np.ndarray]]],
        progress: Progress | None = None,
    ) -> dict[str, float]:
        """Every metric of the task over each sample's outputs, however they were computed
        (the emulator, ONNX Runtime); keeps the per-sample scores in `last_sample_scores`."""
        evaluator = make_evaluator(self.task, self.context)
        for done, (sample, found) in enumerate(outputs, start=1):
            evaluator.update(found, sample)
            if progress is not None:
                progress(done, len(self.files))
        self.last_sample_scores = evaluator.sample_scores()
        return evaluator.result()

    def _outputs(self, plan: QuantPlan | None) -> Iterator[tuple[Sample, dict[str, np.ndarray]]]:
        if self.remote is not None:
            named = enumerate(self.files)
            samples = (Sample(i, name, path, image_size(path)) for i, (name, path) in named)
            yield from zip(samples, self.remote(plan))
            return
        hooks = QuantHooks(plan, self.executor.device) if plan is not None else None
        with torch.inference_mode():
            for sample, feed in self.samples:
                yield sample, as_reference(self.executor.run(feed, hooks=hooks))
