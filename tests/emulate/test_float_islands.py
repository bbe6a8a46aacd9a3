"""bm1684x's float ops at TPU-MLIR's F16 precision (profile `arithmetic.float_precision`):
a decomposed LayerNorm and an attention Softmax computed as TPU-MLIR's interpreter computes
them (Cast.cpp, LayerNorm.cpp, Softmax.cpp), checked against a numpy transcription of those
rules, and a Softmax along an axis longer than 8192 left float32 (Softmax.cpp
axis_dim_too_large)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.requant import vendor_scale
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.schemes.qparams import QuantPlan
from tests.helpers import minmax_plan

RNG = np.random.default_rng(11)
F16 = np.float16


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], shape: list) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model, _ = canonicalize(ir.serde.deserialize_model(proto), CanonicalizeOptions())
    return model


def _run(model: ir.Model, plan: QuantPlan, feed: np.ndarray, keep: list[str]) -> dict:
    with torch.inference_mode():
        out = Executor(model).run({"x": feed}, hooks=QuantHooks(plan), keep=keep)
    return {k: v.numpy() for k, v in out.items()}


def _f16(a: np.ndarray | float) -> np.ndarray:
    return np.asarray(a, np.float32).astype(F16).astype(np.float32)


def _away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _cast_in(plan: QuantPlan, name: str, value: np.ndarray) -> np.ndarray:
    """TPU-MLIR's cast of int8 codes to f16: F16(F16(scale) x code)."""
    codes = np.round(value / np.float32(plan.activations[name].scale[0]))
    return _f16(_f16(vendor_scale(plan.activations[name])) * codes)


def _cast_out_codes(plan: QuantPlan, name: str, value: np.ndarray) -> np.ndarray:
    """TPU-MLIR's cast of an F16 op's output to its grid: round(F16(v x F16(1 / s)))."""
    fmt = plan.activations[name].format
    inverse = _f16(1.0 / vendor_scale(plan.activations[name]))
    codes = _away(_f16(value.astype(np.float32) * inverse))
    return np.clip(codes, fmt.qmin, fmt.qmax)  # type: ignore[union-attr]


def _layernorm_model(rows: int, width: int) -> tuple[ir.Model, np.ndarray, np.ndarray]:
    """x -> LayerNorm decomposed as paddle2onnx writes it -> MatMul -> y."""
    gamma = (1 + 0.3 * RNG.standard_normal(width)).astype(np.float32)
    beta = (0.1 * RNG.standard_normal(width)).astype(np.float32)
    w = RNG.standard_normal((width, 8)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["centred"], name="sub"),
        helper.make_node("Pow", ["centred", "two"], ["squared"], name="pow"),
        helper.make_node("ReduceMean", ["squared"], ["var"], name="var", axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="add_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="sqrt"),
        helper.make_node("Div", ["centred", "std"], ["normed"], name="div"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="mul_gamma"),
        helper.make_node("Add", ["scaled", "beta"], ["ln"], name="add_beta"),
        helper.make_node("MatMul", ["ln", "w"], ["y"], name="proj"),
    ]
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(beta, "beta"),
        numpy_helper.from_array(w, "w"),
    ]
    return _model(nodes, inits, [1, rows, width]), gamma, beta


