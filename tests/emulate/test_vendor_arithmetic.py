"""Each NPU profile's arithmetic: quantizers after the vendor's fusions, unsigned grids for
non-negative tensors (TPU-MLIR), fixed ranges and derived scales; ONNX Runtime unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantlens.emulate import Executor
from quantlens.emulate.plan import build_plan, quantization_points
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import IntFormat, int_format
from quantlens.schemes.profiles import get_profile, list_profiles
from quantlens.schemes.qparams import int_qparams


def arithmetic_model() -> ir.Model:
    """x -> Conv -> Relu -> r; r -> Conv -> c2 -> SiLU (Sigmoid, Mul) -> silu;
    Concat(r, silu) -> Mul 0.5 -> half -> Conv -> Softmax(axis 1) -> y."""
    rng = np.random.default_rng(0)

    def weight(name: str, cout: int, cin: int) -> onnx.TensorProto:
        array = (rng.standard_normal((cout, cin, 1, 1)) * 0.5).astype(np.float32)
        return numpy_helper.from_array(array, name)

    inits = [
        weight("w1", 4, 3),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1"),
        weight("w2", 4, 4),
        weight("w3", 5, 8),
        numpy_helper.from_array(np.array(0.5, np.float32), "half_c"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["s"], name="sigmoid"),
        helper.make_node("Mul", ["c2", "s"], ["silu"], name="silu"),
        helper.make_node("Concat", ["r", "silu"], ["cat"], name="concat", axis=1),
        helper.make_node("Mul", ["cat", "half_c"], ["half"], name="scale"),
        helper.make_node("Conv", ["half", "w3"], ["c3"], name="conv3"),
        helper.make_node("Softmax", ["c3"], ["y"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "arith",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4, 4])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model, _ = canonicalize(ir.serde.deserialize_model(proto), CanonicalizeOptions())
    return model


def _points(target: str):  # type: ignore[no-untyped-def]
    model = arithmetic_model()
    return model, quantization_points(model, Assignment(target=target), get_profile(target))


def _ranges(model: ir.Model, names: list[str]) -> dict[str, tuple[float, float]]:
    """Calibrated ranges: min and max of each tensor over a few random inputs."""
    executor = Executor(model)
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32)} for _ in range(4)]
    seen: dict[str, list[torch.Tensor]] = {}
    for feed in feeds:
        for name, value in executor.run(feed, outputs=[], keep=names).items():
            seen.setdefault(name, []).append(value)
    return {n: (float(torch.cat(v).min()), float(torch.cat(v).max())) for n, v in seen.items()}


def test_every_profile_rule_has_a_source() -> None:
    for profile in list_profiles():
        assert profile.arithmetic.undocumented() == [], profile.name
    fusions = {p.name: p.arithmetic.fusions for p in list_profiles()}
    assert fusions["bm1684x"] == "tpu-mlir" and fusions["qnn-htp"] == "qnn-htp"
    assert {fusions[h] for h in ("hailo8", "hailo8l", "hailo10h")} == {"hailo-dfc"}
    assert fusions["ort-cpu"] == "none"


def test_tpu_mlir_quantizes_a_fused_op_once_unsigned_when_non_negative() -> None:
    model, points = _points("bm1684x")
    # Conv+bias+Relu is one op (its Conv output is never an integer); SiLU is one op.
    assert {"c1", "s"} <= set(points.fused_away)
    assert "c1" not in points.activations and "s" not in points.activations
    assert {"r", "c2", "silu"} <= set(points.activations)
    assert points.scaled["half"] == ("cat", 0.5)
    assert points.fixed_ranges["y"] == (0.0, 1.0)
    # Read only by the Concat, SiLU writes the Concat's scale; the Relu is read by conv2 too.
    assert points.shared.get("silu") == "cat" and "r" not in points.shared
    ranges = _ranges(model, list(points.calibration_targets()))
    plan = build_plan(points, ranges, Executor(model).weights, "bm1684x")
    assert plan.activations["silu"].scale == plan.activations["cat"].scale
    relu = plan.activations["r"]
    assert isinstance(relu.format, IntFormat) and not relu.format.signed
    assert relu.scale[0] == pytest.approx(ranges["r"][1] / 255, rel=1e-6)
    c2 = plan.activations["c2"]
    assert isinstance(c2.format, IntFormat) and c2.format.signed  # has negatives
    half = plan.activations["half"]
    assert half.scale[0] == pytest.approx(plan.activations["cat"].scale[0] * 0.5, rel=1e-6)
    softmax = plan.activations["y"]
    assert not softmax.format.signed and softmax.zero_point == [0]  # type: ignore[union-attr]
    assert softmax.scale[0] == pytest.approx(1 / 255, rel=1e-6)


def test_unsigned_symmetric_grid_is_zero_based() -> None:
    fmt = int_format("int8-sym").model_copy(update={"signed": False})
    scale, zero = int_qparams(np.array([0.0]), np.array([2.55]), fmt)
    assert zero.tolist() == [0] and scale[0] == pytest.approx(0.01)
    assert (fmt.qmin, fmt.qmax) == (0, 255)


def test_hailo_quantizes_each_merged_layer_once() -> None:
    _, points = _points("hailo8")
    # Conv+bias+Relu and Conv+SiLU are layers of their own: quantized at their outputs only.
    assert {"c1", "c2", "s"} <= set(points.fused_away)
    assert {"r", "silu"} <= set(points.activations)
    assert not {"c1", "c2", "s"} & set(points.activations)


def test_qnn_htp_fuses_its_supergroups() -> None:
    _, points = _points("qnn-htp")
    assert "c1" in points.fused_away  # Conv+Relu supergroup (htp_quantsim_config_v73)
    assert "c1" not in points.activations
    # HardSwish/SiLU is no HTP supergroup: the Conv output keeps its quantizer.
    assert "c2" in points.activations


def test_ort_cpu_placement_is_unchanged_by_the_vendor_rules() -> None:
    _, points = _points("ort-cpu")
    assert points.fused_away == {} and points.scaled == {} and points.fixed_ranges == {}
    assert points.unsigned_ok == set()


def test_tpu_mlir_add_runs_on_integer_codes() -> None:
    """TPU-MLIR's INT8 Add: each input's code x m / 2^n, rounded half up, summed."""
    from quantlens.emulate.requant import multiplier_and_shift

    # The multipliers and shifts of two tpu.Add ops in ppocr-v6-rec-small's _tpu.mlir (1.30.2).
    assert multiplier_and_shift(0.014514611811023622 / 0.027147123622047242) == (17, 5)
    assert multiplier_and_shift(0.026671795275590552 / 0.027147123622047242) == (63, 6)
    onnx_model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["a", "b"], ["y"], name="add")],
            "add",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 64]) for n in "ab"],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model = ir.serde.deserialize_model(onnx_model)
    points = quantization_points(model, Assignment(target="bm1684x"), get_profile("bm1684x"))
    site = points.requantized["add"]
    assert (site.kind, site.inputs, site.output) == ("add", ("a", "b"), "y")
    ranges = {"a": (-1.0, 1.0), "b": (-0.5, 2.0), "y": (-1.5, 3.0)}
    plan = build_plan(points, ranges, {}, "bm1684x")
    spec = plan.requant["add"]
    rng = np.random.default_rng(3)
    feeds = {n: rng.uniform(-1, 2, (1, 64)).astype(np.float32) for n in "ab"}
    from quantlens.emulate.fakequant import QuantHooks

    got = Executor(model).run(feeds, hooks=QuantHooks(plan))["y"].numpy()
    scales = {n: plan.activations[n].scale[0] for n in ("a", "b", "y")}
    codes = {n: np.clip(np.round(feeds[n] / scales[n]), -127, 127) for n in "ab"}
    expect = sum(
        np.floor(codes[n] * m / 2.0**s + 0.5)
        for n, m, s in zip("ab", spec.multipliers, spec.rshifts, strict=True)
    )
    np.testing.assert_array_equal(np.round(got / scales["y"]), np.clip(expect, -128, 127))
    # ONNX Runtime's profile keeps float arithmetic.
    ort = quantization_points(model, Assignment(target="ort-cpu"), get_profile("ort-cpu"))
    assert ort.requantized == {}


def _aimet_codes(x: np.ndarray, scale: float, offset: int, bits: int) -> np.ndarray:
    """AIMET's quantizeValueCpu written out with numpy float32: x / delta - offset, then
    C's round() (half away from zero), clamped to the unsigned grid."""
    y = (x.astype(np.float32) / np.float32(scale)).astype(np.float32) - np.float32(offset)
    rounded = np.trunc(y) + np.sign(y) * (np.abs(y - np.trunc(y)) >= 0.5)
    return np.clip(rounded, 0, 2**bits - 1)


