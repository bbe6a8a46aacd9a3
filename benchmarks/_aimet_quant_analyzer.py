"""Time AIMET-ONNX's QuantAnalyzer per-layer analyses on an ONNX model (for analysis_peers.py).

Runs in AIMET's own virtual environment (a peer, not a dependency), on ONNX Runtime CPU:
    AIMET_PYTHON _aimet_quant_analyzer.py MODEL SAMPLES_NPZ_DIR [--ops K] [--no-mse]
SAMPLES_NPZ_DIR holds .npz files keyed by input name, the tensors quantlens analyses. One JSON
line on the original stdout reports wall-clock seconds; AIMET's logging goes to stderr.

Steps, as `QuantAnalyzer.analyze` does them, each timed on its own:
- setup: BatchNorm folded (`fold_all_batch_norms_to_weight`), `QuantizationSimModel` with
  AIMET's defaults (int8 per-channel symmetric weights, 8-bit min/max activations),
  `compute_encodings` over the samples;
- per-layer "enabled" analysis (`perform_per_layer_analysis_by_enabling_quantizers`): AIMET's
  analog of isolated mode, every other quantizer off, one op's quantizers on, the eval callback
  run; here the callback is the output SNR (dB, mean over outputs) against the float model over
  all the samples, so each op costs one quantsim pass over them. `--ops K` keeps K evenly spread
  ops (the time is then scaled by the op count, and said so);
- per-layer MSE (`enable_per_layer_mse_loss` + `export_per_layer_mse_loss`): AIMET's analog of
  accumulated mode, float vs quantized output of every quantized op over the samples (it builds
  two sessions per op).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight
from aimet_onnx.quant_analyzer import QuantAnalyzer
from aimet_onnx.quantsim import QuantizationSimModel

sys.path.insert(0, str(Path(__file__).parent))
from _peer_protocol import Protocol

Feed = dict[str, np.ndarray]


def _snr_db(reference: list[list[np.ndarray]], outputs: list[list[np.ndarray]]) -> float:
    """Mean over model outputs of 10·log10(Σ ref² / Σ (out - ref)²) over the samples."""
    values = []
    for index in range(len(reference[0])):
        signal = sum(float(np.sum(r[index].astype(np.float64) ** 2)) for r in reference)
        noise = sum(
            float(np.sum((o[index].astype(np.float64) - r[index]) ** 2))
            for r, o in zip(reference, outputs)
        )
        values.append(math.inf if noise == 0 else 10 * math.log10(signal / noise))
    return float(np.mean(values))


def _evaluator(model: onnx.ModelProto, samples: list[Feed]) -> Callable[[object], float]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    reference = [session.run(None, feed) for feed in samples]

    def evaluate(sim_session: object) -> float:
        outputs = [sim_session.run(None, feed) for feed in samples]  # type: ignore[attr-defined]
        return _snr_db(reference, outputs)

    return evaluate


def _keep_ops(analyzer: QuantAnalyzer, sim: QuantizationSimModel, count: int | None) -> int:
    """How many ops AIMET's per-layer loop visits (those with quantizers). With `count`, the loop
    is made to visit `count` evenly spread ones only: the others' quantizers are switched off
    first and hidden from it (its private op lookup is filtered), so every visited op is still
    the only one quantized. Run after the MSE export, which needs every quantizer on."""
    ops = []
    for op in sim.connected_graph.ordered_ops:
        inputs, outputs, params = analyzer._get_op_quantizers(op, sim)
        if inputs or outputs or params:
            ops.append((op, [*inputs, *outputs, *params.values()]))
    if count is None or count >= len(ops):
        return len(ops)
    step = len(ops) / count
    chosen = {id(ops[int(i * step)][0]) for i in range(count)}
    for op, quantizers in ops:
        if id(op) not in chosen:
            for quantizer in quantizers:
                quantizer.enabled = False
    original = analyzer._get_op_quantizers

    def only_chosen(op: object, sim_model: QuantizationSimModel) -> object:
        return original(op, sim_model) if id(op) in chosen else ([], [], {})

    analyzer._get_op_quantizers = only_chosen  # type: ignore[method-assign]
    return len(ops)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("samples", type=Path)
    parser.add_argument("--ops", type=int, default=None)
    parser.add_argument("--no-mse", action="store_true", help="skip the per-op MSE export")
    args = parser.parse_args()
    channel = Protocol()
    samples = [dict(np.load(f)) for f in sorted(args.samples.glob("*.npz"))]
    model = onnx.load(str(args.model))
    evaluate = _evaluator(model, samples)
    start = time.perf_counter()
    fold_all_batch_norms_to_weight(model)
    sim = QuantizationSimModel(
        copy.deepcopy(model), dummy_input=samples[0], providers=["CPUExecutionProvider"]
    )
    sim.compute_encodings(samples)
    setup = time.perf_counter() - start
    analyzer = QuantAnalyzer(model, samples[0], lambda *_: None, evaluate)
    mse: dict[str, float] = {}
    mse_seconds = None
    if not args.no_mse:
        analyzer.enable_per_layer_mse_loss(samples, len(samples))
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            mse = analyzer.export_per_layer_mse_loss(sim, folder)
        mse_seconds = round(time.perf_counter() - start, 2)
    ops = _keep_ops(analyzer, sim, args.ops)
    timed = min(args.ops or ops, ops)
    start = time.perf_counter()
    scores = analyzer.perform_per_layer_analysis_by_enabling_quantizers(sim)
    enabled = (time.perf_counter() - start) * ops / timed
    worst = sorted((v, k) for k, v in scores.items() if k is not None)[:5]
    channel.tell(
        {
            "setup_s": round(setup, 2),
            "ops": ops,
            "ops_timed": timed,
            "enabled_s": round(enabled, 2),
            "mse_s": mse_seconds,
            "mse_ops": len(mse),
            "worst_enabled": [[name, round(score, 1)] for score, name in worst],
        }
    )


if __name__ == "__main__":
    main()
