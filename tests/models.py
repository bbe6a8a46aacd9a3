"""Small ONNX models built in code: the one shared set of builders the tests use."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = np.float32


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


def single_op_model(
    op_type: str, domain: str = "", width: int = 4, **attrs: object
) -> onnx.ModelProto:
    """x -> op -> y on [1, width], for unsupported-op tests."""
    node = helper.make_node(op_type, ["x"], ["y"], name="the_node", domain=domain, **attrs)
    graph = helper.make_graph(
        [node],
        "single",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
    )
    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def outlier_model(seed: int = 0) -> onnx.ModelProto:
    """Four Conv+ReLU layers and a Gemm head. conv2's channel 0 carries a bias of +60, so the
    tensor conv3 reads has a range ~40x wider than its other channels need; conv3 barely uses
    that channel, so the outlier costs resolution without carrying signal."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    chans = [3, 8, 8, 8, 8]
    inits, nodes, tensor = [], [], "x"
    for i in range(4):
        w = rng.standard_normal((chans[i + 1], chans[i], 3, 3)).astype(f32)
        w *= f32(1.2 / np.sqrt(chans[i] * 9))
        b = (rng.standard_normal(chans[i + 1]) * 0.1 + 0.3).astype(f32)
        if i == 1:
            b[0] = 60.0
        if i == 2:
            w[:, 0] *= f32(0.001)
        inits += [numpy_helper.from_array(w, f"w{i + 1}"), numpy_helper.from_array(b, f"b{i + 1}")]
        nodes += [
            helper.make_node(
                "Conv",
                [tensor, f"w{i + 1}", f"b{i + 1}"],
                [f"c{i + 1}"],
                name=f"conv{i + 1}",
                pads=[1, 1, 1, 1],
            ),
            helper.make_node("Relu", [f"c{i + 1}"], [f"r{i + 1}"], name=f"relu{i + 1}"),
        ]
        tensor = f"r{i + 1}"
    wg = (rng.standard_normal((10, 8 * 8 * 8)) * 0.05).astype(f32)
    inits += [numpy_helper.from_array(wg, "wg"), numpy_helper.from_array(np.zeros(10, f32), "bg")]
    nodes += [
        helper.make_node("Flatten", [tensor], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wg", "bg"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _conv(name: str, src: str, dst: str, cin: int, cout: int, rng: np.random.Generator) -> list:
    w = (rng.standard_normal((cout, cin, 1, 1)) * 0.5).astype(F32)
    init = numpy_helper.from_array(w, f"{name}_w")
    return [init, helper.make_node("Conv", [src, f"{name}_w"], [dst], name=name)]


def branchy_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    parts = [
        *_conv("conv_a", "x", "a0", 3, 4, rng),
        *_conv("conv_b", "x", "b", 3, 4, rng),
        *_conv("conv_c", "c", "t3", 8, 8, rng),
        *_conv("conv_d", "s1", "d", 4, 4, rng),
        *_conv("conv_e", "e", "y", 4, 2, rng),
    ]
    inits = [p for p in parts if isinstance(p, onnx.TensorProto)]
    convs = {n.name: n for n in parts if isinstance(n, onnx.NodeProto)}
    split = numpy_helper.from_array(np.array([4, 4], np.int64), "split_sizes")
    nodes = [
        convs["conv_a"],
        helper.make_node("Relu", ["a0"], ["a"], name="relu_a"),
        convs["conv_b"],
        helper.make_node("Concat", ["a", "b"], ["c"], name="concat", axis=1),
        convs["conv_c"],
        helper.make_node("Split", ["t3", "split_sizes"], ["s1", "s2"], name="split", axis=1),
        convs["conv_d"],
        helper.make_node("Add", ["d", "s2"], ["e"], name="add"),
        convs["conv_e"],
    ]
    graph = helper.make_graph(
        nodes,
        "branchy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        initializer=[*inits, split],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def unbalanced_model(seed: int = 0) -> onnx.ModelProto:
    """conv1 (a few output channels 50-100x wider) -> ReLU -> conv2 -> ReLU -> conv3 -> pool
    -> Gemm; no BatchNorm anywhere, the input normalised by Sub/Div."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((16, 3, 3, 3)).astype(F32) * 0.2
    w1[[0, 5, 11]] *= np.array([60.0, 100.0, 50.0], F32)[:, None, None, None]
    w2 = rng.standard_normal((16, 16, 3, 3)).astype(F32) * 0.1
    w2[:, [0, 5, 11]] /= 60.0  # conv2 reads the wide channels with small weights
    inits = {
        "mean": np.array([0.5, 0.4, 0.3], F32).reshape(1, 3, 1, 1),
        "std": np.array([0.25, 0.25, 0.3], F32).reshape(1, 3, 1, 1),
        "w1": w1,
        "b1": rng.standard_normal(16).astype(F32) * 0.1,
        "w2": w2,
        "w3": rng.standard_normal((8, 16, 3, 3)).astype(F32) * 0.1,
        "wf": rng.standard_normal((8, 4)).astype(F32),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["xs"], name="sub"),
        helper.make_node("Div", ["xs", "std"], ["xn"], name="div"),
        helper.make_node("Conv", ["xn", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "unbalanced",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def dynamic_width_model(seed: int = 0, classes: int = 5) -> onnx.ModelProto:
    """A tiny line recognizer: x [N, 3, 8, W] (W dynamic) -> conv, ReLU, conv, ReLU -> mean over
    the height -> [N, W, 8] -> MatMul + bias -> softmax: y [N, W, classes], one step per column."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(F32) * 0.3,
        "b1": rng.standard_normal(8).astype(F32) * 0.1,
        "w2": rng.standard_normal((8, 8, 3, 3)).astype(F32) * 0.2,
        "wm": rng.standard_normal((8, classes)).astype(F32),
        "bm": rng.standard_normal(classes).astype(F32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("ReduceMean", ["r2"], ["m"], name="mean_h", axes=[2], keepdims=0),
        helper.make_node("Transpose", ["m"], ["t"], name="to_steps", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "wm"], ["mm"], name="classifier"),
        helper.make_node("Add", ["mm", "bm"], ["logits"], name="bias"),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic_width",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "W", classes])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model
