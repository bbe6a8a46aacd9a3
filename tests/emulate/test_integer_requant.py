"""bm1684x's integer arithmetic (TPU-MLIR's INT8 lowering) against a numpy reference written
from TPU-MLIR's sources: Conv (per-channel 32-bit multiplier, half up), MatMul + bias Add
(per-tensor weight, one multiplier, half away from zero), Mul of two tensors, AveragePool and
a Concat of two grids (8-bit multipliers, half up)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx import TensorProto, helper, numpy_helper

from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.plan import quantization_points
from quantlens.emulate.requant import multiplier_and_shift, requant_spec, vendor_scale
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import int_format
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan, TensorQuant
from tests.helpers import minmax_plan

RNG = np.random.default_rng(7)


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    shape: list[int],
    outputs: tuple[str, ...] = ("y",),
) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model, _ = canonicalize(ir.serde.deserialize_model(proto), CanonicalizeOptions())
    return model


def _run(model: ir.Model, plan: QuantPlan, feed: np.ndarray) -> dict[str, np.ndarray]:
    executor = Executor(model)
    names = list(plan.activations)
    with torch.inference_mode():
        out = executor.run({"x": feed}, hooks=QuantHooks(plan), keep=names)
    return {k: v.numpy() for k, v in out.items()}


def _codes(plan: QuantPlan, name: str, value: np.ndarray) -> np.ndarray:
    return np.round(value.astype(np.float64) / plan.activations[name].scale[0])


def _dyadic(plan: QuantPlan, node: str, scales: dict[str, float]) -> QuantPlan:
    """The plan with these tensors' scales (exact binary fractions, so that the requantized
    values fall on ties and the rounding mode shows), `node`'s requantization redone."""
    for name, scale in scales.items():
        table = plan.activations if name in plan.activations else plan.weights
        quant = table[name]
        peak = scale * quant.format.qmax  # type: ignore[union-attr]
        count = len(quant.scale)
        update = {
            "scale": [scale] * count,
            "range_min": [-peak] * count,
            "range_max": [peak] * count,
        }
        table[name] = quant.model_copy(update=update)
    old = plan.requant[node]
    inputs = [plan.activations[n] for n in old.inputs]
    weight = plan.weights[old.weight] if old.weight else None
    plan.requant[node] = requant_spec(
        old.kind,
        inputs,
        plan.activations[old.output],
        weight=weight,
        window=old.window,
        rounding=old.rounding,
        bias_add=old.bias_add,
        axis=old.axis,
    )
    return plan


def _shift(value: np.ndarray, m: np.ndarray | int, n: np.ndarray | int, away: bool) -> np.ndarray:
    scaled = value * m / np.power(2.0, n)
    return np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) if away else np.floor(scaled + 0.5)


def test_multipliers_are_tpu_mlirs() -> None:
    # 32-bit multipliers (Conv, MatMul): the ratio is a float32, so the first shift that
    # represents it exactly wins (ppocr-v6-rec-small's tpu.Conv2D rshifts run from 24 to 30).
    m, n = multiplier_and_shift(0.0123, limit=2**31 - 1)
    assert m / 2.0**n == float(np.float32(0.0123)) and n <= 30 and m % 2 == 1
    # do_transfer's positive 8-bit pair for a ratio near 1 keeps the codes (doclayout's
    # Concat inputs: 0.20054 -> 0.19958 is MulShift(1, 0)).
    assert multiplier_and_shift(0.20054046 / 0.19958227, shifts=range(0, 31)) == (1, 0)


def test_multipliers_come_from_the_calibration_tables_thresholds() -> None:
    """TPU-MLIR's scales are the exported thresholds over qmax in float64, not our float32
    scales: pplcnet's second Conv, channel 14 (_tpu.mlir: multiplier 13000907, rshift 30;
    from the float32 scales it would be 6500453 >> 29)."""
    fmt = int_format("int8-sym").model_copy(update={"narrow": False})
    act_in = TensorQuant(name="a", format=fmt, scale=[0.10734264552593231], zero_point=[0])
    act_out = TensorQuant(name="b", format=fmt, scale=[0.13195712864398956], zero_point=[0])
    weight = TensorQuant(
        name="w", format=int_format("int8-sym"), scale=[0.01488450262695551] * 2, axis=0
    )
    spec = requant_spec("linear", [act_in], act_out, weight=weight, axis=1)
    assert (spec.multipliers[0], spec.rshifts[0]) == (13000907, 30)
    assert vendor_scale(act_in) == 13.6325160 / 127


