"""The executor's analysis features: hooks, partial runs from a cut, batches, autograd."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
import torch

from quantlens.emulate import Executor
from quantlens.ir import CanonicalizeOptions, canonicalize
from tests.models import conv_bn_model


@pytest.fixture
def executor() -> Executor:
    proto = conv_bn_model(unnamed=False)
    model, _ = canonicalize(ir.serde.deserialize_model(proto), CanonicalizeOptions())
    return Executor(model)


def _x(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)).astype(np.float32)


class Recorder:
    def __init__(self) -> None:
        self.weights: list[str] = []
        self.activations: list[str] = []

    def weight(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        self.weights.append(name)
        return tensor

    def activation(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        self.activations.append(name)
        return tensor


def test_hooks_see_every_tensor_and_weight(executor: Executor) -> None:
    recorder = Recorder()
    executor.run({"x": _x()}, hooks=recorder)
    assert recorder.activations == ["x", *executor.activation_names()]
    used = {n for step in executor.steps for n in step.inputs if n in executor.weights}
    assert set(recorder.weights) == used


def test_hooks_can_replace_tensors(executor: Executor) -> None:
    class ZeroRelu(Recorder):
        def activation(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(tensor) if name == "r1" else tensor

    out = executor.run({"x": _x()}, hooks=ZeroRelu())["y"]
    # Everything after the zeroed tensor is the bias alone.
    bias = executor.weights["bias"]
    torch.testing.assert_close(out, bias.expand_as(out))


def test_partial_run_from_cut_matches_full_run(executor: Executor) -> None:
    full = executor.run({"x": _x()}, keep=["r1"])
    cut = {"r1": full["r1"]}
    partial = executor.run(start=cut)
    torch.testing.assert_close(partial["y"], full["y"], rtol=0, atol=0)
    ran = {s.ctx.name for s in executor.plan(["y"], cut.keys()).steps}
    assert "conv1" not in ran and "relu1" not in ran
    assert {"conv2", "reshape", "matmul", "add"} <= ran


def test_intermediate_outputs_and_batches(executor: Executor) -> None:
    one = [executor.run({"x": _x(1, s)}, outputs=["c2"])["c2"] for s in range(3)]
    batch = np.concatenate([_x(1, s) for s in range(3)])
    together = executor.run({"x": batch}, outputs=["c2"])["c2"]
    torch.testing.assert_close(together, torch.cat(one), rtol=1e-5, atol=1e-5)


def test_gradients_flow_to_inputs_and_weights(executor: Executor) -> None:
    x = torch.from_numpy(_x()).requires_grad_(True)
    out = executor.run({"x": x}, grad=True)["y"]
    out.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0

    class Trainable(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.w = executor.weights["w2"].clone().requires_grad_(True)

        def weight(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
            return self.w if name == "w2" else tensor

    hooks = Trainable()
    executor.run({"x": _x()}, hooks=hooks, grad=True)["y"].pow(2).mean().backward()
    assert hooks.w.grad is not None and float(hooks.w.grad.abs().sum()) > 0


def test_no_graph_mutation(executor: Executor) -> None:
    before = [(s.ctx.name, s.inputs, s.outputs) for s in executor.steps]
    executor.run({"x": _x()}, hooks=Recorder())
    assert [(s.ctx.name, s.inputs, s.outputs) for s in executor.steps] == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(executor: Executor) -> None:
    cpu = executor.run({"x": _x()})["y"]
    gpu = executor.to("cuda").run({"x": _x()})["y"].cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)


class Owning(Recorder):
    """Adds 1 to every tensor, in place when the executor hands it over as owned."""

    def __init__(self, owning: bool = True) -> None:
        super().__init__()
        self.owned: list[str] = []
        if not owning:
            self.activation_owned = None  # type: ignore[assignment,method-assign]

    def activation(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor + 1 if tensor.is_floating_point() else tensor

    def activation_owned(self, name: str, tensor: torch.Tensor, finite: bool) -> torch.Tensor:
        self.owned.append(name)
        return tensor.add_(1) if tensor.is_floating_point() else tensor


def _with_and_without_owning(ex: Executor, **run: object) -> tuple[dict, dict, list[str]]:
    hooks = Owning()
    with torch.inference_mode():
        got = ex.run(hooks=hooks, **run)  # type: ignore[arg-type]
        want = ex.run(hooks=Owning(owning=False), **run)  # type: ignore[arg-type]
    return got, want, hooks.owned


def test_owned_outputs_are_written_in_place_but_start_tensors_are_not(
    executor: Executor,
) -> None:
    full = executor.run({"x": _x()}, keep=["r1"])
    cached = full["r1"].clone()
    got, want, owned = _with_and_without_owning(executor, start={"r1": full["r1"]})
    torch.testing.assert_close(full["r1"], cached, rtol=0, atol=0)
    torch.testing.assert_close(got["y"], want["y"], rtol=0, atol=0)
    assert "y" in owned


def test_an_output_sharing_memory_with_an_input_is_not_owned() -> None:
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["i"]),
        helper.make_node("Neg", ["r"], ["n"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("i", "n")]
    proto = helper.make_model(
        helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 17)]
    )
    proto.ir_version = 8
    ex = Executor(ir.serde.deserialize_model(proto))
    got, want, owned = _with_and_without_owning(ex, feeds={"x": np.ones((1, 4), np.float32)})
    assert "r" in owned and "i" not in owned
    for name in ("i", "n"):
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


def test_outputs_below_a_division_by_a_computed_value_may_hold_nan() -> None:
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Sub", ["x", "x"], ["zero"]),
        helper.make_node("Div", ["zero", "zero"], ["nan"]),
        helper.make_node("Relu", ["nan"], ["y"]),
        helper.make_node("Div", ["x", "two"], ["half"]),
    ]
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    half = helper.make_tensor_value_info("half", TensorProto.FLOAT, [1, 4])
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(nodes, "g", info[:1], [info[1], half], [two])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    ex = Executor(ir.serde.deserialize_model(proto))
    assert {"x", "zero", "half"} <= ex.finite and not {"nan", "y"} & ex.finite
    # An integer quantizer on "nan" maps it onto the grid: the Relu after it computes finite.
    assert "y" in ex.finite_given(frozenset({"nan"})) and "nan" not in ex.finite

    from quantlens.emulate.fakequant import QuantHooks
    from quantlens.schemes.formats import int_format
    from quantlens.schemes.qparams import QuantPlan, TensorQuant

    grid = int_format("uint8")
    quant = {
        name: TensorQuant(name=name, format=grid, scale=[0.5], zero_point=[10])
        for name in ("nan", "y", "half")
    }
    plan = QuantPlan(target="test", activations=quant)
    with torch.inference_mode():
        out = ex.run({"x": np.ones((1, 4), np.float32)}, hooks=QuantHooks(plan))
    # NaN is the lowest code (0 - 10) * 0.5, as in ONNX Runtime; relu(-5) = 0 then.
    assert out["y"].tolist() == [[0.0] * 4] and out["half"].tolist() == [[0.5] * 4]


def test_fp16_overflow_keeps_the_nan_pass_downstream() -> None:
    """x * 1e5 rounds to Inf in fp16; Inf - Inf is NaN, which the uint8 quantizer after the
    (otherwise NaN-free) Sub must still map to the lowest code."""
    from onnx import TensorProto, helper

    from quantlens.emulate.fakequant import QuantHooks
    from quantlens.schemes.formats import FloatFormat, int_format
    from quantlens.schemes.qparams import QuantPlan, TensorQuant

    nodes = [
        helper.make_node("Mul", ["x", "big"], ["m"]),
        helper.make_node("Sub", ["m", "m"], ["d"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    d = helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 4])
    big = helper.make_tensor("big", TensorProto.FLOAT, [1], [1e5])
    proto = helper.make_model(
        helper.make_graph(nodes, "g", [x], [d], [big]), opset_imports=[helper.make_opsetid("", 17)]
    )
    proto.ir_version = 8
    ex = Executor(ir.serde.deserialize_model(proto))
    assert "d" in ex.finite  # finite in float: only the fp16 rounding makes the Inf
    plan = QuantPlan(
        target="test",
        activations={
            "m": TensorQuant(name="m", format=FloatFormat(name="fp16")),
            "d": TensorQuant(name="d", format=int_format("uint8"), scale=[0.5], zero_point=[10]),
        },
    )
    with torch.inference_mode():
        out = ex.run({"x": np.ones((1, 4), np.float32)}, hooks=QuantHooks(plan))
    assert out["d"].tolist() == [[-5.0] * 4]


def test_an_expanded_fresh_output_is_not_owned() -> None:
    from quantlens.emulate.executor import _owned

    one = torch.zeros(1)
    assert not _owned(one.expand(4, 3), [], [])  # 12 elements on one float: not writable
    fresh = torch.zeros(2, 3)
    assert _owned(fresh, [], [fresh]) and not _owned(fresh[:, 1:], [fresh], [])


@pytest.mark.parametrize("exponent", [2.0, 3.0])
def test_squares_and_cubes_match_onnx_runtime_bit_for_bit(exponent: float) -> None:
    """ONNX Runtime multiplies for Pow(x, 2) and Pow(x, 3); a vectorised pow is 1 ulp off on a
    few percent of values, and a quantizer after a LayerNorm's variance turns that into flips."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    e = numpy_helper.from_array(np.array(exponent, np.float32), "e")
    graph = helper.make_graph(
        [helper.make_node("Pow", ["x", "e"], ["y"])],
        "pow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [20000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [20000])],
        initializer=[e],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    x = np.random.default_rng(0).standard_normal(20000).astype(np.float32) * 10
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = session.run(None, {"x": x})
    got = Executor(ir.serde.deserialize_model(proto)).run({"x": x})["y"]
    np.testing.assert_array_equal(got.numpy(), want)


def test_exact_fp32_on_cuda_turns_tf32_off() -> None:
    """cuDNN convolutions default to TF32 on CUDA; the emulator asks for IEEE float32."""
    from quantlens.emulate.executor import exact_fp32_on_cuda

    cudnn: Any = torch.backends.cudnn  # torch's stubs lack cudnn.conv
    conv = cudnn.conv
    before = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    try:
        exact_fp32_on_cuda("tf32")
        assert conv.fp32_precision == "tf32"
        exact_fp32_on_cuda()
        assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("ieee",) * 2
    finally:
        conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = before
