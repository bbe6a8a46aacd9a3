"""Run NNCF's `quantize_with_accuracy_control` on an ONNX model (called by search_peers.py).

Runs in NNCF's own virtual environment (NNCF is a peer we compare against, not a dependency):
    NNCF_PYTHON _nncf_accuracy_control.py MODEL CALIB_DIR EVAL_DIR WORK_DIR [--fraction 0.1]
CALIB_DIR and EVAL_DIR hold .npz files keyed by input name: the tensors quantlens' own
pre-processing makes, saved by the caller. The task metric is not computed here: quantlens (and
torch) are not installed in NNCF's venv. Instead the validation function runs the candidate
model in ONNX Runtime, writes its outputs to WORK_DIR and asks the caller, over this process's
stdout/stdin (one JSON line each way), for the metric of those outputs on those evaluation
samples; the caller scores them with quantlens' detection evaluator. Everything NNCF or ONNX
Runtime print goes to stderr, so stdout carries only the protocol.

Steps: (1) `nncf.quantize` with the same calibration set and subset size, then the float and int8
metrics on the evaluation set; (2) `quantize_with_accuracy_control` with an absolute `max_drop`
of FRACTION x (float - int8); (3) the result's metric. The last protocol line is the report:
{"report": {...}}. The validation function returns the metric alone (as NNCF's own YOLOv8
example does), so NNCF ranks layers by per-sample metrics, calling it once per sample.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import nncf
import numpy as np
import onnx
import onnxruntime as ort
from nncf.common.logging import nncf_logger
from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

from _peer_protocol import Protocol  # a sibling file: the script's folder is on sys.path

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


class Validator:
    """The validation function NNCF calls: run the model, have the caller score the outputs."""

    def __init__(self, protocol: Protocol, work: Path, threads: int) -> None:
        self.protocol, self.work, self.threads = protocol, work, threads
        self.lock = threading.Lock()  # NNCF may rank in threads; the protocol is one line pair
        self.sessions: list[tuple[onnx.ModelProto, ort.InferenceSession]] = []
        self.calls = 0
        self.full_calls = 0
        self.samples = 0
        self.full_size = 0

    def session(self, model: onnx.ModelProto) -> ort.InferenceSession:
        # NNCF validates one model once per sample while ranking: keep a few sessions. The model
        # object is kept with its session, so its id cannot be reused while cached.
        for cached, session in self.sessions:
            if cached is model:
                return session
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = self.threads
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.sessions = [*self.sessions[-3:], (model, session)]
        return session

    def __call__(self, model: onnx.ModelProto, items: Iterable[tuple[int, dict]]) -> float:
        with self.lock:
            session = self.session(model)
            names = [o.name for o in session.get_outputs()]
            indices, arrays = [], {}
            for position, (index, feed) in enumerate(items):
                indices.append(int(index))
                for k, value in enumerate(session.run(None, feed)):
                    arrays[f"s{position}_o{k}"] = value
            path = self.work / f"outputs-{os.getpid()}.npz"
            np.savez(path, **arrays)
            reply = self.protocol.ask(
                {"outputs": str(path), "indices": indices, "output_names": names}
            )
            self.calls += 1
            self.samples += len(indices)
            self.full_calls += len(indices) == self.full_size
            return float(reply["metric"])

    def counts(self) -> dict[str, int]:
        return {"calls": self.calls, "full_calls": self.full_calls, "samples": self.samples}


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def quantized_ops(model: onnx.ModelProto) -> set[str]:
    """Nodes (other than Q/DQ) with at least one input coming from a DequantizeLinear."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    skip = {"QuantizeLinear", "DequantizeLinear"}
    return {
        n.name
        for n in model.graph.node
        if n.op_type not in skip and any(i in dq_outputs for i in n.input)
    }


def reverted_in_log(lines: list[str]) -> list[str] | None:
    """The operations NNCF's final summary says it reverted to float, or None without one."""
    for line in lines:
        if re.match(r"\d+ out of \d+ were reverted", line):
            return [name.strip() for name in line.splitlines()[1:] if name.strip()]
    return None


def op_types(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, int]:
    wanted = set(names)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.name in wanted:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("calib", type=Path)
    parser.add_argument("eval", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--fraction", type=float, default=0.1, help="max_drop / (float - int8)")
    parser.add_argument(
        "--max-drop", type=float, default=None, help="absolute max_drop (overrides --fraction)"
    )
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--ranking-workers", type=int, default=1)
    args = parser.parse_args()
    protocol = Protocol()
    captured = Captured()
    nncf_logger.addHandler(captured)

    model = onnx.load(str(args.model))
    calib = [dict(np.load(f)) for f in sorted(args.calib.glob("*.npz"))]
    evals = [(i, dict(np.load(f))) for i, f in enumerate(sorted(args.eval.glob("*.npz")))]
    calibration = nncf.Dataset(calib)
    validation = nncf.Dataset(evals, lambda item: item[1])
    validator = Validator(protocol, args.work, args.threads)
    validator.full_size = len(evals)

    # (1) NNCF's own int8 gap on this data, to set max_drop from.
    start = time.perf_counter()
    int8 = nncf.quantize(model, calibration, subset_size=len(calib))
    quantize_seconds = time.perf_counter() - start
    float_metric = validator(model, evals)
    int8_metric = validator(int8, evals)
    gap = float_metric - int8_metric
    max_drop = args.max_drop if args.max_drop is not None else max(args.fraction * gap, 0.0)
    onnx.save(int8, str(args.work / "nncf-int8.onnx"))

    # (2) Accuracy control, counted on its own.
    before = validator.counts()
    captured.lines.clear()
    start = time.perf_counter()
    controlled = nncf.quantize_with_accuracy_control(
        model,
        calibration,
        validation,
        validator,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calib),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            num_ranking_workers=args.ranking_workers
        ),
    )
    seconds = time.perf_counter() - start
    after = validator.counts()
    onnx.save(controlled, str(args.work / "nncf-accuracy-control.onnx"))

    # (3) The result, scored outside the counted run.
    controlled_metric = validator(controlled, evals)
    reverted_ops = sorted(quantized_ops(int8) - quantized_ops(controlled))
    logged = reverted_in_log(captured.lines)
    completion = [line for line in captured.lines if line.startswith("Algorithm completed")]
    report = {
        "float": float_metric,
        "int8": int8_metric,
        "gap": gap,
        "max_drop": max_drop,
        "accuracy_control": controlled_metric,
        "recovered_fraction": (controlled_metric - int8_metric) / gap if gap > 0 else None,
        "quantized_ops_int8": len(quantized_ops(int8)),
        "quantized_ops_result": len(quantized_ops(controlled)),
        "reverted_ops": logged if logged is not None else reverted_ops,
        "reverted_op_types": op_types(model, logged if logged is not None else reverted_ops),
        "inputs_no_longer_quantized": reverted_ops,
        "completion": completion[-1] if completion else "not reached (see log)",
        "quantize_seconds": quantize_seconds,
        "accuracy_control_seconds": seconds,
        "validation": {k: after[k] - before[k] for k in after},
        "samples_per_full_evaluation": len(evals),
        "nncf": nncf.__version__,
        "onnxruntime": ort.__version__,
    }
    protocol.tell({"report": report})


if __name__ == "__main__":
    main()
