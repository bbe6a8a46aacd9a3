"""ort-cpu-fast's reduced weight range (-64..64) goes only where ORT fuses an 8-bit kernel.

On x86 without VNNI, MLAS's uint8 x int8 kernels (QLinearConv, QLinearMatMul, QGemm) add two
products into an int16 that saturates on full-range weights, so the profile puts 8-bit weights
on ORT's reduce_range grid. A layer that reads 16-bit activations (a16_w8) is never fused by
ORT's CPU QDQ selectors: it runs as a float Conv on dequantized values and keeps the full
grid -127..127. ORT itself runs the export here, with its default session options (the
kernels a user gets, which saturate on such a CPU) and with every optimization off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantlens.emulate.executor import Executor
from quantlens.export import export_qdq
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import QuantPlan
from tests.export.test_qdq_export import min_max_plan

Feeds = list[dict[str, np.ndarray]]
LAYERS = {"conv2": "a16_w8"}
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat")


def saturating_cnn(seed: int = 0) -> onnx.ModelProto:
    """Three Convs on non-negative inputs with non-negative weights: on full-range grids many
    adjacent uint8 x int8 pairs sum past 32,767. A float Abs between them keeps each Conv's
    input grid its own (conv2's 16-bit input does not widen conv1's or conv3's)."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        values = rng.uniform(0.5, 1.0, shape) / np.prod(shape[1:])
        return numpy_helper.from_array(values.astype(np.float32), name)

    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        node("Abs", ["c1"], ["a1"], name="abs1"),
        node("Conv", ["a1", "w2"], ["c2"], name="conv2"),
        node("Abs", ["c2"], ["a2"], name="abs2"),
        node("Conv", ["a2", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        node("Abs", ["c3"], ["y"], name="abs3"),
    ]
    graph = helper.make_graph(
        nodes,
        "saturating_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 12, 12])],
        initializer=[
            weight("w1", 32, 16, 3, 3),
            weight("w2", 32, 32, 1, 1),
            weight("w3", 32, 32, 3, 3),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[QuantPlan, Path, Feeds]:
    model, _ = canonicalize(ir.serde.deserialize_model(saturating_cnn()), CanonicalizeOptions())
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.uniform(0.0, 1.0, (1, 16, 12, 12)).astype(np.float32)} for _ in range(4)]
    plan = min_max_plan(model, Executor(model), feeds, "ort-cpu-fast", LAYERS)
    path = export_qdq(model, plan, tmp_path_factory.mktemp("reduced") / "q.onnx")
    return plan, path, feeds


def _codes(path: Path) -> dict[str, np.ndarray]:
    """The int8 weight codes of each Conv in the exported file, by Conv name."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    found = {}
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear", dq
        found[conv.name] = inits[dq.input[0]]
    return found


def test_reduced_range_only_under_8_bit_inputs(
    exported: tuple[QuantPlan, Path, Feeds],
) -> None:
    plan, path, _ = exported
    grids = {name: q.format for name, q in plan.weights.items()}
    reduced = [n for n, f in grids.items() if isinstance(f, IntFormat) and f.reduced]
    assert all(isinstance(f, IntFormat) and f.bits == 8 for f in grids.values()), grids
    assert reduced == ["w1", "w3"], grids
    peaks = {
        name: np.abs(codes.astype(np.int32)).reshape(len(codes), -1).max(axis=1)
        for name, codes in _codes(path).items()
    }
    assert set(peaks) == {"conv1", "conv2", "conv3"}, peaks
    # Per channel the largest weight lands on the grid's end: 64 reduced, 127 full range.
    assert (peaks["conv1"] == 64).all() and (peaks["conv3"] == 64).all(), peaks
    assert (peaks["conv2"] == 127).all(), peaks


def test_ort_fuses_only_the_reduced_layers_and_never_saturates(
    exported: tuple[QuantPlan, Path, Feeds], tmp_path: Path
) -> None:
    """ORT with its default options (saturating kernels where the CPU has them) computes what
    it computes with every optimization off, and runs the full-range layer in float. With
    full-range weights on the two fused layers too, an AMD EPYC with AVX2 only (no VNNI) put
    every sample 69-72 output steps off here (SNR 13.6-14.1 dB)."""
    _, path, feeds = exported
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    fused = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    plain_options = ort.SessionOptions()
    plain_options.log_severity_level = 3
    plain_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(path), plain_options, providers=["CPUExecutionProvider"])

    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert sum(op in INTEGER_KERNELS for op in ops) == 2 and ops.count("Conv") == 1, ops
    for feed in feeds:
        (got,) = fused.run(["y"], feed)
        (want,) = plain.run(["y"], feed)
        # One output step at most (QLinearConv requantizes in one rounding, DQ-Conv-Q in two).
        step = float(np.abs(want).max()) / 255
        assert float(np.abs(got - want).max()) <= 1.01 * step, np.abs(got - want).max() / step
