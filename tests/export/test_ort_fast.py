"""The deployable ONNX Runtime profile: ORT fuses its QDQ export into integer kernels, and the
emulator still computes what the exported graph computes.

The model has what the zoo models have: Conv+Relu, a residual Add, a SiLU (Sigmoid+Mul), a
HardSwish (no integer kernel in ORT), an Add of a constant, Concat, MaxPool, Gemm.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantlens.bench.latency import fused_op_counts
from quantlens.emulate.executor import Executor
from quantlens.emulate.plan import quantization_points
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import get_profile
from tests.export.test_qdq_export import MIN_SNR_DB, _check_export, min_max_plan

Feeds = list[dict[str, np.ndarray]]


def fusable_cnn(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int, gain: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * gain).astype(np.float32), name)

    inits = [
        weight("w1", 8, 3, 3, 3),
        weight("b1", 8, gain=0.1),
        weight("w2", 8, 8, 3, 3, gain=0.15),
        weight("w3", 8, 8, 1, 1),
        weight("w4", 8, 16, 1, 1),
        weight("shift", 1, 8, 1, 1),
        weight("wg", 10, 8 * 8 * 8, gain=0.03),
        weight("bg", 10, gain=0.1),
    ]
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"], name="relu1"),
        node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        node("Add", ["r1", "c2"], ["res"], name="add"),
        node("Conv", ["res", "w3"], ["c3"], name="conv3"),
        node("Sigmoid", ["c3"], ["s3"], name="sigmoid"),
        node("Mul", ["c3", "s3"], ["silu"], name="silu_mul"),
        node("HardSwish", ["res"], ["hs"], name="hardswish"),
        node("Concat", ["silu", "hs"], ["cat"], name="concat", axis=1),
        node("Conv", ["cat", "w4"], ["c4"], name="conv4"),
        node("Add", ["c4", "shift"], ["shifted"], name="add_const"),
        node("MaxPool", ["shifted"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        node("Flatten", ["pool"], ["flat"], name="flatten"),
        node("Gemm", ["flat", "wg", "bg"], ["y"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "fusable_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def cnn() -> tuple[ir.Model, Executor, Feeds]:
    model, _ = canonicalize(ir.serde.deserialize_model(fusable_cnn()), CanonicalizeOptions())
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    return model, Executor(model), feeds


def test_placement_follows_ort_fusions(cnn: tuple[ir.Model, Executor, Feeds]) -> None:
    model = cnn[0]
    points = quantization_points(
        model, Assignment(target="ort-cpu-fast"), get_profile("ort-cpu-fast")
    )
    quantized = set(points.activations)
    # Relu absorbed: conv1 writes its quantizer behind the Relu.
    assert "r1" in quantized and "c1" not in quantized
    # Integer ops' outputs and inputs. The Concat reads the HardSwish (a float op): an integer
    # Concat would cost a Q/DQ more than it saves, so it stays float and conv4 quantizes its input.
    assert {"x", "c2", "res", "c3", "s3", "silu", "cat", "c4"} <= quantized
    assert "hs" not in quantized
    # Add of a constant runs in float; MaxPool/Flatten on its float output stay float too;
    # the Gemm's input is quantized for the Gemm, and the graph output stays float.
    assert "shifted" not in quantized and "pool" not in quantized
    assert "flat" in quantized and "y" not in quantized


def test_ort_runs_integer_kernels_and_agrees(
    cnn: tuple[ir.Model, Executor, Feeds], tmp_path: Path
) -> None:
    model, executor, feeds = cnn
    plan = min_max_plan(model, executor, feeds, "ort-cpu-fast", {})
    exact, fused = _check_export(model, executor, feeds, plan, tmp_path / "q.onnx")
    assert min(exact.values()) >= MIN_SNR_DB, exact
    assert min(fused.values()) >= MIN_SNR_DB, fused
    ops = Counter(fused_op_counts(tmp_path / "q.onnx"))
    assert ops["QLinearConv"] == 4 and ops["Conv"] == 0, ops
    assert ops["QLinearAdd"] == 1 and ops["QLinearMul"] == 1 and ops["QLinearSigmoid"] == 1, ops
    assert ops["QLinearConcat"] == 0 and ops["QGemm"] + ops["QLinearMatMul"] == 1, ops
    assert ops["Relu"] == 0, ops  # removed before its Q (zero point at the grid's floor)


def test_ort_cpu_keeps_float_kernels(cnn: tuple[ir.Model, Executor, Feeds], tmp_path: Path) -> None:
    """The minimal `ort-cpu` placement is unchanged: ORT cannot fuse its Convs."""
    model, executor, feeds = cnn
    plan = min_max_plan(model, executor, feeds, "ort-cpu", {})
    _check_export(model, executor, feeds, plan, tmp_path / "q.onnx")
    ops = fused_op_counts(tmp_path / "q.onnx")
    assert ops.get("Conv", 0) >= 3, ops  # only a Conv reading a Conv fuses there


def test_mixed_modes_export_agrees(cnn: tuple[ir.Model, Executor, Feeds], tmp_path: Path) -> None:
    model, executor, feeds = cnn
    layers = {"conv2": "a16_w16", "conv3": "a8_w4", "conv4": "fp32", "gemm": "a16_w8"}
    plan = min_max_plan(model, executor, feeds, "ort-cpu-fast", layers)
    assert plan.activations["c2"].format.bits == 16  # type: ignore[union-attr]
    assert plan.weights["w3"].format.bits == 4  # type: ignore[union-attr]
    assert "w4" not in plan.weights or not plan.weights["w4"].is_int
    exact, fused = _check_export(model, executor, feeds, plan, tmp_path / "q.onnx")
    assert min(exact.values()) >= MIN_SNR_DB, exact
    assert min(fused.values()) >= MIN_SNR_DB, fused


@pytest.mark.zoo
@pytest.mark.parametrize(
    ("name", "kind"),
    [("pplcnet-orientation", "rotated-pages"), ("ppocr-v6-rec-small", "text-lines")],
)
def test_zoo_models_run_every_weighted_op_as_an_integer_kernel(name: str, kind: str) -> None:
    """On the real models ORT fuses every Conv/MatMul of the ort-cpu-fast export, and the
    export computes what the emulator does with ORT's fusions off."""
    import tempfile

    from quantlens.api import prepare
    from quantlens.data import zoo
    from quantlens.data.preprocess import load_inputs
    from quantlens.data.render import write_samples
    from quantlens.export import stepwise_code_error
    from quantlens.export.qdq import export_qdq

    entry = zoo.get_entry(name)
    with tempfile.TemporaryDirectory() as tmp:
        samples = write_samples(kind, 2, tmp, seed=1)  # type: ignore[arg-type]
        feeds = [
            {k: np.asarray(v) for k, v in f.items()} for f in load_inputs(samples, entry.input)
        ]
        shapes = {k: list(v.shape) for k, v in feeds[0].items()}
        model = prepare(zoo.fetch(name), shapes).model
        executor = Executor(model)
        plan = min_max_plan(model, executor, feeds, "ort-cpu-fast", {})
        path = export_qdq(model, plan, Path(tmp) / "q.onnx")
        ops = Counter(fused_op_counts(path))
        weighted = sum(1 for n in model.graph if n.op_type in ("Conv", "MatMul", "Gemm"))
        integer = ops["QLinearConv"] + ops["QLinearMatMul"] + ops["QGemm"]
        assert integer == weighted and ops["Conv"] + ops["MatMul"] + ops["FusedConv"] == 0, ops
        # Node by node from ORT's own inputs (end to end, one flipped tie cascades through the
        # OCR model's attention: its SNR says little about the export, see BENCHMARKS.md).
        steps = stepwise_code_error(executor, plan, path, feeds[0])
        assert max(e.max_steps for e in steps.values()) < 1.01, steps
        assert max(e.mismatched for e in steps.values()) < 0.01, steps
