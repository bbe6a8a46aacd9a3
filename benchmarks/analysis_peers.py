"""Per-layer quantization-noise analysis: quantlens vs ONNX Runtime's qdq_loss_debug vs AIMET-ONNX.

Method. One zoo model, N rendered samples through the model's own pre-processing, calibrated
once by quantlens for the target (not timed). Every tool gets the same canonical float model
(quantlens' canonicalized graph, saved as ONNX) and the same pre-processed tensors, in the same
batches (the largest batch quantlens' isolated mode picks; 1 for a fixed-batch model). CPU
seconds of the process doing the work (`time.process_time`; the AIMET worker measures its own),
torch and every ONNX Runtime session on `--threads` intra-op threads, ONNX Runtime's without
spin-waiting (spinning pool threads burn CPU time that does no work); wall seconds beside them.
quantlens rows are the fewest CPU seconds of 4 runs (the unit) or 2 (the modes: the first pays
for warm-up), peers run once (each builds its sessions anew anyway). The unit is one fully
quantized quantlens pass over the N samples in those batches (as in analysis_speed.py).
- quantlens accumulated: one float and one quantized pass, every layer's output compared
  (SNR, cosine, MSE, max error, histograms, scatter pairs), as `quantlens analyze` runs it;
- quantlens isolated: one float pass caching the layers' cuts, then per layer a re-run of its
  node and what follows, output SNR per layer (variant "both");
- ONNX Runtime `qdq_loss_debug` (its float-vs-QDQ debugging flow, the analog of accumulated):
  `modify_model_output_intermediate_tensors` on the float and the QDQ model, `collect_activations`
  of both over the batches (its default: graph optimizations off), `create_activation_matching`,
  `compute_activation_error`, `create_weight_matching`, `compute_weight_error`; timed whole, and
  its collect step apart. The QDQ model is quantlens' own export of the same plan
  (`export_qdq`), with each quantized activation's pre-Q/DQ tensor renamed to ORT's
  `<name>_QuantizeLinear_Input` (a graph input's Q/DQ output to `<name>_DequantizeLinear_Output`)
  so the tool's name matching finds the pairs (names only, not timed). Both tools then measure
  the same quantization: their SNRs on the layers' outputs are compared (printed);
- AIMET-ONNX QuantAnalyzer (`--aimet-python`, worker _aimet_quant_analyzer.py in AIMET's venv):
  per-op "enabled" analysis (analog of isolated: one op quantized, an output-SNR eval callback
  over all the batches, float reference pass included) and per-op MSE export (analog of
  accumulated), in AIMET's own default int8 scheme (min_max, per-channel weights), not the
  target's; quantsim setup and `compute_encodings` timed apart (not analysis).
  `--aimet-layers K` times K evenly spread ops in each and scales by the op count (said so).
NNCF has no per-layer noise analysis to time (one line says why).

    python benchmarks/analysis_peers.py [--model pplcnet-orientation] [--samples 16]
        [--target hailo8] [--threads 2] [--aimet-python /work/aimet-venv/bin/python]
        [--aimet-layers K] [--no-aimet-mse]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader
from onnxruntime.quantization import qdq_loss_debug as qld
from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX, QUANT_INPUT_SUFFIX

from analysis_speed import SAMPLES, full_pass  # this folder is on sys.path when run as a script
from quantlens.analysis import batches, choose_batch_size
from quantlens.analysis.accumulated import AccumulatedResult, run_accumulated
from quantlens.analysis.isolated import run_isolated
from quantlens.analyze import AnalyzeOptions, Setup, prepare_analysis
from quantlens.api import resolve_model
from quantlens.data.render import write_samples
from quantlens.export.qdq import export_qdq
from quantlens.ir.load import save_model

T = TypeVar("T")
HERE = Path(__file__).parent
Feed = dict[str, np.ndarray]
NNCF_LINE = (
    "NNCF 3.4.0: no per-layer noise analysis to time. Its only per-layer ranking lives inside "
    "quantize_with_accuracy_control (Ranker: each quantizer group reverted to float, a new "
    "session, the ranking subset re-validated); driving Ranker alone needs the NNCF graph, "
    "backend and Evaluator that loop builds, so it is timed as part of the search benchmark."
)


@dataclass
class Row:
    tool: str
    what: str
    covered: str
    cpu: float | None
    wall: float | None = None
    error: str = ""


def clock(fn: Callable[[], T]) -> tuple[T, float, float]:
    """The value, CPU seconds of this process (all its threads) and wall seconds of `fn`."""
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    return value, time.process_time() - cpu, time.perf_counter() - wall


def fewest(runs: int, fn: Callable[[], T]) -> tuple[T, float, float]:
    """The last value and the fewest CPU (and wall) seconds of `runs` runs."""
    results = [clock(fn) for _ in range(runs)]
    return results[-1][0], min(r[1] for r in results), min(r[2] for r in results)


# --- quantlens ------------------------------------------------------------------------------


def batch_size(setup: Setup) -> int:
    keep = {n for lt in setup.layers for n in lt.cut}  # as analysis_speed.py: isolated's cuts
    return choose_batch_size(setup.executor, setup.feeds, keep, 2048 << 20, 8)


def accumulated(setup: Setup, size: int) -> AccumulatedResult:
    ranges = {name: (t.min, t.max) for name, t in setup.calibration.tensors.items()}
    ex, plan, layers = setup.executor, setup.plan, setup.layers
    return run_accumulated(ex, plan, layers, batches(setup.feeds, size), ranges)


def quantlens_rows(setup: Setup, size: int) -> tuple[list[Row], AccumulatedResult]:
    ex, plan, layers = setup.executor, setup.plan, setup.layers
    _, unit, unit_wall = fewest(4, lambda: full_pass(setup, size))
    acc, t_acc, w_acc = fewest(2, lambda: accumulated(setup, size))
    _, t_iso, w_iso = fewest(
        2, lambda: run_isolated(ex, plan, layers, batches(setup.feeds, size), ("both",))
    )
    count = f"{len(layers)} layers"
    rows = [
        Row("quantlens", "one fully quantized pass (the unit)", "", unit, unit_wall),
        Row("quantlens", "accumulated: every layer output vs float", count, t_acc, w_acc),
        Row("quantlens", 'isolated "both": one layer at a time, output SNR', count, t_iso, w_iso),
    ]
    return rows, acc


# --- ONNX Runtime qdq_loss_debug ------------------------------------------------------------


class Batches(CalibrationDataReader):
    """The batches, one at a time, as ONNX Runtime's tools read them."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self.feeds = feeds
        self.iterator: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self.iterator, None)

    def rewind(self) -> None:
        self.iterator = iter(self.feeds)


def rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for info in [*graph.output, *graph.value_info]:
        if info.name == old:
            info.name = new


def ort_names(source: Path, target: Path) -> None:
    """quantlens' QDQ model with ORT's names for each activation's Q/DQ pair: the tool pairs
    `X_QuantizeLinear_Input` (before) with `X` (after), or `X` with `X_DequantizeLinear_Output`."""
    model = onnx.load(str(source))
    graph = model.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    inputs = {i.name for i in graph.input}
    weights = {i.name for i in graph.initializer}
    renames: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in weights:
            continue
        after = [r for r in readers.get(node.output[0], []) if r.op_type == "DequantizeLinear"]
        if len(after) != 1:
            continue
        before, rounded = node.input[0], after[0].output[0]
        if before in inputs:
            renames[rounded] = before + DEQUANT_OUTPUT_SUFFIX
        elif before not in renames:
            renames[before] = rounded + QUANT_INPUT_SUFFIX
    for old, new in renames.items():
        rename(graph, old, new)
    onnx.save(model, str(target))


def ort_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # its default
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@dataclass
class OrtResult:
    activations: dict[str, dict[str, float]]
    weights: dict[str, float]
    collect_cpu: float
    collect_wall: float


def ort_flow(float_model: Path, qdq: Path, feeds: list[Feed], threads: int) -> OrtResult:
    folder = qdq.parent
    aug_float, aug_qdq = folder / "float.aug.onnx", folder / "qdq.aug.onnx"
    qld.modify_model_output_intermediate_tensors(str(float_model), str(aug_float))
    qld.modify_model_output_intermediate_tensors(str(qdq), str(aug_qdq))
    options = ort_options(threads)

    def collect() -> tuple[dict, dict]:
        float_acts = qld.collect_activations(str(aug_float), Batches(feeds), options)
        return float_acts, qld.collect_activations(str(aug_qdq), Batches(feeds), options)

    (float_acts, qdq_acts), cpu, wall = clock(collect)
    matching = qld.create_activation_matching(qdq_acts, float_acts)
    errors = qld.compute_activation_error(matching)
    weights = qld.compute_weight_error(qld.create_weight_matching(str(float_model), str(qdq)))
    return OrtResult(errors, weights, cpu, wall)


def ort_rows(
    setup: Setup, feeds: list[Feed], threads: int, folder: Path
) -> tuple[list[Row], OrtResult | None]:
    float_model, exported, qdq = (folder / n for n in ("float.onnx", "ql.qdq.onnx", "qdq.onnx"))
    what = "qdq_loss_debug: augment, collect float+QDQ, match, SNR"
    try:
        save_model(setup.executor.model, float_model)
        export_qdq(setup.executor.model, setup.plan, exported)
        ort_names(exported, qdq)
        result, cpu, wall = clock(lambda: ort_flow(float_model, qdq, feeds, threads))
    except Exception as error:  # report why instead of stopping the other tools' rows
        return [Row("ONNX Runtime", what, "", None, error=f"{type(error).__name__}: {error}")], None
    matched = sum("xmodel_err" in e for e in result.activations.values())
    covered = f"{matched} act + {len(result.weights)} w"
    collect = result.collect_cpu, result.collect_wall
    rows = [
        Row("ONNX Runtime", what, covered, cpu, wall),
        Row("ONNX Runtime", "  of which collect_activations (both models)", "", *collect),
    ]
    return rows, result


