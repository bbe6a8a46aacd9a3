"""Time AIMET-ONNX's QuantAnalyzer per-layer analyses on an ONNX model (for analysis_peers.py).

Runs in AIMET's own virtual environment (a peer, not a dependency), on ONNX Runtime CPU:
    AIMET_PYTHON _aimet_quant_analyzer.py MODEL BATCHES_DIR [--threads T] [--layers K] [--no-mse]
BATCHES_DIR holds one .npz per batch, keyed by input name: the tensors, and the batches,
quantlens analyses. One JSON line on the original stdout reports CPU seconds of this process
(`time.process_time`, ONNX Runtime's pool threads included) and wall seconds of each step; a
step that fails reports its error instead. AIMET's logging goes to stderr.

Steps, as `QuantAnalyzer.analyze` does them, each timed on its own:
- setup: BatchNorm folded (`fold_all_batch_norms_to_weight`), `QuantizationSimModel` with
  AIMET's defaults (quant scheme min_max, int8 weights per-channel symmetric, int8 activations);
- calibration: `compute_encodings` over the batches;
- per-layer MSE (`enable_per_layer_mse_loss` + `export_per_layer_mse_loss`): AIMET's analog of
  accumulated mode, float vs quantized output of every quantized op over the batches (it builds
  two sessions per op and batch);
- per-layer "enabled" analysis (`perform_per_layer_analysis_by_enabling_quantizers`): AIMET's
  analog of isolated mode, every other quantizer off, one op's quantizers on, the eval callback
  run. The callback is the output SNR (dB, mean over outputs) against the float model over all
  the batches, so each op costs one quantsim pass; the float reference pass (a session and one
  pass) is timed with it, as quantlens' isolated time holds its float pass.
`--layers K` times K evenly spread ops (op names, as AIMET's loop groups them) in each analysis
and scales their time by the op count, the float reference pass added once; the MSE subset calls
the export's own per-op `_compute_mse_loss`. Every session AIMET builds runs on
`--threads` intra-op threads without spin-waiting (pool threads that spin between kernels burn
CPU time that does no work).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aimet_onnx.quantsim as aimet_quantsim
import aimet_onnx.utils as aimet_utils
import numpy as np
import onnx
import onnxruntime as ort
from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight
from aimet_onnx.quant_analyzer import QuantAnalyzer
from aimet_onnx.quantsim import QuantizationSimModel

sys.path.insert(0, str(Path(__file__).parent))
from _peer_protocol import Protocol

T = TypeVar("T")
Feed = dict[str, np.ndarray]
Step = dict[str, Any]


def _clock(fn: Callable[[], T]) -> tuple[T, Step]:
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    seconds = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
    return value, {k: round(v, 3) for k, v in seconds.items()}


def _failed(step: str) -> Step:
    """The error of a step that could not run, last line first (the report stays one line)."""
    lines = traceback.format_exc().strip().splitlines()
    return {"error": f"{step}: {lines[-1]}", "trace": lines[-6:]}


def _pin_sessions(threads: int) -> None:
    """Every session options object AIMET registers its custom ops on (the sim's, and the two
    per op the MSE export builds) gets `threads` intra-op threads and no spin-waiting."""
    register = aimet_utils.register_aimet_custom_ops

    def pinned(options: ort.SessionOptions) -> ort.SessionOptions:
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return register(options)

    aimet_utils.register_aimet_custom_ops = pinned
    aimet_quantsim.register_aimet_custom_ops = pinned  # type: ignore[attr-defined]


def _snr_db(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]]) -> float:
    """Mean over model outputs of 10·log10(Σ ref² / Σ (out - ref)²) over the batches."""
    values = []
    for index in range(len(reference[0])):
        signal = noise = 0.0
        for ref, out in zip(reference, outputs):
            r = ref[index].astype(np.float64)
            signal += float(np.sum(r**2))
            noise += float(np.sum((out[index].astype(np.float64) - r) ** 2))
        values.append(math.inf if noise == 0 else 10 * math.log10(signal / noise))
    return float(np.mean(values))


class OutputSnr:
    """AIMET's eval callback: output SNR of the session it is given against the float model."""

    def __init__(self, model: onnx.ModelProto, batches: list[Feed], threads: int) -> None:
        self.model, self.batches, self.threads = model, batches, threads
        self.reference: list[list[np.ndarray]] = []
        self.calls = 0

    def run_float(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        data = self.model.SerializeToString()
        session = ort.InferenceSession(data, options, ["CPUExecutionProvider"])
        self.reference = [session.run(None, feed) for feed in self.batches]

    def __call__(self, session: ort.InferenceSession) -> float:
        self.calls += 1
        return _snr_db(self.reference, [session.run(None, feed) for feed in self.batches])


def _op_quantizers(analyzer: QuantAnalyzer, sim: QuantizationSimModel) -> dict[str, list]:
    """Each op name AIMET's per-layer loop evaluates once (ops with enabled quantizers, grouped
    by name as it groups them), in its order, with those quantizers."""
    ops: dict[str, list] = {}
    for op in sim.connected_graph.ordered_ops:
        inputs, outputs, params = analyzer._get_op_quantizers(op, sim)
        if inputs or outputs or params:
            ops.setdefault(op.name_op, []).extend([*inputs, *outputs, *params.values()])
    return ops


def _spread(count: int, keep: int | None) -> list[int]:
    if keep is None or keep >= count:
        return list(range(count))
    return [int(i * count / keep) for i in range(keep)]


def _visit_only(analyzer: QuantAnalyzer, sim: QuantizationSimModel, keep: int | None) -> int:
    """Make AIMET's per-layer loop visit `keep` evenly spread op names only: the others'
    quantizers are switched off and hidden from it (its op lookup is filtered), so every visited
    op is still the only one quantized. Returns how many the full loop would evaluate."""
    ops = _op_quantizers(analyzer, sim)
    names = list(ops)
    chosen = {names[i] for i in _spread(len(names), keep)}
    if len(chosen) == len(names):
        return len(names)
    kept = {id(q) for name in chosen for q in ops[name]}  # an input quantizer is shared with
    for name in set(names) - chosen:  # its producer's output: a chosen op keeps it on
        for quantizer in ops[name]:
            quantizer.enabled = id(quantizer) in kept
    lookup = analyzer._get_op_quantizers

    def only_chosen(op: Any, sim_model: QuantizationSimModel) -> Any:
        return lookup(op, sim_model) if op.name_op in chosen else ([], [], {})

    analyzer._get_op_quantizers = only_chosen  # type: ignore[method-assign]
    return len(names)


def _mse_outputs(analyzer: QuantAnalyzer, sim: QuantizationSimModel) -> list[str]:
    """The op outputs `export_per_layer_mse_loss` visits, in its order."""
    nodes = analyzer._onnx_model.nodes()
    quantized = sim.qc_quantize_op_dict
    return [n.output[0] for n in nodes if n.op_type != "Constant" and n.output[0] in quantized]


def _mse(analyzer: QuantAnalyzer, sim: QuantizationSimModel, keep: int | None) -> Step:
    """The MSE export, or its per-op step on `keep` evenly spread ops, scaled to all."""
    outputs = _mse_outputs(analyzer, sim)
    picked = _spread(len(outputs), keep)
    if len(picked) == len(outputs):
        with tempfile.TemporaryDirectory() as folder:
            losses, step = _clock(lambda: analyzer.export_per_layer_mse_loss(sim, folder))
        return {**step, "ops": len(losses), "timed": len(losses)}

    def subset() -> None:
        for output in (outputs[i] for i in picked):
            analyzer._compute_mse_loss(output, output + "_updated", analyzer._onnx_model, sim.model)

    _, step = _clock(subset)
    scale = len(outputs) / len(picked)
    return {k: v * scale for k, v in step.items()} | {"ops": len(outputs), "timed": len(picked)}


def _enabled(
    analyzer: QuantAnalyzer, sim: QuantizationSimModel, evaluate: OutputSnr, keep: int | None
) -> Step:
    """The float reference pass once, plus the per-op loop (scaled to every op when subset)."""
    ops = _visit_only(analyzer, sim, keep)
    _, reference = _clock(evaluate.run_float)
    evaluate.calls = 0
    scores, loop = _clock(lambda: analyzer.perform_per_layer_analysis_by_enabling_quantizers(sim))
    timed = evaluate.calls  # one evaluation per visited op, the unit the time scales by
    step = {k: reference[k] + loop[k] * ops / timed for k in loop}
    worst = sorted((v, k) for k, v in scores.items() if k is not None)[:5]
    return step | {
        "ops": ops,
        "timed": timed,
        "worst": [[name, round(score, 1)] for score, name in worst],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("batches", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, default=None, help="time K ops, scale to all")
    parser.add_argument("--no-mse", action="store_true", help="skip the per-op MSE export")
    args = parser.parse_args()
    channel = Protocol()
    report: dict[str, Any] = {}
    try:
        _pin_sessions(args.threads)
        batches = [dict(np.load(f)) for f in sorted(args.batches.glob("*.npz"))]
        model = onnx.load(str(args.model))
        evaluate = OutputSnr(copy.deepcopy(model), batches, args.threads)

        def build() -> QuantizationSimModel:
            fold_all_batch_norms_to_weight(model)  # as QuantAnalyzer's own quantsim setup does
            return QuantizationSimModel(
                copy.deepcopy(model), dummy_input=batches[0], providers=["CPUExecutionProvider"]
            )

        sim, report["setup"] = _clock(build)
        _, report["calibration"] = _clock(lambda: sim.compute_encodings(batches))
        analyzer = QuantAnalyzer(model, batches[0], lambda *_: None, evaluate)
    except Exception:
        channel.tell({"setup": _failed("quantsim setup")})
        return
    if args.no_mse:
        report["mse"] = {"error": "skipped (--no-aimet-mse)"}
    else:
        try:
            analyzer.enable_per_layer_mse_loss(batches, len(batches))
            report["mse"] = _mse(analyzer, sim, args.layers)  # needs every quantizer still on
        except Exception:
            report["mse"] = _failed("export_per_layer_mse_loss")
    try:
        report["enabled"] = _enabled(analyzer, sim, evaluate, args.layers)
    except Exception:
        report["enabled"] = _failed("perform_per_layer_analysis_by_enabling_quantizers")
    channel.tell(report)


if __name__ == "__main__":
    main()
