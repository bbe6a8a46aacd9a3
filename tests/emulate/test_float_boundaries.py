"""A float island on bm1684x (profile `cast_float_boundaries`): TPU-MLIR casts an F32 op's
output to an INT8 user's grid with the tensor's own calibrated range (tpu.Cast, half away from
zero), while an F32 user reads the float value. Before, the integer reader read the float value,
and a float Concat handed its range to its inputs as an INT8 Concat does: on doclayout-yolov8n's
search point (39 nodes F32) the emulation was 10.6 dB from TPU-MLIR's interpreter on the scores,
58.0 dB after (BENCHMARKS.md)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import torch
from onnx import TensorProto, helper, numpy_helper

from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.plan import build_plan, quantization_points
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan

RNG = np.random.default_rng(5)
FLOAT_NODES = {"cat": "fp32", "sig": "fp32"}


def _model() -> ir.Model:
    """x -> two Convs -> Concat -> (Conv -> y1, Sigmoid -> y2): the Concat and the Sigmoid are
    the float island, the last Conv its integer reader."""
    weights = [
        numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("w1", (4, 3, 3, 3)), ("w2", (4, 3, 1, 1)), ("w3", (2, 8, 1, 1)))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2"),
        helper.make_node("Concat", ["c1", "c2"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w3"], ["y1"], name="conv3"),
        helper.make_node("Sigmoid", ["cat"], ["y2"], name="sig"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y1", "y2")],
        initializer=weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model, _ = canonicalize(ir.serde.deserialize_model(proto), CanonicalizeOptions())
    return model


def _plan(model: ir.Model, feed: np.ndarray, target: str) -> QuantPlan:
    assignment = Assignment(target=target, layers=FLOAT_NODES)
    points = quantization_points(model, assignment, get_profile(target))
    executor = Executor(model)
    seen = executor.run({"x": feed}, outputs=[], keep=list(points.calibration_targets()))
    ranges = {n: (float(v.min()), float(v.max())) for n, v in seen.items()}
    return build_plan(points, ranges, executor.weights, target)


def test_a_float_ops_integer_reader_reads_its_cast_and_a_float_reader_its_value() -> None:
    model = _model()
    feed = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
    plan = _plan(model, feed, "bm1684x")
    cat = plan.activations["cat"]
    assert cat.is_int and "cast:cat" in plan.requant and plan.requant["cast:cat"].kind == "cast"
    assert "cat" not in plan.requant  # the Concat itself computes in float
    assert plan.raw_reads == {"sig": {0: "cat"}}
    with torch.inference_mode():
        out = Executor(model).run({"x": feed}, hooks=QuantHooks(plan), keep=["c1", "c2", "cat"])
    c1, c2, cast = (out[n].numpy().astype(np.float64) for n in ("c1", "c2", "cat"))
    exact = np.concatenate([c1, c2], axis=1)  # float Concat of the int8 Convs' values
    # Each Conv keeps its own grid: a float Concat hands nothing back to its inputs.
    assert plan.activations["c1"].scale != plan.activations["c2"].scale
    step = float(cat.scale[0])
    assert abs(step * cat.format.qmax - np.abs(exact).max()) < 1e-5  # its own range
    assert not np.array_equal(cast, exact)
    codes = np.sign(exact / step) * np.floor(np.abs(exact / step) + 0.5)  # half away from zero
    expected = np.clip(codes, cat.format.qmin, cat.format.qmax)
    np.testing.assert_array_equal(np.round(cast / step), expected)
    expected_y2 = torch.sigmoid(torch.from_numpy(exact.astype(np.float32))).numpy()
    np.testing.assert_array_equal(out["y2"].numpy(), expected_y2)


def test_runtimes_that_read_float_values_keep_doing_so() -> None:
    """Without the rule (ONNX Runtime's QDQ: the reader's own DequantizeLinear), nothing is
    cast by the vendor or read raw."""
    model = _model()
    feed = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
    for target in ("ort-cpu", "ort-cpu-fast"):
        plan = _plan(model, feed, target)
        assert not plan.raw_reads
        assert not any(name.startswith("cast:") and name != "cast:x" for name in plan.requant)
