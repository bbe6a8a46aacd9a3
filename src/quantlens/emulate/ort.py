"""ONNX Runtime as the float reference: same inputs, same thread count as the emulator."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from quantlens.errors import UserError

# On x86 CPUs without VNNI (AVX2, AVX-512F) MLAS multiplies uint8 x int8 with VPMADDUBSW, which
# adds two products into an int16 that saturates for full-range int8 weights (255 x 127 x 2);
# with this entry ORT uses its exact uint8 x uint8 kernels there instead (ORT 1.x
# onnxruntime_session_options_config_keys.h). Measured on an AMD EPYC with AVX2 only: a hailo8
# export's fused run was 21 dB from ORT's own unfused run, equal to it with the entry set.
EXACT_INTEGERS = "session.x64quantprecision"


def session_options(threads: int | None = None, exact_integers: bool = True) -> ort.SessionOptions:
    """Quiet CPU session options; `exact_integers`: integer kernels that never saturate (what
    a chip's int32 accumulator computes; only slower on x86 without VNNI)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if exact_integers:
        options.add_session_config_entry(EXACT_INTEGERS, "1")
    return options


class OrtRunner:
    """A CPU inference session over an ONNX file or serialized model."""

    def __init__(
        self, model: str | Path | bytes, threads: int | None = None, optimize: bool = True
    ) -> None:
        options = session_options(threads)
        if not optimize:  # ORT's fusions change the float kernels (a simulation keeps them)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"ONNX Runtime cannot load the model: {first}",
                "the float reference is needed; re-export the model or report the ORT error",
            ) from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise UserError(f"no data for model input(s) {missing}", "feed every model input")
        try:
            outputs = self.session.run(None, {k: feeds[k] for k in self.input_names})
        except Exception as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(
                f"ONNX Runtime failed on the input: {first}",
                "check the input shape and dtype against `quantlens inspect`",
            ) from exc
        return dict(zip(self.output_names, (np.asarray(o) for o in outputs)))