def test_qnn_htp_quantizers_round_as_aimet_after_the_offset() -> None:
    from quantlens.emulate.fakequant import OffsetHalfAwayQuantizer, TensorQuantizer
    from quantlens.schemes.qparams import TensorQuant

    fmt = int_format("uint8-asym")
    scale = np.float32(0.1)
    spec = TensorQuant(name="a", format=fmt, scale=[float(scale)], zero_point=[103])
    # Means of 6 codes (ties at k + 0.5 steps) and values just below a tie, which the float32
    # sum with the zero point moves onto it.
    codes = np.arange(-40, 40, dtype=np.float32)
    x = np.concatenate([(codes + 0.5) * scale, (codes + 0.4999999) * scale, codes / 6 * scale])
    ours = OffsetHalfAwayQuantizer(spec, torch.device("cpu"))(torch.from_numpy(x)).numpy()
    want = (_aimet_codes(x, float(scale), -103, 8) - 103) * scale
    np.testing.assert_array_equal(ours, want.astype(np.float32))
    # ONNX's half to even differs from it on the ties: the rule changes codes.
    onnx_way = TensorQuantizer(spec, torch.device("cpu"))(torch.from_numpy(x)).numpy()
    assert (onnx_way != ours).sum() > 10
    # A signed symmetric weight sits on AIMET's unsigned grid with offset -128.
    weight = TensorQuant(
        name="w", format=int_format("int8-sym"), scale=[0.01, 0.02], zero_point=[0, 0], axis=0
    )
    w = np.array([[0.005, -0.005, 1.265], [0.01, -0.03, 0.05]], np.float32)
    got = OffsetHalfAwayQuantizer(weight, torch.device("cpu"))(torch.from_numpy(w)).numpy()
    for row, s in enumerate((0.01, 0.02)):
        want_row = (_aimet_codes(w[row], s, -128, 8) - 128) * np.float32(s)
        np.testing.assert_array_equal(got[row], want_row.astype(np.float32))


