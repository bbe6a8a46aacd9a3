"""Per-layer tensors of a vendor's model, for `quantlens compare`; run after the format's worker.

Runs INSIDE the vendor's venv and imports nothing from quantlens:

    <venv>/bin/python benchmarks/_vendor_layers.py JOB.json

JOB.json is the worker's job (`_vendor_tpu_mlir.py`, `_vendor_aimet.py`) plus "layers": the
.npz to write. One array per tensor, samples stacked along axis 0:
- tpu-mlir: `model_runner.py --dump_all_tensors` on the `_tpu.mlir` the worker's deploy kept
  (TPU-MLIR's interpreter; keys are TPU-MLIR op names, values dequantized);
- aimet: every activation of AIMET-ONNX's QuantizationSimModel with the file loaded, as its
  `LayerOutput` utility reads them (keys are the float model's tensor names; a quantized
  tensor's value is after its quantizer).
The last stdout line is one JSON object: {"layers": path or null, "error": null or a line}.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np


def tpu_mlir(job: dict[str, Any]) -> dict[str, np.ndarray]:
    import _vendor_tpu_mlir as worker  # the worker's helpers: same folder, same venv

    work = Path(job["workdir"]).resolve()
    found = sorted(work.glob(f"m_{worker.CHIP}_*_tpu.mlir"))
    if not found:
        raise worker.ToolError("the worker's deploy left no *_tpu.mlir")
    arrays = dict(np.load(job["inputs"]))
    stacked: dict[str, list[np.ndarray]] = {}
    for i, batch in enumerate(worker.samples(arrays, job["input_shapes"])):
        feed, got = work / f"layers{i}_in.npz", work / f"layers{i}_out.npz"
        np.savez(feed, **batch)
        args = [worker.tool("model_runner.py"), "--input", str(feed), "--model", str(found[0])]
        worker.run_tool([*args, "--dump_all_tensors", "--output", str(got)], work, f"layers{i}")
        for name, value in np.load(got).items():
            stacked.setdefault(name, []).append(np.asarray(value, np.float32))
    return {
        name: np.concatenate([np.atleast_1d(p) for p in parts]) for name, parts in stacked.items()
    }


def aimet(job: dict[str, Any]) -> dict[str, np.ndarray]:
    import onnx
    from aimet_onnx.layer_output_utils import LayerOutput

    import _vendor_aimet as worker

    encodings = worker._read_encodings(job, [])
    model = onnx.load(job["float_model"])
    sim, _ = worker._sim(model)
    worker._load(sim, encodings, strict=False)
    with tempfile.TemporaryDirectory() as scratch:
        layers = LayerOutput(sim.model.model, ["CPUExecutionProvider"], scratch)
    names = layers.activation_names
    arrays = {k: v.astype(np.float32) for k, v in np.load(job["inputs"]).items()}
    count = len(next(iter(arrays.values())))
    stacked: dict[str, list[np.ndarray]] = {}
    for i in range(count):
        values = layers.session.run(names, {k: v[i : i + 1] for k, v in arrays.items()})
        for name, value in zip(names, values):
            # AIMET names a quantizer's output `<tensor>_updated`: that is the tensor's value.
            stacked.setdefault(name.removesuffix("_updated"), []).append(np.asarray(value))
    return {
        name: np.concatenate([np.atleast_1d(p) for p in parts]) for name, parts in stacked.items()
    }


DUMPERS = {"tpu-mlir": tpu_mlir, "aimet": aimet, "qnn": aimet}


def main(job_path: str) -> dict[str, Any]:
    job = json.loads(Path(job_path).read_text())
    try:
        arrays = DUMPERS[job["format"]](job)
        out = Path(job["layers"])
        np.savez(out, **arrays)
        return {"layers": str(out), "error": None, "tensors": len(arrays)}
    except Exception:  # the vendor's own error, whatever its type, is the finding
        lines = [line for line in traceback.format_exc().splitlines() if line.strip()]
        return {"layers": None, "error": lines[-1] if lines else "unknown error"}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: _vendor_layers.py JOB.json", file=sys.stderr)
        sys.exit(2)
    report = main(sys.argv[1])
    sys.stdout.flush()
    print(json.dumps(report), flush=True)
