"""Issue #22: nodes the opset upgrade adds get stable names, so an assignment written by one
stage (the search on hailo8) names nodes every later stage (its export) has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantlens.emulate import Executor
from quantlens.ir.passes.optimize import GraphOptions, optimize_graph
from quantlens.pipeline.session import prepare


def _opset11_softmax() -> onnx.ModelProto:
    """Unnamed nodes, a Mul a graph pass folds away, and a Softmax over axis 1 of a 3-D tensor:
    opset 13 changed Softmax's meaning, so the converter wraps it in Shape/Flatten/Reshape."""
    w = np.full((4, 4, 1), 0.5, np.float32)
    nodes = [
        helper.make_node("Div", ["x", "two"], ["d"]),
        helper.make_node("MatMul", ["d", "w2"], ["m"]),
        helper.make_node("Softmax", ["m"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "softmax11",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])],
        [
            numpy_helper.from_array(np.float32(2.0).reshape(()), "two"),
            numpy_helper.from_array(w[:, :, 0], "w2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def test_upgraded_nodes_have_the_same_names_in_every_stage(tmp_path: Path) -> None:
    path = tmp_path / "softmax11.onnx"
    onnx.save(_opset11_softmax(), path)
    first = prepare(path).model
    added = [n for n in first.graph if n.op_type in ("Shape", "Flatten", "Reshape")]
    assert added, "the converter no longer wraps Softmax: pick another opset-13 change"
    names = [n.name for n in first.graph]
    assert all(names) and len(set(names)) == len(names)
    # Another stage: same file, a graph pass that removes a node before the upgraded ones.
    second = prepare(path).model
    optimize_graph(second, GraphOptions(div_to_mul=True, fuse_affine=True))
    executor = Executor(second)
    steps = {step.ctx.name for step in executor.steps}
    assert {n.name for n in added} <= steps