def test_qnn_htp_adds_its_bias_in_float_but_exports_it_int32() -> None:
    from quantlens.emulate.fakequant import QuantHooks

    model, points = _points("qnn-htp")
    plan = build_plan(
        points, _ranges(model, list(points.calibration_targets())), Executor(model).weights,
        "qnn-htp",
    )  # fmt: skip
    assert plan.float_bias and plan.quantizer_rounding == "offset-half-away"
    bias = plan.weights["b1"]  # kept on its int32 grid for the exporters
    assert bias.bias_of is not None and bias.format.bits == 32  # type: ignore[union-attr]
    hooks = QuantHooks(plan)
    assert "b1" not in hooks.weights and "w1" in hooks.weights
    # Every other profile keeps the plan's own rounding and quantizes its biases.
    model, points = _points("ort-cpu")
    plan = build_plan(
        points, _ranges(model, list(points.calibration_targets())), Executor(model).weights,
        "ort-cpu",
    )  # fmt: skip
    assert not plan.float_bias and plan.quantizer_rounding == "half-to-even"
    assert "b1" in QuantHooks(plan).weights


def test_tpu_mlir_sub_tied_to_an_unsigned_concat_stays_signed() -> None:
    """TPU-MLIR makes a Sub's output signed (SetSubSignPattern) and does not tie a Concat's
    inputs of mixed sign to its grid (BackwardMutiInSingleOut): the Sub keeps the Concat's
    threshold on an INT8 grid (threshold/127), and the Concat rescales its codes into its
    UINT8 grid (doclayout-yolov8n's `/model.22/Sub_1` -> `Concat_2`, tpu.MulShift x2)."""
    from quantlens.emulate.fakequant import QuantHooks

    onnx_model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Sub", ["a", "b"], ["s"], name="sub"),
                helper.make_node("Relu", ["c"], ["r"], name="relu"),
                helper.make_node("Concat", ["r", "s"], ["y"], name="concat", axis=1),
            ],
            "subcat",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 64]) for n in "abc"],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model = ir.serde.deserialize_model(onnx_model)
    points = quantization_points(model, Assignment(target="bm1684x"), get_profile("bm1684x"))
    assert points.shared.get("s") == "y" and points.shared.get("r") == "y"
    # Non-negative calibrated ranges throughout: the Concat's grid is UINT8. The Sub's inputs
    # within its threshold: else TPU-MLIR runs it F16 (`float_when_input_exceeds_output`).
    ranges = {"a": (0.0, 3.0), "b": (0.0, 3.0), "c": (-1.0, 3.5), "y": (0.0, 3.5)}
    plan = build_plan(points, ranges, {}, "bm1684x")
    cat, sub, relu = (plan.activations[n] for n in ("y", "s", "r"))
    assert isinstance(cat.format, IntFormat) and not cat.format.signed
    assert isinstance(sub.format, IntFormat) and sub.format.signed
    assert sub.scale[0] == pytest.approx(3.5 / 127, rel=1e-6)
    assert relu.scale == cat.scale and not relu.format.signed  # type: ignore[union-attr]
    spec = plan.requant["concat"]
    assert spec.multipliers[0] == 1 and spec.rshifts[0] == 0
    factor = spec.multipliers[1] / 2.0 ** spec.rshifts[1]
    assert factor == pytest.approx(255 / 127, rel=0.01)
    rng = np.random.default_rng(4)
    # Inputs on their own grids, so that the Sub's float result is exact.
    feeds = {
        n: (rng.integers(0, 200, (1, 64)) * plan.activations[n].scale[0]).astype(np.float32)
        for n in "abc"
    }
    got = Executor(model).run(feeds, hooks=QuantHooks(plan))["y"].numpy()[:, 64:]
    codes = np.clip(np.round((feeds["a"] - feeds["b"]) / sub.scale[0]), -127, 127)
    expect = np.clip(np.floor(codes * factor + 0.5), 0, 255)
    np.testing.assert_array_equal(np.round(got / cat.scale[0]), expect)