def _tpu_mlir_layernorm(x16: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """LayerNorm.cpp normlize_f32 on the f16 input with the f16 weights, float32."""
    mean = x16.mean(-1, keepdims=True, dtype=np.float32)
    centred = x16 - mean
    var = (centred * centred).mean(-1, keepdims=True, dtype=np.float32) + np.float32(1e-5)
    rstd = np.float32(1) / np.sqrt(var)
    return (centred * rstd) * _f16(gamma) + _f16(beta)


def test_layernorm_is_tpu_mlirs_f16_op() -> None:
    model, gamma, beta = _layernorm_model(64, 120)
    feed = (RNG.standard_normal((1, 64, 120)) * 3).astype(np.float32)
    plan = minmax_plan(model, feed)
    names = {"mean", "sub", "pow", "var", "add_eps", "sqrt", "div", "mul_gamma", "add_beta"}
    assert set(plan.float_nodes) == names
    assert plan.float_nodes["mean"].reads == {0: "x"} and plan.float_nodes["sub"].reads == {0: "x"}
    assert plan.float_nodes["mul_gamma"].constants == [1]
    assert not plan.float_nodes["add_beta"].round_output  # a LayerNorm's output stays f32
    assert plan.requant["cast:ln"].precision == "f16"
    got = _run(model, plan, feed, ["x", "ln"])
    expect = _tpu_mlir_layernorm(_cast_in(plan, "x", got["x"]), gamma, beta)
    ours = np.round(got["ln"] / np.float32(plan.activations["ln"].scale[0]))
    # Float32 summation order (torch's against numpy's) may move a value across an f16
    # rounding boundary: allow one code in 10^3, the F16 arithmetic moves ~1 in 10^2.
    assert np.mean(ours == _cast_out_codes(plan, "ln", expect)) >= 0.999
    # Float32 on the int8 input, rounded once, as before: other codes.
    x = got["x"]
    plain = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    plain_codes = np.round((plain * gamma + beta) / plan.activations["ln"].scale[0])
    assert np.mean(ours != plain_codes) > 0.002


def _softmax_model(shape: list) -> ir.Model:
    """x -> Softmax(axis -1) -> Mul by a constant (so its output is cast to int8) -> y."""
    nodes = [
        helper.make_node("Softmax", ["x"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "w"], ["y"], name="proj"),
    ]
    w = RNG.standard_normal((shape[-1] if isinstance(shape[-1], int) else 40, 4))
    return _model(nodes, [numpy_helper.from_array(w.astype(np.float32), "w")], shape)


def test_softmax_is_f16_up_to_tpu_mlirs_axis_limit() -> None:
    feed = (RNG.standard_normal((1, 8, 40)) * 2).astype(np.float32)
    model = _softmax_model([1, 8, 40])
    plan = minmax_plan(model, feed)
    spec = plan.float_nodes["softmax"]
    assert spec.round_output and spec.reads == {0: "x"} and spec.float32_axis_above == 0
    assert plan.requant["cast:p"].precision == "f16"
    got = _run(model, plan, feed, ["x", "p"])
    x16 = _cast_in(plan, "x", got["x"])
    e = np.exp(x16 - x16.max(-1, keepdims=True))
    expect = _cast_out_codes(plan, "p", _f16(e / e.sum(-1, keepdims=True)))
    ours = np.round(got["p"] / np.float32(plan.activations["p"].scale[0]))
    assert np.mean(ours == expect) >= 0.999
    # Longer than 8192 along its axis, TPU-MLIR runs the Softmax in float32.
    long = _softmax_model([1, 1, 8200])
    assert not minmax_plan(long, RNG.standard_normal((1, 1, 8200)).astype(np.float32)).float_nodes


def test_softmax_axis_known_at_run_time_decides_there() -> None:
    """ppocr's attention Softmax has a symbolic axis in the graph: the kernel checks it."""
    model = _softmax_model([1, 8, "w"])
    short = (RNG.standard_normal((1, 8, 40)) * 2).astype(np.float32)
    plan = minmax_plan(model, short)
    assert plan.float_nodes["softmax"].float32_axis_above == 8192
    got = _run(model, plan, short, ["p"])["p"]
    hooks = QuantHooks(plan)
    kernel = hooks.kernels["softmax"]
    ctx = Executor(model).producer["p"].ctx
    x = hooks.activation("x", torch.from_numpy(short))
    assert np.array_equal(_f16(kernel(ctx, [x]).numpy()), kernel(ctx, [x]).numpy())
    assert np.array_equal(hooks.activation("p", kernel(ctx, [x])).numpy(), got)
    wide = torch.from_numpy((RNG.standard_normal((1, 8, 8200)) * 2).astype(np.float32))
    wide = hooks.activation("x", wide)
    plain = torch.softmax(wide, -1)
    assert torch.equal(kernel(ctx, [wide]), plain)  # float32, not rounded to f16
    assert not torch.equal(_as_f16(plain), plain)


def _as_f16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def test_other_profiles_have_no_float_nodes() -> None:
    model, _, _ = _layernorm_model(4, 16)
    feed = RNG.standard_normal((1, 4, 16)).astype(np.float32)
    for target in ("ort-cpu", "qnn-htp", "hailo8"):
        assert not minmax_plan(model, feed, target).float_nodes


def _box_model(anchor: np.ndarray) -> ir.Model:
    """yolov8's box decoding as doclayout-yolov8n has it: s = anchor - x, t = x + anchor,
    s1 = t - s, a2 = (s + t) / 2, y = Concat(a2, s1)."""
    nodes = [
        helper.make_node("Sub", ["anchor", "x"], ["s"], name="sub"),
        helper.make_node("Add", ["x", "anchor"], ["t"], name="add"),
        helper.make_node("Sub", ["t", "s"], ["s1"], name="sub1"),
        helper.make_node("Add", ["s", "t"], ["sum"], name="add2"),
        helper.make_node("Mul", ["sum", "half"], ["a2"], name="half"),
        helper.make_node("Concat", ["a2", "s1"], ["y"], name="concat", axis=1),
    ]
    inits = [
        numpy_helper.from_array(anchor, "anchor"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    return _model(nodes, inits, [1, 2, 64])


def test_sub_is_f16_where_an_input_spans_more_than_its_output() -> None:
    """TPU-MLIR 1.30.2 lowers doclayout's box Subs F16 (an input's range above the Sub's
    threshold); the second Sub reads the first's f16 value while the Add reads its int8 cast."""
    anchor = (np.arange(128, dtype=np.float32).reshape(1, 2, 64) % 64 + 0.5) * 2
    model = _box_model(anchor)
    feed = RNG.uniform(0, 8, (1, 2, 64)).astype(np.float32)
    plan = minmax_plan(model, feed)
    assert set(plan.float_nodes) == {"sub", "sub1"}
    assert plan.float_nodes["sub"].constants == [0] and plan.float_nodes["sub"].reads == {1: "x"}
    assert plan.float_nodes["sub1"].raw == {1: "s"} and plan.float_nodes["sub1"].reads == {0: "t"}
    assert plan.float_nodes["sub"].raw == {0: "anchor"}  # not as the Add quantizes it
    got = _run(model, plan, feed, ["x", "s", "t", "s1"])
    s16 = _f16(_f16(anchor) - _cast_in(plan, "x", got["x"]))
    s_codes = np.round(got["s"] / np.float32(plan.activations["s"].scale[0]))
    np.testing.assert_array_equal(s_codes, _cast_out_codes(plan, "s", s16))
    s1 = _f16(_cast_in(plan, "t", got["t"]) - s16)
    s1_codes = np.round(got["s1"] / np.float32(plan.activations["s1"].scale[0]))
    np.testing.assert_array_equal(s1_codes, _cast_out_codes(plan, "s1", s1))
    # Read through s's int8 cast instead, s1 would differ.
    through_cast = _f16(_cast_in(plan, "t", got["t"]) - _cast_in(plan, "s", got["s"]))
    assert np.any(_cast_out_codes(plan, "s1", through_cast) != s1_codes)


def test_sub_within_its_outputs_range_stays_integer() -> None:
    anchor = np.full((1, 2, 64), 0.5, np.float32)
    model = _box_model(anchor)
    plan = minmax_plan(model, RNG.uniform(-4, 4, (1, 2, 64)).astype(np.float32))
    assert "sub" not in plan.float_nodes  # 0.5 - x reaches 4.5, beyond x and the anchor


class _RoundHooks:
    """Rounds tensor `a` to integers; node `add` reads input 1 before the rounding."""

    def __init__(self) -> None:
        self.raw_reads = {"add": {1: "a"}}

    def weight(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def activation(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return torch.round(tensor) if name == "a" else tensor


def test_executor_gives_a_raw_read_the_value_before_the_hook() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Add", ["a", "a"], ["y"], name="add"),
    ]
    model = _model(nodes, [], [1, 8])
    x = np.linspace(0.1, 3.9, 8, dtype=np.float32).reshape(1, 8)
    y = Executor(model).run({"x": x}, hooks=_RoundHooks())["y"].numpy()
    np.testing.assert_allclose(y, np.round(x) + x)
    # A tensor fed at a cut has no value before the hook: the read falls back to it.
    cut = {"a": torch.from_numpy(np.round(x))}
    y = Executor(model).run(None, start=cut, hooks=_RoundHooks())["y"].numpy()
    np.testing.assert_array_equal(y, 2 * np.round(x))


def _conv_model(w: np.ndarray) -> ir.Model:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w"], ["y"], name="conv"),
    ]
    return _model(nodes, [numpy_helper.from_array(w, "w")], [1, 4, 8, 8])


def test_power_of_two_conv_weights_stay_exact() -> None:
    """TPU-MLIR 1.30.2 keeps a Conv's weights of 0..7 as codes 0..7 at scale 1 (the DFL Conv
    of yolov8: 0..15), x 0.25 at scale 0.25; other weights get max / qmax per channel."""
    feed = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    integers = np.arange(8, dtype=np.float32).reshape(2, 4, 1, 1)
    for w, scale in ((integers, 1.0), (integers * 0.25, 0.25), (integers + 0.5, 0.5)):
        model = _conv_model(w)
        plan = minmax_plan(model, feed)
        assert plan.weights["w"].scale == [scale, scale]
        hooks = QuantHooks(plan)
        np.testing.assert_array_equal(hooks.weight("w", torch.from_numpy(w)).numpy(), w)
    plan = minmax_plan(_conv_model(integers * 0.3), feed)
    peaks = np.abs(integers * 0.3).reshape(2, -1).max(1) / 127
    np.testing.assert_allclose(plan.weights["w"].scale, peaks, rtol=1e-6)
    # One output channel (the DFL Conv's 1x16x1x1): the multiplier is s_in x 1 / s_out.
    plan = minmax_plan(_conv_model(np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)), feed)
    spec = plan.requant["conv"]
    ratio = vendor_scale(plan.activations["r"]) / vendor_scale(plan.activations["y"])
    assert spec.multipliers[0] * 2.0 ** -spec.rshifts[0] == pytest.approx(ratio, rel=1e-6)


def test_add_of_a_constant_tensor_adds_its_codes() -> None:
    """TPU-MLIR's Add of a tensor and a constant tensor (doclayout's anchors): the constant on
    UINT8 at max / 255, each input's code rescaled by its 8-bit multiplier, half up, summed."""
    anchor = (np.arange(64, dtype=np.float32).reshape(1, 1, 64) % 32 + 0.5) * 2
    nodes = [helper.make_node("Add", ["x", "anchor"], ["y"], name="add")]
    model = _model(nodes, [numpy_helper.from_array(anchor, "anchor")], [1, 1, 64])
    feed = RNG.uniform(0, 8, (1, 1, 64)).astype(np.float32)
    plan = minmax_plan(model, feed)
    spec = plan.requant["add"]
    assert spec.kind == "add" and spec.weight == "anchor" and spec.inputs == ["x", "anchor"]
    assert plan.weights["anchor"].scale == [pytest.approx(anchor.max() / 255, rel=1e-6)]
    got = _run(model, plan, feed, ["x", "y"])
    codes_x = np.round(got["x"] / np.float32(plan.activations["x"].scale[0]))
    codes_c = np.round(anchor / np.float32(anchor.max() / 255))
    terms = [
        np.floor(c * m / 2.0**n + 0.5)
        for c, m, n in zip((codes_x, codes_c), spec.multipliers, spec.rshifts, strict=True)
    ]
    fmt = plan.activations["y"].format
    expect = np.clip(terms[0] + terms[1], fmt.qmin, fmt.qmax)  # type: ignore[union-attr]
    np.testing.assert_array_equal(np.round(got["y"] / plan.activations["y"].scale[0]), expect)
