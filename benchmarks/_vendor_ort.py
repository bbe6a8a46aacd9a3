"""Check quantlens' ONNX Runtime overrides file in `onnxruntime.quantization.quantize_static`.

Runs in the project venv (it has onnxruntime and its quantization tools):
    python _vendor_ort.py JOB.json
JOB.json: {"format": "ort", "model", "variant", "float_model": the `.float.onnx` written beside
the file, "files": {".ort.json": path, ...}, "inputs": .npz (one float32 array per graph input),
"input_shapes", "workdir"}.

Steps, as a user does them: `quantize_static(float_model, out, reader,
**quantize_static_kwargs(file))` (the one line the export prints; the only quantlens import),
with the inputs as calibration data. Then, read from the model ORT wrote: which tensors it
quantizes (a QuantizeLinear on an activation, a quantized initializer for a weight or bias),
each against the file: the same type, scale and zero point exactly; none that the file does not
plan; int32 biases against those of our own QDQ model (the file's "qdq_model"). The QDQ model
then runs on the inputs; outputs go to workdir/outputs.npz keyed by output name.

The last stdout line is one JSON object: {"accepted", "error", "checks": {what: {"planned",
"honoured"}}, "outputs", "notes"}; everything else goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

Quant = tuple[int, np.ndarray, np.ndarray]  # (zero-point element type, scale, zero point)
QUANT_SUFFIX = "_quantized"


class Reader:
    """quantize_static's calibration reader: the inputs, one sample at a time."""

    def __init__(self, inputs: dict[str, np.ndarray]) -> None:
        count = len(next(iter(inputs.values())))
        self.feeds: Iterator[dict[str, np.ndarray]] = iter(
            [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(count)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def main(job_path: str) -> dict[str, Any]:
    job = json.loads(Path(job_path).read_text())
    result: dict[str, Any] = {"accepted": False, "error": None, "checks": {}, "outputs": None}
    result["notes"] = notes = [f"onnxruntime {_version()}"]
    try:
        file = Path(job["files"][".ort.json"])
        inputs = {k: v.astype(np.float32) for k, v in np.load(job["inputs"]).items()}
        out = Path(job["workdir"]) / "ort.qdq.onnx"
        _quantize(job["float_model"], file, out, inputs)
        result["accepted"] = True
        ort_model = onnx.load(out)
        produced = quantized_tensors(ort_model)
        payload = json.loads(file.read_text())
        result["checks"] = _checks(payload, produced, int32_biases(ort_model), notes)
        result["outputs"] = _run(out, inputs, Path(job["workdir"]))
        ours = payload.get("qdq_model")
        if ours and Path(ours).exists():  # same runtime both sides: only the files differ
            theirs = dict(np.load(result["outputs"]))
            snr = _snr(_outputs(Path(ours), inputs), theirs)
            notes.append(f"vs our QDQ model, both in ONNX Runtime: {snr:.2f} dB (worst output)")
    except Exception:  # the tool's own error, whatever its type, is the finding
        result["error"] = _last_line()
    return result


def _version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _quantize(float_model: str, file: Path, out: Path, inputs: dict[str, np.ndarray]) -> None:
    from onnxruntime.quantization import quantize_static

    from quantlens.export.vendors.ort import quantize_static_kwargs

    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(float_model, out, Reader(inputs), **quantize_static_kwargs(file))


def quantized_tensors(model: onnx.ModelProto) -> dict[str, Quant]:
    """Float tensor name -> how ORT's model quantizes it: activations by the QuantizeLinear
    that reads them, weights and biases by the quantized initializer a DequantizeLinear reads."""
    inits = {i.name: i for i in model.graph.initializer}
    found: dict[str, Quant] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            found[node.input[0]] = _quant(node, inits)
        elif node.op_type == "DequantizeLinear" and node.input[0] in inits:
            name = node.input[0].removesuffix(QUANT_SUFFIX)
            found[name] = _quant(node, inits)
    return found


def _quant(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> Quant:
    scale = numpy_helper.to_array(inits[node.input[1]]).reshape(-1)
    if len(node.input) > 2 and node.input[2] in inits:
        zero = inits[node.input[2]]
        return zero.data_type, scale, numpy_helper.to_array(zero).reshape(-1)
    value = inits.get(node.input[0])
    data_type = value.data_type if value is not None else onnx.TensorProto.UINT8
    return data_type, scale, np.zeros_like(scale, dtype=np.int64)


_TYPES = {
    "QUInt8": onnx.TensorProto.UINT8,
    "QInt8": onnx.TensorProto.INT8,
    "QUInt16": onnx.TensorProto.UINT16,
    "QInt16": onnx.TensorProto.INT16,
    "QUInt4": onnx.TensorProto.UINT4,
    "QInt4": onnx.TensorProto.INT4,
}


def _planned(payload: dict[str, Any]) -> dict[str, Quant]:
    planned = {}
    default = payload.get("activation_type", "QUInt8")
    for name, entries in payload["TensorQuantOverrides"].items():
        qtype = entries[0].get("quant_type", default)
        scale = np.asarray([e["scale"] for e in entries], np.float32)
        zero = np.asarray([e["zero_point"] for e in entries], np.int64)
        planned[name] = (_TYPES[qtype], scale, zero)
    return planned


def _checks(
    payload: dict[str, Any],
    produced: dict[str, Quant],
    ort_biases: dict[str, np.ndarray],
    notes: list[str],
) -> dict[str, dict[str, int]]:
    planned = _planned(payload)
    ours = payload.get("qdq_model")
    biases = int32_biases(onnx.load(ours)) if ours and Path(ours).exists() else {}
    exact = [name for name, want in planned.items() if _same(produced.get(name), want)]
    wrong = sorted(set(planned) - set(exact))
    extra = sorted(set(produced) - set(planned) - set(biases))
    if wrong:
        notes.append(f"planned, not as planned ({len(wrong)}): {', '.join(wrong[:8])}")
    if extra:
        notes.append(f"quantized by ORT, not planned ({len(extra)}): {', '.join(extra[:8])}")
    checks = {
        "planned tensors": {"planned": len(planned), "honoured": len(exact)},
        "only planned quantizers": {
            "planned": len(set(produced) - set(biases)),
            "honoured": len(set(produced) - set(biases) - set(extra)),
        },
    }
    if biases:
        checks["int32 biases as ours"] = _bias_check(biases, ort_biases, notes)
    return checks


def _same(got: Quant | None, want: Quant) -> bool:
    if got is None or got[0] != want[0] or got[1].shape != want[1].shape:
        return False
    return bool(np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2]))


def int32_biases(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """A QDQ model's int32 biases by float bias name."""
    return {
        init.name.removesuffix(QUANT_SUFFIX): numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.INT32 and init.name.endswith(QUANT_SUFFIX)
    }


def _bias_check(
    ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], notes: list[str]
) -> dict[str, int]:
    """ORT computes int32 biases from the scales itself; count those equal to ours."""
    equal, steps = 0, []
    for name, value in ours.items():
        got = theirs.get(name)
        if got is not None and np.array_equal(got, value):
            equal += 1
        elif got is not None and got.shape == value.shape:
            steps.append(int(np.max(np.abs(got.astype(np.int64) - value))))
    if steps:
        notes.append(f"{len(steps)} int32 biases differ from ours by at most {max(steps)} step(s)")
    missing = len(ours) - equal - len(steps)
    if missing:
        notes.append(f"{missing} of our int32 biases have no int32 counterpart in ORT's model")
    return {"planned": len(ours), "honoured": equal}


def _outputs(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sample by sample: the float model quantlens ships has the batch size of its shapes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    count = len(next(iter(inputs.values())))
    runs = [session.run(None, {k: v[i : i + 1] for k, v in inputs.items()}) for i in range(count)]
    names = [o.name for o in session.get_outputs()]
    return {name: np.concatenate([r[i] for r in runs]) for i, name in enumerate(names)}


def _run(model: Path, inputs: dict[str, np.ndarray], workdir: Path) -> str:
    out = workdir / "outputs.npz"
    np.savez(out, **_outputs(model, inputs))
    return str(out)


def _snr(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    values = []
    for name, ref in reference.items():
        ref64 = ref.astype(np.float64)
        noise = float(np.sum((candidate[name].astype(np.float64) - ref64) ** 2))
        values.append(np.inf if noise == 0 else 10 * np.log10(float(np.sum(ref64**2)) / noise))
    return float(min(values))


def _last_line() -> str:
    lines = [line for line in traceback.format_exc().strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


if __name__ == "__main__":
    report = main(sys.argv[1])
    sys.stdout.flush()
    print(json.dumps(report), flush=True)
