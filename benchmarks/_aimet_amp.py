"""Run AIMET-ONNX's AMP (`choose_mixed_precision`) on an ONNX model (called by search_peers.py).

Runs in AIMET's own virtual environment (a peer, not a dependency), on ONNX Runtime CPU:
    AIMET_PYTHON _aimet_amp.py MODEL CALIB_DIR EVAL_DIR WORK_DIR [--fraction 0.1]
The same protocol as _nncf_accuracy_control.py: .npz inputs from quantlens' pre-processing, and
the metric of each evaluation asked of the caller (one JSON line each way over stdout/stdin).

Steps: a QuantizationSimModel with AIMET's defaults (w8a8), encodings from the calibration set;
the fp32 and w8a8 metrics on the evaluation set; then AMP over the candidates w16a16 and w8a8
(int) with `allowed_accuracy_drop` = FRACTION x (fp32 - w8a8), phase 1 (per-group
sensitivity) on the first --phase1-samples evaluation pages, phase 2 on all of them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from aimet_onnx.common.defs import CallbackFunc, QuantizationDataType
from aimet_onnx.mixed_precision import choose_mixed_precision
from aimet_onnx.quantsim import QuantizationSimModel

from _peer_protocol import Protocol  # a sibling file: the script's folder is on sys.path

INT = QuantizationDataType.int
CANDIDATES = [((16, INT), (16, INT)), ((8, INT), (8, INT))]  # (activations, weights)


class Scorer:
    """Runs a session on evaluation samples and has the caller score the outputs."""

    def __init__(self, protocol: Protocol, work: Path, evals: list[dict[str, np.ndarray]]):
        self.protocol, self.work, self.evals = protocol, work, evals
        self.calls = {"phase1": 0, "phase2": 0, "other": 0}
        self.samples = {"phase1": 0, "phase2": 0, "other": 0}

    def __call__(self, session: ort.InferenceSession, count: int, phase: str) -> float:
        names = [o.name for o in session.get_outputs()]
        arrays = {}
        for position, feed in enumerate(self.evals[:count]):
            for k, value in enumerate(session.run(None, feed)):
                arrays[f"s{position}_o{k}"] = value
        path = self.work / f"outputs-{os.getpid()}.npz"
        np.savez(path, **arrays)
        indices = list(range(min(count, len(self.evals))))
        reply = self.protocol.ask({"outputs": str(path), "indices": indices, "output_names": names})
        self.calls[phase] += 1
        self.samples[phase] += len(indices)
        return float(reply["metric"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("calib", type=Path)
    parser.add_argument("eval", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--phase1-samples", type=int, default=2)
    args = parser.parse_args()
    protocol = Protocol()
    model = onnx.load(str(args.model))
    calib = [dict(np.load(f)) for f in sorted(args.calib.glob("*.npz"))]
    evals = [dict(np.load(f)) for f in sorted(args.eval.glob("*.npz"))]
    scorer = Scorer(protocol, args.work, evals)
    full = len(evals)

    options = ort.SessionOptions()
    options.log_severity_level = 3
    fp32 = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    fp32_metric = scorer(fp32, full, "other")

    def forward(session: ort.InferenceSession, _: Any = None) -> None:
        for feed in calib:
            session.run(None, feed)

    sim = QuantizationSimModel(model, providers=["CPUExecutionProvider"])
    sim.compute_encodings(forward)
    w8a8_metric = scorer(sim.session, full, "other")
    gap = fp32_metric - w8a8_metric
    allowed = max(args.fraction * gap, 0.0)

    start = time.perf_counter()
    pareto = choose_mixed_precision(
        sim,
        CANDIDATES,
        CallbackFunc(lambda session, _: scorer(session, args.phase1_samples, "phase1")),
        CallbackFunc(lambda session, _: scorer(session, full, "phase2")),
        allowed_accuracy_drop=allowed,
        results_dir=str(args.work / "aimet-amp"),
        clean_start=True,
        forward_pass_callback=CallbackFunc(forward),
    )
    seconds = time.perf_counter() - start
    result_metric = scorer(sim.session, full, "other")
    quantizers = [q for q in sim.qc_quantize_op_dict.values() if q.enabled]
    widths: dict[str, int] = {}
    for q in quantizers:
        key = f"{q.bitwidth}-bit"
        widths[key] = widths.get(key, 0) + 1
    report = {
        "float": fp32_metric,
        "int8": w8a8_metric,
        "gap": gap,
        "allowed_accuracy_drop": allowed,
        "amp": result_metric,
        "pareto_points": None if pareto is None else len(pareto),
        "enabled_quantizers_by_width": widths,
        "amp_seconds": seconds,
        "calls": scorer.calls,
        "samples": scorer.samples,
        "samples_per_full_evaluation": full,
    }
    protocol.tell({"report": report})


if __name__ == "__main__":
    main()
