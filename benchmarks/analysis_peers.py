"""Per-layer quantization-noise analysis: quantlens vs ONNX Runtime's qdq_loss_debug vs AIMET-ONNX.

Method. One zoo model, N rendered samples through the model's own pre-processing, calibrated
once by quantlens for the target (not timed). The same pre-processed tensors go to every tool.
Wall-clock seconds (ONNX Runtime's pool threads spin, which would inflate CPU time), torch and
ONNX Runtime on `--threads` threads, on an otherwise idle machine; quantlens rows are the
fastest of 2 runs. The unit is one fully quantized quantlens pass over the N samples, in the
batches the modes use (as in analysis_speed.py).
- quantlens accumulated: one float and one quantized pass, every layer's output compared
  (SNR, cosine, MSE, max error, histograms, scatter pairs);
- quantlens isolated: one float pass caching the layers' cuts, then per layer a re-run of its
  node and what follows, output SNR per layer (variant "both");
- ONNX Runtime `qdq_loss_debug` (ORT's float-vs-QDQ debugging flow, its analog of accumulated
  mode): both models augmented to output every intermediate tensor, both run over the samples
  one at a time (its default session: graph optimizations off), activations matched by name and
  their SNR computed, weights matched and compared. The QDQ model is ONNX Runtime's own
  `quantize_static` QDQ output on the same samples (its defaults; not timed, as our calibration
  is not): the tool matches tensors by the names ORT's quantizer gives, which our export does
  not use. Counts are "activations+weights" matched;
- AIMET-ONNX QuantAnalyzer (`--aimet-python`, worker _aimet_quant_analyzer.py in AIMET's venv):
  per-op "enabled" analysis (analog of isolated: one op quantized, output SNR callback over all
  samples) and per-op MSE export (analog of accumulated), in AIMET's own int8 scheme; quantsim
  setup and calibration timed apart.
NNCF has no per-layer noise analysis to time: its accuracy-control loop ranks quantizer groups
by reverting each to float and re-evaluating, inside `quantize_with_accuracy_control` (its time
is in the search benchmark).

    python benchmarks/analysis_peers.py [--model pplcnet-orientation] [--samples 16]
        [--target hailo8] [--threads 2] [--aimet-python PATH] [--aimet-ops K] [--no-aimet-mse]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from onnxruntime.quantization import qdq_loss_debug as qld

from analysis_speed import SAMPLES  # this folder is on sys.path when run as a script
from quantlens.analysis import batches, choose_batch_size
from quantlens.analysis.accumulated import run_accumulated
from quantlens.analysis.isolated import run_isolated
from quantlens.analyze import AnalyzeOptions, Setup, prepare_analysis
from quantlens.api import resolve_model
from quantlens.data.render import write_samples
from quantlens.emulate.fakequant import QuantHooks

T = TypeVar("T")
HERE = Path(__file__).parent
Row = tuple[str, str, str, float]


def wall(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def fastest(runs: int, fn: Callable[[], T]) -> tuple[T, float]:
    results = [wall(fn) for _ in range(runs)]
    return results[-1][0], min(seconds for _, seconds in results)


class Samples(CalibrationDataReader):
    """The pre-processed samples, one at a time, as ONNX Runtime's tools read them."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.iterator: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.iterator, None)

    def rewind(self) -> None:
        self.iterator = iter(self.feeds)


def ours(setup: Setup) -> list[Row]:
    ex, plan, layers, feeds = setup.executor, setup.plan, setup.layers, setup.feeds
    keep = {n for lt in layers for n in lt.cut}
    size = choose_batch_size(ex, feeds, keep, 2048 << 20, 8)

    def full_pass() -> None:
        hooks = QuantHooks(plan, ex.device)
        with torch.inference_mode():
            for feed in batches(feeds, size):
                ex.run(feed, hooks=hooks)

    _, unit = fastest(3, full_pass)
    acc, t_acc = fastest(2, lambda: run_accumulated(ex, plan, layers, batches(feeds, size), {}))
    _, t_iso = fastest(2, lambda: run_isolated(ex, plan, layers, batches(feeds, size), ("both",)))
    count = str(len(layers))
    return [
        ("quantlens", "one fully quantized pass (the unit)", "", unit),
        ("quantlens", "accumulated (every layer output vs float)", str(len(acc.tensors)), t_acc),
        ("quantlens", "isolated, one layer at a time (output SNR)", count, t_iso),
    ]


