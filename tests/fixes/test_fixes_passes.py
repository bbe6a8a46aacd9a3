"""Float-domain optimization passes: each keeps the outputs (ONNX Runtime before vs after) and
reports what it changed or why it did not."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantlens.ir.passes.add_bias import add_missing_bias
from quantlens.ir.passes.base import PassReport
from quantlens.ir.passes.channel_order import remove_channel_reorder
from quantlens.ir.passes.div_to_mul import div_to_mul
from quantlens.ir.passes.equalize import equalize
from quantlens.ir.passes.fuse_affine import fuse_affine
from quantlens.ir.passes.optimize import GraphOptions, optimize_graph

F32 = np.float32
Pass = Callable[[ir.Model], PassReport]


def _model(
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    shape: tuple[int, ...] = (1, 3, 8, 8),
    output: str = "y",
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def _apply(proto: onnx.ModelProto, passes: list[Pass]) -> tuple[onnx.ModelProto, list[PassReport]]:
    model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))
    reports = [p(model) for p in passes]
    from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

    RemoveUnusedNodesPass()(model)
    TopologicalSortPass()(model)
    return ir.serde.serialize_model(model), reports


def _check_same(
    proto: onnx.ModelProto, passes: list[Pass], shape: tuple[int, ...] = (1, 3, 8, 8)
) -> tuple[onnx.ModelProto, list[PassReport]]:
    after, reports = _apply(proto, passes)

    x = np.random.default_rng(1).standard_normal(shape).astype(F32) * 2
    want, got = _run(proto, x), _run(after, x)
    rel = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
    assert rel <= 1e-4, rel
    return after, reports


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def _w(shape: tuple[int, ...], seed: int = 0, scale: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(F32)


# --- div -> mul, affine fusion ----------------------------------------------------------------


def test_div_by_constant_becomes_mul() -> None:
    proto = _model(
        [
            helper.make_node("Div", ["x", "d"], ["t"], name="div"),
            helper.make_node("Conv", ["t", "w"], ["y"], name="conv"),
        ],
        {"d": np.array([0.5, 2.0, 4.0], F32).reshape(1, 3, 1, 1), "w": _w((4, 3, 3, 3))},
    )
    after, [report] = _check_same(proto, [div_to_mul])
    assert _ops(after) == ["Mul", "Conv"] and report.changed
    assert "div: Div by constant" in report.details[0]


def _normalised_conv(pads: list[int]) -> onnx.ModelProto:
    return _model(
        [
            helper.make_node("Sub", ["x", "mean"], ["a"], name="sub"),
            helper.make_node("Mul", ["a", "istd"], ["b"], name="mul"),
            helper.make_node("Conv", ["b", "w"], ["c"], name="conv", pads=pads),
            helper.make_node("Mul", ["c", "gamma"], ["d"], name="mul2"),
            helper.make_node("Add", ["beta", "d"], ["y"], name="add2"),
        ],
        {
            "mean": np.array([0.4, 0.5, 0.6], F32).reshape(3, 1, 1),
            "istd": np.array([4.0, 4.5, 5.0], F32).reshape(1, 3, 1, 1),
            "w": _w((4, 3, 3, 3)),
            "gamma": np.array([1.0, -2.0, 0.5, 3.0], F32).reshape(1, 4, 1, 1),
            "beta": np.array([0.1, 0.2, -0.3, 0.4], F32).reshape(4, 1, 1),
        },
    )


def test_fuse_affine_folds_everything_around_an_unpadded_conv() -> None:
    after, [report] = _check_same(_normalised_conv([0, 0, 0, 0]), [fuse_affine])
    assert _ops(after) == ["Conv"]
    assert after.graph.node[0].output[0] == "y"  # the output keeps its name
    assert any("absorbed Mul mul2, Add add2 after it" in d for d in report.details)
    assert any("absorbed Mul mul, Sub sub before it" in d for d in report.details)


def test_fuse_affine_keeps_a_shift_before_a_padded_conv() -> None:
    after, [report] = _check_same(_normalised_conv([1, 1, 1, 1]), [fuse_affine])
    assert _ops(after) == ["Sub", "Conv"]
    assert any("Sub sub kept (the conv pads with zeros" in d for d in report.details)


def test_fuse_affine_before_a_grouped_conv() -> None:
    proto = _model(
        [
            helper.make_node("Mul", ["x", "m"], ["a"], name="mul"),
            helper.make_node("Add", ["a", "c"], ["b"], name="add"),
            helper.make_node("Conv", ["b", "w"], ["y"], name="conv", group=2),
        ],
        {
            "m": np.array([1.0, 2.0, 3.0, 4.0], F32).reshape(4, 1, 1),
            "c": np.array([0.5, -1.0, 2.0, 0.1], F32).reshape(4, 1, 1),
            "w": _w((6, 2, 3, 3)),
        },
        shape=(1, 4, 8, 8),
    )
    after, _ = _check_same(proto, [fuse_affine], shape=(1, 4, 8, 8))
    assert _ops(after) == ["Conv"]


# --- channel reorder --------------------------------------------------------------------------


def _reorder_nodes(kind: str) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    if kind == "gather":
        return [helper.make_node("Gather", ["x", "idx"], ["p"], axis=1, name="g")], {
            "idx": np.array([2, 1, 0], np.int64)
        }
    if kind == "slice":
        return [helper.make_node("Slice", ["x", "s", "e", "ax", "st"], ["p"], name="sl")], {
            "s": np.array([-1], np.int64),
            "e": np.array([-(2**62)], np.int64),
            "ax": np.array([1], np.int64),
            "st": np.array([-1], np.int64),
        }
    return [
        helper.make_node("Split", ["x"], ["r", "g", "b"], axis=1, name="split"),
        helper.make_node("Concat", ["b", "g", "r"], ["p"], axis=1, name="cat"),
    ], {}


@pytest.mark.parametrize("kind", ["gather", "slice", "split"])
def test_channel_reorder_moves_into_the_first_conv(kind: str) -> None:
    nodes, inits = _reorder_nodes(kind)
    nodes += [
        helper.make_node("Sub", ["p", "mean"], ["q"], name="sub"),
        helper.make_node("Conv", ["q", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    inits |= {"mean": np.array([0.1, 0.5, 0.9], F32).reshape(3, 1, 1), "w": _w((4, 3, 3, 3))}
    after, [report] = _check_same(_model(nodes, inits), [remove_channel_reorder])
    assert _ops(after) == ["Sub", "Conv"], _ops(after)
    assert report.changed and "order [2, 1, 0]" in report.details[0]


def test_channel_reorder_read_by_something_else_is_kept() -> None:
    nodes, inits = _reorder_nodes("gather")
    nodes += [helper.make_node("Relu", ["p"], ["y"], name="relu")]
    after, [report] = _check_same(_model(nodes, inits), [remove_channel_reorder])
    assert _ops(after) == ["Gather", "Relu"] and not report.changed
    assert "kept" in report.details[0]


# --- equalization -----------------------------------------------------------------------------


def _pair(act: list[onnx.NodeProto], mid: str, group2: int = 1) -> onnx.ModelProto:
    w1 = _w((8, 3, 3, 3))
    w1[[1, 5]] *= 80.0  # two channels with ~80x wider weights
    return _model(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            *act,
            helper.make_node("Conv", [mid, "w2"], ["y"], name="conv2", group=group2),
        ],
        {"w1": w1, "b1": _w((8,), 3), "w2": _w((8, 8 // group2, 3, 3), 2)},
    )


def _channel_spread(proto: onnx.ModelProto, name: str) -> float:
    w = next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == name)
    ranges = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    return float(ranges.max() / np.median(ranges))


@pytest.mark.parametrize(
    ("act", "group2"),
    [("Relu", 1), ("LeakyRelu", 1), ("none", 1), ("Relu", 8), ("Relu", 2)],
)
def test_equalize_balances_channels_and_keeps_outputs(act: str, group2: int) -> None:
    nodes = [] if act == "none" else [helper.make_node(act, ["c1"], ["r1"], name="act")]
    proto = _pair(nodes, "c1" if act == "none" else "r1", group2)
    before = _channel_spread(proto, "w1")
    assert before > 30
    after, [report] = _check_same(proto, [equalize])
    assert report.changed and "conv1 -> conv2" in report.details[0]
    # Both convs end with range sqrt(r1 * r2): the 80x outliers shrink to about sqrt(80)x.
    assert _channel_spread(after, "w1") < 1.5 * before**0.5


@pytest.mark.parametrize("act", ["Sigmoid", "HardSwish", "silu", "relu6"])
def test_equalize_skips_activations_that_are_not_scale_equivariant(act: str) -> None:
    if act == "silu":
        nodes = [
            helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig"),
            helper.make_node("Mul", ["c1", "s1"], ["r1"], name="act"),
        ]
    elif act == "relu6":
        nodes = [helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="act")]
    else:
        nodes = [helper.make_node(act, ["c1"], ["r1"], name="act")]
    proto = _pair(nodes, "r1")
    bounds = {"lo": 0.0, "hi": 6.0}
    proto.graph.initializer.extend(
        numpy_helper.from_array(np.array(v, F32), k) for k, v in bounds.items()
    )
    _, [report] = _check_same(proto, [equalize])
    assert not report.changed
    assert "not scale-equivariant" in report.details[0], report.details


def test_optimize_graph_runs_all_passes_and_adds_biases() -> None:
    proto = _normalised_conv([0, 0, 0, 0])
    options = GraphOptions(div_to_mul=True, fuse_affine=True, channel_reorder=True, equalize=True)
    after, _ = _check_same(proto, [lambda m: optimize_graph(m, options)[0], add_missing_bias])
    assert len(after.graph.node[0].input) == 3
    names = {i.name for i in after.graph.initializer}
    assert "mean" not in names  # folded constants are dropped