def test_conv_relu_requantizes_per_channel_half_up() -> None:
    w = RNG.integers(-2, 3, (6, 3, 3, 3)).astype(np.float32)
    w[:, 0, 0, 0] = 2.0  # every channel's max is 2: scale 2/127 before the dyadic override
    b = RNG.integers(-3, 4, 6).astype(np.float32)
    model = _model(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
        ],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array((RNG.standard_normal((4, 6, 1, 1))).astype(np.float32), "w2"),
        ],
        [1, 3, 8, 8],
    )
    feed = RNG.integers(-3, 4, (1, 3, 8, 8)).astype(np.float32)
    plan = minmax_plan(model, feed)
    spec = plan.requant["conv"]
    assert spec.kind == "linear" and spec.output == "r" and len(spec.multipliers) == 6
    # Scales 1 (input, weight, bias) and 2 (output): every odd accumulator is a tie.
    plan = _dyadic(plan, "conv", {"x": 1.0, "w": 1.0, "b": 1.0, "r": 2.0})
    spec = plan.requant["conv"]
    assert set(zip(spec.multipliers, spec.rshifts, strict=True)) == {(1, 1)}
    got = _run(model, plan, feed)
    # Reference: integer convolution of the codes, int32 bias, x m_c >> n_c half up, Relu.
    acc = torch.nn.functional.conv2d(
        torch.from_numpy(feed.astype(np.float64)), torch.from_numpy(w.astype(np.float64)), padding=1
    ).numpy()
    acc = acc + b[None, :, None, None]
    expect = np.clip(np.floor(acc / 2 + 0.5), 0, 255)
    assert np.any(np.floor(acc / 2 + 0.5) != np.round(acc / 2))  # ties are there
    np.testing.assert_array_equal(_codes(plan, "r", got["r"]), expect)
    # ONNX Runtime's profile keeps float arithmetic.
    assert minmax_plan(model, feed, "ort-cpu").requant == {}


def test_matmul_bias_add_is_one_op_with_a_per_tensor_weight() -> None:
    w = RNG.integers(-2, 3, (16, 8)).astype(np.float32)
    w[0, 0] = 20.0  # one channel with a wider range: per-channel and per-tensor scales differ
    bias = RNG.integers(-3, 4, 8).astype(np.float32)
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
            helper.make_node("Add", ["mm", "bias"], ["y"], name="bias_add"),
        ],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias")],
        [1, 5, 16],
    )
    feed = RNG.integers(-3, 4, (1, 5, 16)).astype(np.float32)
    plan = minmax_plan(model, feed)
    assert len(plan.weights["w"].scale) == 1  # TPU-MLIR's MatMul: one weight scale
    spec = plan.requant["matmul"]
    assert spec.bias_add == "bias_add" and spec.rounding == "half-away-from-zero"
    plan = _dyadic(plan, "matmul", {"x": 1.0, "w": 1.0, "y": 2.0})
    got = _run(model, plan, feed)
    acc = feed.astype(np.float64) @ w + bias
    expect = np.clip(np.sign(acc) * np.floor(np.abs(acc) / 2 + 0.5), -128, 127)
    assert np.any(expect != np.round(acc / 2)) and np.any(expect != np.floor(acc / 2 + 0.5))
    np.testing.assert_array_equal(_codes(plan, "y", got["y"]), expect)


