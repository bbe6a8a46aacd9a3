"""Small ONNX models built in code for the tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def conv_bn_model(opset: int = 11, unnamed: bool = True, seed: int = 0) -> onnx.ModelProto:
    """Conv -> BN -> Relu -> Identity -> Dropout -> Conv(weight in a Constant node) -> Flatten
    -> MatMul(weight via Transpose of a constant) -> Add, with a Shape/Gather/Reshape chain."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(f32) * 0.3
    bn = [
        rng.uniform(0.5, 1.5, 8),
        rng.standard_normal(8),
        rng.standard_normal(8) * 0.1,
        rng.uniform(0.5, 2.0, 8),
    ]
    w2 = rng.standard_normal((4, 8, 3, 3)).astype(f32) * 0.2
    wm = rng.standard_normal((10, 4 * 8 * 8)).astype(f32) * 0.05
    inits = (
        [numpy_helper.from_array(w1, "w1")]
        + [numpy_helper.from_array(a.astype(f32), n) for a, n in zip(bn, ["s", "b", "m", "v"])]
        + [numpy_helper.from_array(wm, "wm_t"), numpy_helper.from_array(np.ones(10, f32), "bias")]
    )
    name = (lambda n: "") if unnamed else (lambda n: n)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name=name("conv1"), pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c1", "s", "b", "m", "v"], ["bn1"], name=name("bn1")
        ),
        helper.make_node("Relu", ["bn1"], ["r1"], name=name("relu1")),
        helper.make_node("Identity", ["r1"], ["i1"], name=name("id1")),
        helper.make_node("Dropout", ["i1"], ["d1"], name=name("drop1")),
        _const("w2", w2),
        helper.make_node("Conv", ["d1", "w2"], ["c2"], name=name("conv2"), pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c2"], ["shape"], name=name("shape")),
        _const("zero", np.array(0, np.int64)),
        helper.make_node("Gather", ["shape", "zero"], ["n"], name=name("gather")),
        _const("axes", np.array([0], np.int64)),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name=name("unsq")),
        _const("minus1", np.array([-1], np.int64)),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0, name=name("cat")),
        helper.make_node("Reshape", ["c2", "newshape"], ["flat"], name=name("reshape")),
        helper.make_node("Transpose", ["wm_t"], ["wm"], perm=[1, 0], name=name("transpose")),
        helper.make_node("MatMul", ["flat", "wm"], ["mm"], name=name("matmul")),
        helper.make_node("Add", ["mm", "bias"], ["y"], name=name("add")),
    ]
    if opset < 13:  # Unsqueeze took axes as an attribute before opset 13
        nodes[11] = helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0], name=name("unsq"))
        del nodes[10]
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def single_op_model(op_type: str, domain: str = "", **attrs: object) -> onnx.ModelProto:
    """x -> op -> y, for unsupported-op tests."""
    node = helper.make_node(op_type, ["x"], ["y"], name="the_node", domain=domain, **attrs)
    graph = helper.make_graph(
        [node],
        "single",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model
