"""ONNX Runtime TensorQuantOverrides: quantize_static honours them, round trips, drops."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quantlens.errors import UserError
from quantlens.export.vendors import get_format
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan
from quantlens.vendor_io import export_vendor, import_vendor, quantize_static_kwargs
from tests.export.vendor_helpers import context, effective, make_run, model_index, small_model

ASSIGNMENT = Assignment(layers={"conv2": "a16_w16", "matmul": "fp32"})


class _Reader:
    """The calibration reader quantize_static wants, over the test's npz folder."""

    def __init__(self, folder: Path) -> None:
        self.feeds = iter([dict(np.load(f)) for f in sorted(folder.glob("*.npz"))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def _dq_inputs(model: onnx.ModelProto) -> dict[str, tuple[int, float | None]]:
    """Dequantized tensor -> (zero-point element type, scale) for every DequantizeLinear."""
    inits = {i.name: i for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
        zero = inits[node.input[2]]
        name = node.input[0].removesuffix("_quantized").removesuffix("_QuantizeLinear_Output")
        first = float(scale.reshape(-1)[0]) if scale is not None else None
        found[name] = (zero.data_type, first)
    return found


def test_quantize_static_follows_the_overrides(tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_static

    run_dir, _ = make_run(tmp_path, "ort-cpu", ASSIGNMENT)
    result = export_vendor(run_dir, "ort", tmp_path / "out" / "m.ort.json")
    main, float_model = (Path(f) for f in result.files)
    assert float_model.name == "m.float.onnx"
    kwargs = quantize_static_kwargs(main)
    assert kwargs["nodes_to_exclude"] == ["matmul"]
    out = tmp_path / "ort.qdq.onnx"
    quantize_static(float_model, out, _Reader(tmp_path / "calib"), **kwargs)
    dq = _dq_inputs(onnx.load(out))
    u8, i8 = onnx.TensorProto.UINT8, onnx.TensorProto.INT8
    u16, i16 = onnx.TensorProto.UINT16, onnx.TensorProto.INT16
    # conv2 is a16_w16: its input and weight are 16-bit; conv1 stays 8-bit; matmul is float.
    assert dq["r1"][0] == u16 and dq["w2"][0] == i16
    assert dq["x"][0] == u8 and dq["w1"][0] == i8
    assert "wm" not in dq
    plan = QuantPlan.load(run_dir / "plan.json")
    for name in ("x", "r1", "w1", "w2"):
        want = np.float32(plan.activations.get(name, plan.weights.get(name)).scale[0])
        assert np.float32(dq[name][1]) == want  # exact scales, not recalibrated ones
    # Exactly the planned quantizers: no outputs of its own, int32 biases derived by ORT.
    overrides = json.loads(main.read_text())["TensorQuantOverrides"]
    assert _quantized(onnx.load(out)) == set(overrides)


def _quantized(model: onnx.ModelProto) -> set[str]:
    """Tensors a QDQ model quantizes: activations a QuantizeLinear reads, weights a
    DequantizeLinear reads as initializers (int32 ones are the biases ORT derives)."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = model.graph.node
    acts = {n.input[0] for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    weights = {
        n.input[0].removesuffix("_quantized")
        for n in nodes
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type != onnx.TensorProto.INT32
    }
    return acts | weights


def test_the_usage_line_runs_as_printed(tmp_path: Path) -> None:
    """The line the export prints, pasted with the file's path, quantizes with no reader."""
    run_dir, _ = make_run(tmp_path, "ort-cpu", ASSIGNMENT)
    result = export_vendor(run_dir, "ort", tmp_path / "out" / "m.ort.json")
    out = tmp_path / "pasted.qdq.onnx"
    line = result.usage.replace("FILE", shlex.quote(result.files[0]))
    line = line.replace("out.qdq.onnx", shlex.quote(str(out)))
    assert line.startswith("python -c ")
    done = subprocess.run(
        [sys.executable, *shlex.split(line)[1:]], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    overrides = json.loads(Path(result.files[0]).read_text())["TensorQuantOverrides"]
    assert _quantized(onnx.load(out)) == set(overrides)


def test_round_trip(tmp_path: Path) -> None:
    run_dir, model = make_run(tmp_path, "ort-cpu", ASSIGNMENT)
    result = export_vendor(run_dir, "ort")
    assert result.dropped == [] and result.usage
    assert json.loads(Path(result.files[0]).read_text())["qdq_model"].endswith("model.qdq.onnx")
    back = import_vendor(Path(result.files[0]), "ort", model)
    index = model_index(model)
    assert effective(back, index) == effective(ASSIGNMENT, index)


def test_what_ort_cannot_say_is_dropped(tmp_path: Path) -> None:
    model = small_model(tmp_path)
    assignment = Assignment(layers={"conv1": "a8_w8_a16", "relu1": "a16_w16", "conv2": "fp16"})
    rendered = get_format("ort").export(context(assignment, model, "ort-cpu"))
    reasons = {d.layer: d.reason for d in rendered.dropped}
    assert set(reasons) == {"conv1", "relu1", "conv2"}
    assert "consumers" in reasons["conv1"] and "float32" in reasons["conv2"]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ('{"TensorQuantOverrides": {"r2": [{"quant_type": "QUInt16"}]}}', "did you mean"),
        ('{"TensorQuantOverrides": {"r1": [{"quant_type": "QUInt12"}]}}', "quant_type 'QUInt12'"),
        ('{"nodes_to_exclude": ["conv9"], "TensorQuantOverrides": {}}', "node 'conv9'"),
    ],
)
def test_bad_files_are_one_user_error(tmp_path: Path, payload: str, needle: str) -> None:
    file = tmp_path / "bad.json"
    file.write_text(payload)
    with pytest.raises(UserError) as err:
        import_vendor(file, "ort", small_model(tmp_path))
    assert needle in str(err.value)
    if "r2" in payload:
        assert "r1" in str(err.value).split("did you mean")[1]


def test_bare_overrides_mapping_reads(tmp_path: Path) -> None:
    file = tmp_path / "raw.json"
    file.write_text('{"r1": [{"quant_type": "QUInt16"}], "w2": [{"quant_type": "QInt16"}]}')
    assert import_vendor(file, "ort", small_model(tmp_path)).layers == {"conv2": "a16_w16"}