def _qkv_model() -> ir.Model:
    """An attention's fused qkv projection: MatMul (8 -> 12) + bias -> Reshape (1, 4, 3, 2, 2)
    -> Transpose (2, 0, 3, 1, 4) -> three Slice+Squeeze (q, k, v), each scaled by 1."""
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((8, 12)).astype(np.float32)
    weight[:, 4:8] *= 0.3  # k's columns far smaller than q's: another scale
    weight[:, 8:] *= 0.1
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([1, 4, 3, 2, 2], np.int64), "shape"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "b"], ["qkv"], name="bias"),
        helper.make_node("Reshape", ["qkv", "shape"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[2, 0, 3, 1, 4]),
    ]
    outputs = []
    for i, part in enumerate("qkv"):
        inits += [
            numpy_helper.from_array(np.array([i], np.int64), f"start{i}"),
            numpy_helper.from_array(np.array([i + 1], np.int64), f"end{i}"),
        ]
        nodes += [
            helper.make_node("Slice", ["t", f"start{i}", f"end{i}", "axis0"], [f"s{part}"]),
            helper.make_node("Squeeze", [f"s{part}", "axis0"], [f"{part}"]),
        ]
        outputs.append(helper.make_tensor_value_info(part, TensorProto.FLOAT, [1, 2, 4, 2]))
    graph = helper.make_graph(
        nodes,
        "qkv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        outputs,
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model, _ = canonicalize(ir.serde.deserialize_model(proto), CanonicalizeOptions())
    return model


def test_tpu_mlir_split_qkv_matmul_quantizes_each_block_of_columns() -> None:
    """TPU-MLIR splits the fused qkv MatMul into three, each weight block per tensor with its
    own multiplier (ppocr-v6-rec-small's `Add.163_Add_matmul_1/3/5`)."""
    from quantlens.emulate.fakequant import QuantHooks

    model = _qkv_model()
    points = quantization_points(model, Assignment(target="bm1684x"), get_profile("bm1684x"))
    assert points.weight_blocks == {"w": 3}
    ranges = _ranges_qkv(model, list(points.calibration_targets()))
    plan = build_plan(points, ranges, Executor(model).weights, "bm1684x")
    weight = np.asarray(Executor(model).weights["w"].numpy(), np.float64)
    quant = plan.weights["w"]
    assert quant.axis == 1 and len(quant.scale) == 12
    for block in range(3):
        cols = slice(4 * block, 4 * block + 4)
        peak = np.abs(weight[:, cols]).max() / 127
        np.testing.assert_allclose(quant.scale[cols], peak, rtol=1e-6)
    spec = next(s for s in plan.requant.values() if s.kind == "linear")
    assert len(set(zip(spec.multipliers, spec.rshifts, strict=True))) == 3
    # The emulation computes each column on its own block's grid: integer codes, one
    # multiplier per block, half away from zero.
    rng = np.random.default_rng(5)
    x_quant = plan.activations["x"]
    x = (rng.integers(-100, 100, (1, 4, 8)) * x_quant.scale[0]).astype(np.float32)
    got = Executor(model).run({"x": x}, hooks=QuantHooks(plan), keep=[spec.output])
    out_scale = plan.activations[spec.output].scale[0]
    w_codes = np.clip(np.sign(weight) * np.floor(np.abs(weight) / quant.scale + 0.5), -127, 127)
    s_in = x_quant.scale[0]
    bias = Executor(model).weights["b"].numpy().astype(np.float64)
    acc = np.round(x / s_in) @ w_codes
    acc += np.sign(bias) * np.floor(np.abs(bias / (s_in * np.asarray(quant.scale))) + 0.5)
    factor = np.asarray(spec.multipliers, np.float64) / 2.0 ** np.asarray(spec.rshifts)
    expect = np.clip(np.sign(acc) * np.floor(np.abs(acc * factor) + 0.5), -128, 127)
    codes = np.round(got[spec.output].numpy() / out_scale)
    assert np.mean(codes == expect) == 1.0


def _ranges_qkv(model: ir.Model, names: list[str]) -> dict[str, tuple[float, float]]:
    executor = Executor(model)
    rng = np.random.default_rng(1)
    seen: dict[str, list[torch.Tensor]] = {}
    for _ in range(4):
        feed = {"x": rng.standard_normal((1, 4, 8)).astype(np.float32)}
        for name, value in executor.run(feed, outputs=[], keep=names).items():
            seen.setdefault(name, []).append(value)
    return {n: (float(torch.cat(v).min()), float(torch.cat(v).max())) for n, v in seen.items()}


def test_tpu_mlir_mul_by_a_constant_tensor_multiplies_codes() -> None:
    """TPU-MLIR quantizes a Mul's constant tensor operand to UINT8 over its max / 255 and
    multiplies the codes, then an 8-bit multiplier (Mul.cpp; yolov8's stride Mul: 32 is code
    255, 8 is code 64)."""
    from quantlens.emulate.fakequant import QuantHooks

    stride = np.array([[[8, 8, 16, 16, 32, 32]]], np.float32)
    onnx_model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Mul", ["x", "stride"], ["y"], name="mul")],
            "stride",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6])],
            initializer=[numpy_helper.from_array(stride, "stride")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model = ir.serde.deserialize_model(onnx_model)
    points = quantization_points(model, Assignment(target="bm1684x"), get_profile("bm1684x"))
    site = points.requantized["mul"]
    assert (site.kind, site.inputs, site.weight) == ("product", ("x",), "stride")
    plan = build_plan(
        points, {"x": (0.0, 10.0), "y": (0.0, 320.0)}, Executor(model).weights, "bm1684x"
    )
    const = plan.weights["stride"]
    assert not const.format.signed and const.scale[0] == pytest.approx(32 / 255)  # type: ignore[union-attr]
    spec = plan.requant["mul"]
    x_step, y_step = plan.activations["x"].scale[0], plan.activations["y"].scale[0]
    factor = spec.multipliers[0] / 2.0 ** spec.rshifts[0]
    assert factor == pytest.approx(x_step * 32 / 255 / y_step, rel=0.01)
    codes_x = np.arange(12, dtype=np.float64).reshape(1, 2, 6) * 21
    got = (
        Executor(model)
        .run({"x": (codes_x * x_step).astype(np.float32)}, hooks=QuantHooks(plan))["y"]
        .numpy()
    )
    # In float32 as Mul.cpp divides: 16 / (32 / 255) is 127.49999, code 127, not 128.
    quotient = stride / (np.float32(32) / np.float32(255))
    codes_c = np.floor(quotient.astype(np.float64) + 0.5)
    assert codes_c.ravel().tolist() == [64, 64, 127, 127, 255, 255]
    expect = np.clip(np.floor(codes_x * codes_c * factor + 0.5), 0, 255)
    np.testing.assert_array_equal(np.round(got / y_step), expect)