def test_mul_pool_and_concat_use_8_bit_multipliers() -> None:
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["a"], name="conv"),
            helper.make_node("Sigmoid", ["x"], ["g"], name="gate"),
            helper.make_node("Mul", ["a", "g"], ["p"], name="mul"),
            helper.make_node("GlobalAveragePool", ["p"], ["avg"], name="pool"),
            helper.make_node("Concat", ["a", "p"], ["y"], name="concat", axis=1),
        ],
        [numpy_helper.from_array(RNG.standard_normal((3, 3, 1, 1)).astype(np.float32), "w")],
        [1, 3, 6, 6],
        outputs=("y", "avg"),
    )
    feed = (RNG.standard_normal((1, 3, 6, 6)) * 2).astype(np.float32)
    plan = minmax_plan(model, feed)
    assert {plan.requant[n].kind for n in ("mul", "pool", "concat")} == {
        "product",
        "pool",
        "concat",
    }
    got = _run(model, plan, feed)
    a, g, p = (_codes(plan, n, got[n]) for n in ("a", "g", "p"))
    spec = plan.requant["mul"]
    lo, hi = (plan.activations["p"].format.qmin, plan.activations["p"].format.qmax)  # type: ignore[union-attr]
    expect = np.clip(_shift(a * g, spec.multipliers[0], spec.rshifts[0], away=False), lo, hi)
    np.testing.assert_array_equal(p, expect)
    spec = plan.requant["pool"]
    assert spec.window == 0  # global: 36 elements, known at run time
    m, n = multiplier_and_shift(spec.ratio / 36)
    total = p.sum(axis=(2, 3), keepdims=True)
    expect = _shift(total, m, n, away=False)
    fmt = plan.activations["avg"].format
    expect = np.clip(expect, fmt.qmin, fmt.qmax)  # type: ignore[union-attr]
    np.testing.assert_array_equal(_codes(plan, "avg", got["avg"]), expect)
    spec = plan.requant["concat"]
    parts = [
        _shift(codes, m, n, away=False)
        for codes, m, n in zip((a, p), spec.multipliers, spec.rshifts, strict=True)
    ]
    fmt = plan.activations["y"].format
    expect = np.clip(np.concatenate(parts, axis=1), fmt.qmin, fmt.qmax)  # type: ignore[union-attr]
    np.testing.assert_array_equal(_codes(plan, "y", got["y"]), expect)