def snr_gap(acc: AccumulatedResult, result: OrtResult) -> tuple[int, float]:
    """How many layer outputs both measured, and the largest |SNR difference| between them."""
    gaps = [
        abs(sums.snr_db - result.activations[name]["xmodel_err"])
        for name, sums in acc.tensors.items()
        if "xmodel_err" in result.activations.get(name, {}) and math.isfinite(sums.snr_db)
    ]
    return len(gaps), max(gaps, default=math.nan)


# --- AIMET-ONNX QuantAnalyzer -----------------------------------------------------------------


def run_aimet(args: argparse.Namespace, model: Path, feeds: list[Feed], folder: Path) -> dict:
    """The worker's report, or {"setup": {"error": ...}} when it produced none."""
    data = folder / "batches"
    data.mkdir()
    for index, feed in enumerate(feeds):
        arrays: dict[str, Any] = dict(feed)  # keyed by input name, as the worker reads them
        np.savez(data / f"{index:04d}.npz", **arrays)
    command = [args.aimet_python, str(HERE / "_aimet_quant_analyzer.py"), str(model), str(data)]
    command += ["--threads", str(args.threads)]
    command += [] if args.aimet_layers is None else ["--layers", str(args.aimet_layers)]
    command += ["--no-mse"] if args.no_aimet_mse else []
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return {"setup": {"error": f"worker exit {done.returncode}: {tail}"}}
    return json.loads(lines[-1])


def aimet_rows(report: dict[str, Any]) -> list[Row]:
    def row(key: str, what: str, counted: bool) -> Row:
        step = report.get(key, {"error": "not run (setup failed)"})
        if "error" in step:
            return Row("AIMET-ONNX", what, "", None, error=step["error"])
        covered = f"{step['ops']} ops" if counted else ""
        if counted and step["timed"] != step["ops"]:
            covered += f" ({step['timed']} timed, scaled)"
        return Row("AIMET-ONNX", what, covered, step["cpu_s"], step["wall_s"])

    return [
        row("setup", "quantsim setup, BatchNorm fold (not analysis)", False),
        row("calibration", "compute_encodings (not analysis)", False),
        row("enabled", "per-op enabled analysis, output SNR (isolated analog)", True),
        row("mse", "per-op MSE export (accumulated analog)", True),
    ]


# --- main -------------------------------------------------------------------------------------


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="pplcnet-orientation")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--target", default="hailo8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--aimet-python", default=None, help="AIMET venv's python; else skipped")
    parser.add_argument("--aimet-layers", type=int, default=None, help="time K ops, scale")
    parser.add_argument("--no-aimet-mse", action="store_true", help="skip AIMET's MSE export")
    return parser.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("QUANTLENS_CACHE", "/tmp/qlcache")
    path = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_samples(SAMPLES[args.model], args.samples, root / "data", 0)
        opts = AnalyzeOptions(calib=data, target=args.target, run_dir=root / "run")
        setup = prepare_analysis(path, opts, None)
        size = batch_size(setup)
        feeds = list(batches(setup.feeds, size))
        rows, acc = quantlens_rows(setup, size)
        ort_part, ort_result = ort_rows(setup, feeds, args.threads, root)
        rows += ort_part
        report: dict[str, Any] = {}
        if args.aimet_python:
            report = run_aimet(args, root / "float.onnx", feeds, root)
            rows += aimet_rows(report)
    print_header(args, setup, size)
    print_table(rows)
    print_notes(acc, ort_result, report)


def print_header(args: argparse.Namespace, setup: Setup, size: int) -> None:
    ex = setup.executor
    print(f"model {args.model}, {len(setup.feeds)} samples in batches of {size}, quantlens ")
    print(f"target {args.target}, {len(setup.layers)} layers, {len(ex.steps)} nodes, ")
    print(f"{args.threads} threads; CPU s of the working process, ratios on CPU s")


def print_table(rows: list[Row]) -> None:
    unit = rows[0].cpu or math.nan
    print(f"{'tool':12s} {'what':55s} {'covered':>24s} {'CPU s':>8s} {'wall s':>7s} {'passes':>7s}")
    for r in rows:
        if r.cpu is None:
            print(f"{r.tool:12s} {r.what:55s} FAILED: {r.error}")
            continue
        wall = f"{r.wall:7.2f}" if r.wall is not None else f"{'':7s}"
        print(f"{r.tool:12s} {r.what:55s} {r.covered:>24s} {r.cpu:8.2f} {wall} {r.cpu / unit:7.1f}")


def print_notes(acc: AccumulatedResult, result: OrtResult | None, report: dict) -> None:
    if result is not None:
        common, gap = snr_gap(acc, result)
        print(
            "ORT's QDQ model: quantlens' export of the same plan (Q/DQ tensors renamed to ORT's "
            f"names); SNR ORT vs quantlens accumulated on {common} common layer outputs: "
            f"max |diff| {gap:.3f} dB"
        )
    enabled = report.get("enabled", {})
    if enabled.get("worst"):
        among = f"{enabled['timed']} timed" if enabled["timed"] != enabled["ops"] else "all"
        print(f"AIMET worst ops of {among} (enabled analysis, output SNR dB): {enabled['worst']}")
    print(NNCF_LINE)


if __name__ == "__main__":
    main()