def onnxruntime_debug(setup: Setup, threads: int, folder: Path) -> list[Row]:
    """ORT's qdq_loss_debug flow on the original float model and ORT's own QDQ model of it."""
    float_model = str(setup.path)
    feeds = [dict(f) for f in setup.feeds]
    qdq = folder / "ort.qdq.onnx"
    quantize_static(float_model, str(qdq), Samples(feeds), quant_format=QuantFormat.QDQ)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3

    def flow() -> tuple[str, float]:
        aug_float, aug_qdq = folder / "float.aug.onnx", folder / "qdq.aug.onnx"
        qld.modify_model_output_intermediate_tensors(float_model, aug_float)
        qld.modify_model_output_intermediate_tensors(str(qdq), aug_qdq)
        start = time.perf_counter()
        float_acts = qld.collect_activations(str(aug_float), Samples(feeds), options)
        qdq_acts = qld.collect_activations(str(aug_qdq), Samples(feeds), options)
        collect = time.perf_counter() - start
        matching = qld.create_activation_matching(qdq_acts, float_acts)
        errors = qld.compute_activation_error(matching)
        weights = qld.compute_weight_error(qld.create_weight_matching(float_model, str(qdq)))
        matched = sum("xmodel_err" in e for e in errors.values())
        return f"{matched}+{len(weights)}w", collect

    (tensors, collect), total = wall(flow)
    what = "qdq_loss_debug: augment, collect float + QDQ, match, SNR"
    return [
        ("ONNX Runtime", what, tensors, total),
        ("ONNX Runtime", "  of which collecting activations (2 sessions)", "", collect),
    ]


def aimet(
    setup: Setup, python: str, ops: int | None, mse: bool, folder: Path
) -> tuple[list[Row], dict[str, object]]:
    npz = folder / "npz"
    npz.mkdir()
    for index, feed in enumerate(setup.feeds):
        np.savez(npz / f"{index:04d}.npz", **feed)
    command = [python, str(HERE / "_aimet_quant_analyzer.py"), str(setup.path), str(npz)]
    command += [] if ops is None else ["--ops", str(ops)]
    command += [] if mse else ["--no-mse"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"AIMET worker exit {done.returncode}: {done.stderr.strip()[-400:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    scaled = "" if report["ops_timed"] == report["ops"] else f", timed on {report['ops_timed']}"
    rows = [
        ("AIMET-ONNX", "quantsim setup + compute_encodings", "", float(report["setup_s"])),
        (
            "AIMET-ONNX",
            f"per-op enabled analysis (isolated analog{scaled})",
            str(report["ops"]),
            float(report["enabled_s"]),
        ),
    ]
    if report["mse_s"] is not None:
        what = "per-op MSE export (accumulated analog)"
        rows.append(("AIMET-ONNX", what, str(report["mse_ops"]), float(report["mse_s"])))
    return rows, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pplcnet-orientation")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--target", default="hailo8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--aimet-python", default=None)
    parser.add_argument("--aimet-ops", type=int, default=None)
    parser.add_argument("--no-aimet-mse", action="store_true", help="skip AIMET's MSE export")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("QUANTLENS_CACHE", "/tmp/qlcache")
    path = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_samples(SAMPLES[args.model], args.samples, root / "data", 0)
        opts = AnalyzeOptions(calib=data, target=args.target, run_dir=root / "run")
        setup = prepare_analysis(path, opts, None)
        rows = ours(setup)
        rows += onnxruntime_debug(setup, args.threads, root)
        extra: dict[str, object] = {}
        if args.aimet_python:
            aimet_rows, extra = aimet(
                setup, args.aimet_python, args.aimet_ops, not args.no_aimet_mse, root
            )
            rows += aimet_rows
    print_table(args, setup, rows, extra)


def print_table(args: argparse.Namespace, setup: Setup, rows: list[Row], extra: dict) -> None:
    unit = rows[0][3]
    print(f"model {args.model}, {len(setup.feeds)} samples, quantlens target {args.target}, ")
    print(f"{args.threads} threads, wall-clock seconds")
    print(f"{'tool':13s} {'what':58s} {'layers':>7s} {'s':>8s} {'passes':>7s}")
    for tool, what, count, seconds in rows:
        print(f"{tool:13s} {what:58s} {count:>7s} {seconds:8.2f} {seconds / unit:7.1f}")
    if extra:
        print(f"AIMET worst ops (enabled analysis, output SNR dB): {extra['worst_enabled']}")


if __name__ == "__main__":
    main()
