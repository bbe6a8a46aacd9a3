"""A plan as an ONNX simulation (`quantlens.export.simulation`): ONNX Runtime, with its graph
optimizations off, computes the emulator's values, ties rounded as each profile rounds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.ort import OrtRunner
from quantlens.errors import UserError
from quantlens.export.simulation import export_simulation, simulation_refusal
from quantlens.schemes.formats import FloatFormat, int_format
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan, TensorQuant
from tests.helpers import minmax_plan
from tests.models import conv_bn_model


def _exact_model() -> ir.Model:
    """x -> Relu -> r; r * 1 + w -> y: ops whose float32 results every runtime computes alike."""
    weight = numpy_helper.from_array(np.full((1, 4), 0.3, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Add", ["r", "w"], ["y"], name="add"),
        ],
        "exact",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _grid(name: str, fmt: str, scale: float, zero: int) -> TensorQuant:
    return TensorQuant(name=name, format=int_format(fmt), scale=[scale], zero_point=[zero])


def _tie_plan(rounding: str) -> QuantPlan:
    """Power-of-two scales, so x = (k + 0.5) x scale is an exact tie on every grid."""
    return QuantPlan(
        target="qnn-htp",
        activations={
            "x": _grid("x", "uint8-asym", 0.25, 128),
            "r": _grid("r", "uint16-asym", 0.125, 3),
            "y": TensorQuant(name="y", format=FloatFormat(name="fp16")),
        },
        weights={"w": _grid("w", "int8-sym", 0.0625, 0)},
        quantizer_rounding=rounding,  # type: ignore[arg-type]
    )


def _both(model: ir.Model, plan: QuantPlan, feed: np.ndarray, path: Path) -> tuple[np.ndarray, ...]:
    with torch.inference_mode():
        emulated = Executor(model).run({"x": torch.from_numpy(feed)}, hooks=QuantHooks(plan))
    simulated = OrtRunner(export_simulation(model, plan, path), optimize=False).run({"x": feed})
    name = next(iter(simulated))
    return emulated[name].numpy(), simulated[name]


@pytest.mark.parametrize("rounding", ["half-to-even", "offset-half-away"])
def test_the_simulation_rounds_every_tie_as_the_emulator(rounding: str, tmp_path: Path) -> None:
    """Ties on every grid, both roundings, a 16-bit grid, an fp16 output and a weight: ORT's
    values equal the emulator's bit for bit, and the two roundings do differ on this input."""
    feed = np.array([[0.125, 0.375, 0.625, -0.375]], np.float32)  # x / s: 0.5, 1.5, 2.5, -1.5
    model = _exact_model()
    emulated, simulated = _both(model, _tie_plan(rounding), feed, tmp_path / "sim.onnx")
    assert np.array_equal(emulated, simulated)
    other = "half-to-even" if rounding == "offset-half-away" else "offset-half-away"
    elsewhere, _ = _both(model, _tie_plan(other), feed, tmp_path / "other.onnx")
    assert not np.array_equal(elsewhere, emulated)


@pytest.mark.parametrize("rounding", ["half-to-even", "offset-half-away"])
def test_nan_lands_on_the_emulators_code(rounding: str, tmp_path: Path) -> None:
    """0/0 (a quantized variance rounded to zero) goes to the lowest code under half to even
    and to the top one under AIMET's rounding, in both runs; ONNX's Clip would keep NaN."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "x"], ["y"], name="div")],
        "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    plan = QuantPlan(
        target="qnn-htp",
        activations={"y": _grid("y", "uint8-asym", 0.25, 3)},
        quantizer_rounding=rounding,  # type: ignore[arg-type]
    )
    feed = np.array([[0.0, 1.0, -2.0, 0.0]], np.float32)
    emulated, simulated = _both(model, plan, feed, tmp_path / "sim.onnx")
    assert not np.isnan(emulated).any()
    assert np.array_equal(emulated, simulated)


def test_a_conv_model_on_qnn_htp_matches_the_emulator(tmp_path: Path) -> None:
    """Convolutions sum in MLAS's order, not torch's: the outputs agree to a code or less."""
    model = ir.from_proto(conv_bn_model(opset=13, unnamed=False))
    feed = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    plan = minmax_plan(model, feed, "qnn-htp")
    assert plan.quantizer_rounding == "offset-half-away" and plan.float_bias
    emulated, simulated = _both(model, plan, feed, tmp_path / "sim.onnx")
    output = next(iter(model.graph.outputs)).name
    step = plan.activations[output].scale[0]
    assert np.abs(emulated - simulated).max() <= step * 1.0001
    assert np.mean(emulated == simulated) >= 0.99
    ops = {node.op_type for node in onnx.load(tmp_path / "sim.onnx").graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}


def test_integer_arithmetic_is_refused_with_its_reason(tmp_path: Path) -> None:
    model = ir.from_proto(conv_bn_model(opset=13, unnamed=False))
    feed = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    refusal = simulation_refusal(get_profile("bm1684x"))
    assert refusal is not None and "integer codes" in refusal
    assert simulation_refusal(get_profile("qnn-htp")) is None
    assert simulation_refusal(get_profile("hailo8")) is None
    plan = minmax_plan(model, feed, "bm1684x")
    assert plan.requant
    with pytest.raises(UserError, match=r"integer\s+requantization"):
        export_simulation(model, plan, tmp_path / "sim.onnx")
    assert not (tmp_path / "sim.onnx").exists()
