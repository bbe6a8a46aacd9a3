"""int8 that runs faster in ONNX Runtime: float vs quantlens `ort-cpu-fast` vs ORT's own export.

Method: for each zoo model, rendered samples with ground truth (seed 1 for calibration, seed 2
for evaluation) go through the model's own pre-processing; calibration inputs are saved as .npz
once so both quantizers see identical tensors. Three models run in ONNX Runtime 1.x CPU:

- float: the zoo model as downloaded;
- quantlens: `quantize --target ort-cpu-fast` (percentile calibration, the graph pass
  `fuse-affine` folds the Conv-then-Add-bias of Paddle exports into the Conv, as `--fuse` does);
- onnxruntime: `quantize_static` with its defaults (QDQ, uint8 activations, int8 weights).

Latency: `quantlens.bench.latency.interleaved_times`, 2 intra-op threads, one session per
model (its pool threads do not spin-wait, so a session idle between its turns does not steal
the cores of the one being timed), round-robin over the three on the same input (order
rotating each round), warm-up rounds first, median of the rounds, and the fastest round (the
closest to an idle machine: on a loaded one the median moves with the load). The task metric
of every model comes from its ORT outputs (orientation top-1, OCR character accuracy,
detection mAP@0.5:0.95 from faster-coco-eval), and the ORT-optimized graph's op counts say
which integer kernels it fused.

    python benchmarks/ort_speed.py [--calib 16] [--eval 16] [--rounds 30] [--models ...]
        [--assignment assignment.json]

`--assignment` quantizes the quantlens model with a plan (a search's `assignment.json`, e.g.
layers left in fp32) instead of all-int8; give it with the one model it was searched for.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from int8_quality import ort_static  # a sibling file: the script's folder is on sys.path
from quantlens.bench.latency import (
    FLOAT_HEAVY_OPS,
    INTEGER_PREFIXES,
    LatencySettings,
    cpu_session,
    fused_op_counts,
    interleaved_times,
)
from quantlens.data import zoo
from quantlens.data.render import write_samples
from quantlens.evaluate import Sample, make_evaluator
from quantlens.pipeline.tasks import (
    EvalOptions,
    eval_context,
    list_samples,
    read_samples,
    task_model,
)
from quantlens.quantize import QuantizeOptions, quantize_model

SAMPLES = {
    "pplcnet-orientation": ("rotated-pages", "classification"),
    "ppocr-v6-rec-small": ("text-lines", "ocr"),
    "doclayout-yolov8n": ("pages", "detection"),
}
Feed = dict[str, np.ndarray]


class TaskSet:
    """Evaluation samples of one model read once, scored for any ONNX model in ORT."""

    def __init__(self, model: Path, folder: Path, task: str) -> None:
        opts = EvalOptions()
        prepared = task_model(model, opts)
        files = list_samples(folder)
        self.task = task
        self.context = eval_context(folder, [n for n, _ in files], prepared, opts, task)
        self.samples: list[tuple[Sample, Feed]] = list(read_samples(files, prepared.spec))

    @property
    def feeds(self) -> list[Feed]:
        return [feed for _, feed in self.samples]

    def score(self, model: Path) -> dict[str, float]:
        session = cpu_session(model)
        names = [o.name for o in session.get_outputs()]
        evaluator = make_evaluator(self.task, self.context)
        for sample, feed in self.samples:
            outputs = session.run(None, feed)
            evaluator.update(dict(zip(names, outputs)), sample)
        return evaluator.result()


def save_npz(feeds: Sequence[Feed], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, feed in enumerate(feeds):
        np.savez(folder / f"{index:04d}.npz", **feed)  # type: ignore[arg-type]
    return folder


def ours(
    model: Path, calib: Path, run_dir: Path, assignment: Path | None = None
) -> tuple[Path, dict[str, object]]:
    opts = QuantizeOptions(
        calib=calib,
        target="ort-cpu-fast",
        run_dir=run_dir,
        fixes={"fuse": True},
        latency_rounds=0,
        assignment=assignment,
    )
    report = quantize_model(model, opts)
    agree = report.pooled_agreement()
    return Path(report.files["qdq_model"]), {"emulator_vs_ort_pooled_db": agree}


def kernels(model: Path) -> dict[str, int]:
    ops = fused_op_counts(model)
    integer = sum(v for k, v in ops.items() if k.startswith(INTEGER_PREFIXES))
    heavy = sum(v for k, v in ops.items() if k in FLOAT_HEAVY_OPS)
    return {"integer_kernels": integer, "float_weighted_ops": heavy}


def bench_model(name: str, args: argparse.Namespace, root: Path) -> dict[str, object]:
    kind, task = SAMPLES[name]
    model = zoo.fetch(name)
    calib_set = TaskSet(model, write_samples(kind, args.calib, root / "calib", seed=1), task)  # type: ignore[arg-type]
    calib = save_npz(calib_set.feeds, root / "calib-npz")
    evaluation = TaskSet(model, write_samples(kind, args.eval, root / "eval", seed=2), task)  # type: ignore[arg-type]
    qdq, extra = ours(model, calib, root / "ours", args.assignment)
    if args.assignment is not None:
        extra["assignment"] = str(args.assignment)
    models = {"float": model, "quantlens": qdq, "onnxruntime": ort_static(model, calib, root / "o")}
    settings = LatencySettings(threads=2, warmup=args.warmup, rounds=args.rounds)
    rounds = interleaved_times(models, evaluation.feeds, settings)
    times = {tool: statistics.median(values) for tool, values in rounds.items()}
    fastest = {tool: min(values) for tool, values in rounds.items()}
    row: dict[str, object] = {"model": name, "task": task, "load": os.getloadavg()[0]}
    for tool, path in models.items():
        metrics = evaluation.score(path)
        row[tool] = {
            "ms": round(times[tool] * 1e3, 2),
            "vs_float": round(times[tool] / times["float"], 3),
            # The fastest round: what an idle machine would show (load only adds time).
            "min_ms": round(fastest[tool] * 1e3, 2),
            "min_vs_float": round(fastest[tool] / fastest["float"], 3),
            "metrics": {k: round(v, 4) for k, v in metrics.items()},
            **kernels(path),
            **(extra if tool == "quantlens" else {}),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=list(SAMPLES))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--assignment", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(bench_model(name, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print(
        f"calibration {args.calib}, evaluation {args.eval} samples; 2 threads, {args.rounds} rounds"
    )
    print(
        f"{'model':<22} {'tool':<12} {'ms':>8} {'x float':>8} {'min x':>6} {'int/float':>10} metric"
    )
    for row in rows:
        for tool in ("float", "quantlens", "onnxruntime"):
            r = row[tool]
            assert isinstance(r, dict)
            counts = f"{r['integer_kernels']}/{r['float_weighted_ops']}"
            print(
                f"{row['model']:<22} {tool:<12} {r['ms']:>8} {r['vs_float']:>8} "
                f"{r['min_vs_float']:>6} {counts:>10}  {r['metrics']}"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