def test_data_movement_inputs_are_read_on_their_owners_grid() -> None:
    """A Split's outputs keep the Conv's grid: the residual Add reading them is integer too
    (doclayout's C2f bottlenecks), and an Add of 0 shares its input's grid (TPU-MLIR removes
    it: ppocr's `q * c + 0` feeds the attention MatMul on q * c's scale)."""
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Split", ["c"], ["s0", "s1"], name="split", axis=1),
            helper.make_node("Add", ["s0", "s1"], ["sum"], name="add"),
            helper.make_node("Mul", ["sum", "half"], ["scaled"], name="scale"),
            helper.make_node("Add", ["scaled", "zero"], ["y"], name="plus_zero"),
        ],
        [
            numpy_helper.from_array(RNG.standard_normal((4, 3, 1, 1)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
        [1, 3, 4, 4],
    )
    feed = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    plan = minmax_plan(model, feed)
    assert plan.requant["add"].inputs == ["c", "c"]
    points = quantization_points(model, Assignment(target="bm1684x"), get_profile("bm1684x"))
    assert points.shared.get("y") == "scaled"  # no quantizer of its own
    got = _run(model, plan, feed)
    c = _codes(plan, "c", got["c"])
    spec = plan.requant["add"]
    terms = [
        _shift(part, m, n, away=False)
        for part, m, n in zip((c[:, :2], c[:, 2:]), spec.multipliers, spec.rshifts, strict=True)
    ]
    fmt = plan.activations["sum"].format
    expect = np.clip(terms[0] + terms[1], fmt.qmin, fmt.qmax)  # type: ignore[union-attr]
    np.testing.assert_array_equal(_codes(plan, "sum", got["sum"]), expect)


def test_inputs_and_weights_take_the_vendors_codes() -> None:
    """TPU-MLIR casts a graph input to int8 rounding half away from zero over the table's
    threshold / qmax (tpu.Cast), and rounds weights the same way: exact ties go up in
    magnitude, where QuantizeLinear's half to even would round half of them down."""
    w = RNG.standard_normal((2, 4, 1, 1)).astype(np.float32)
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        [numpy_helper.from_array(w, "w")],
        [1, 4, 2, 2],
    )
    plan = minmax_plan(model, RNG.uniform(-2, 2, (1, 4, 2, 2)).astype(np.float32))
    assert plan.requant["cast:x"].kind == "cast"
    # A binary step (its threshold 31.75 prints exactly) makes the halves exact ties.
    plan.activations["x"] = plan.activations["x"].model_copy(update={"scale": [0.25]})
    step = vendor_scale(plan.activations["x"])
    assert step == 0.25
    halves = np.arange(-8, 8, dtype=np.float64).reshape(1, 4, 2, 2) + 0.5
    feed = (halves * step).astype(np.float32)
    hooks = QuantHooks(plan)
    got = hooks.activation("x", torch.from_numpy(feed)).numpy()
    quotient = feed.astype(np.float64) / step
    expect = np.sign(quotient) * np.floor(np.abs(quotient) + 0.5)
    np.testing.assert_array_equal(_codes(plan, "x", got), expect)
    assert np.any(expect != np.round(quotient))  # half to even would differ
    scales = np.asarray(plan.weights["w"].scale, np.float64)
    codes = np.round(hooks.weight("w", torch.from_numpy(w)).numpy() / scales[:, None, None, None])
    quotient = w.astype(np.float64) / scales[:, None, None, None]
    np.testing.assert_array_equal(codes, np.sign(quotient) * np.floor(np.abs(quotient) + 0.5))


def test_concat_scales_as_tpu_mlir_writes_them() -> None:
    """yolov8 as TPU-MLIR 1.30.2 builds it (doclayout-yolov8n's _tpu.mlir): a head Conv read
    only by a Reshape read only by a Concat writes the Concat's scale; the SPPF Concat of a
    tensor and MaxPools of it keeps that tensor's scale."""
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, 4, 16], np.int64), "shape")
    pool = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("MaxPool", ["c"], ["p1"], name="pool1", **pool),
            helper.make_node("MaxPool", ["p1"], ["p2"], name="pool2", **pool),
            helper.make_node("Concat", ["c", "p1", "p2"], ["sppf"], name="sppf", axis=1),
            helper.make_node("Conv", ["x", "w"], ["head"], name="head"),
            helper.make_node("Reshape", ["head", "shape"], ["flat"], name="flatten"),
            helper.make_node("Conv", ["sppf", "w2"], ["z"], name="after_sppf"),
            helper.make_node("Reshape", ["z", "shape"], ["flat2"], name="flatten2"),
            helper.make_node("Concat", ["flat", "flat2"], ["y"], name="concat", axis=1),
        ],
        [
            w,
            shape,
            numpy_helper.from_array(RNG.standard_normal((4, 12, 1, 1)).astype(np.float32), "w2"),
        ],
        [1, 3, 4, 4],
    )
    points = quantization_points(model, Assignment(target="bm1684x"), get_profile("bm1684x"))
    assert points.shared.get("sppf") == "c"
    assert points.shared.get("head") == "y" and points.shared.get("flat") == "y"
    assert points.shared.get("z") == "y"


def test_tiny_conv_weights_keep_tpu_mlirs_smallest_scale() -> None:
    """TPU-MLIR's Conv weight scale is at least 1e-5 (Conv.cpp: max(w_max / 127, 1e-5f)):
    a channel of weights below 1.27e-3 gets fewer than 127 codes, as ppocr's Conv.42 has."""
    w = RNG.standard_normal((2, 3, 1, 1)).astype(np.float32)
    w[1] *= 1e-4 / np.abs(w[1]).max()  # max |w| 1e-4: 10 codes at scale 1e-5
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        [numpy_helper.from_array(w, "w")],
        [1, 3, 2, 2],
    )
    feed = RNG.standard_normal((1, 3, 2, 2)).astype(np.float32)
    scales = minmax_plan(model, feed).weights["w"].scale
    assert scales[1] == float(np.float32(1e-5)) and scales[0] > 1e-3
    assert minmax_plan(model, feed, "ort-cpu").weights["w"].scale[1] < 1e-5
