"""Fold constant subgraphs: nodes whose inputs are all constants become initializers.

Weights reached through Transpose/Reshape/Mul chains turn into plain initializers (so a MatMul
with a transposed weight is seen as a layer with a constant weight), and `Shape` of a tensor whose
shape is fixed becomes a constant, which collapses the shape arithmetic of dynamic exports.
Evaluation uses ONNX's reference implementation, independent of our own kernels.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from quantlens.ir.passes.base import PassReport

# Ops whose output is not a function of their inputs.
_NONDETERMINISTIC = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
}
_MAX_FOLDED_BYTES = 64 * 1024 * 1024


def fold_constants(model: ir.Model, opset: int) -> PassReport:
    report = PassReport(name="fold-constants")
    folded: dict[str, int] = {}
    for node in list(model.graph):
        values = _fold_value(node, opset)
        if values is None:
            continue
        _replace_with_initializers(model.graph, node, values)
        folded[node.op_type] = folded.get(node.op_type, 0) + 1
    if folded:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(folded.items()))
        report.note(f"folded {sum(folded.values())} constant nodes ({ops})")
    return report


def _fold_value(node: ir.Node, opset: int) -> list[np.ndarray] | None:
    if node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC:
        return None
    if any(output.is_graph_output() for output in node.outputs):
        return None
    if any(
        attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for attr in node.attributes.values()
    ):
        return None
    if node.op_type == "Shape":
        return _static_shape(node)
    inputs = [value for value in node.inputs if value is not None]
    if not inputs or not all(_is_constant(value) for value in inputs):
        return None
    return _evaluate(node, opset)


def _is_constant(value: ir.Value) -> bool:
    return value.const_value is not None and not value.is_graph_input()


def _static_shape(node: ir.Node) -> list[np.ndarray] | None:
    source = node.inputs[0]
    if source is None or source.shape is None or not source.shape.is_static():
        return None
    dims = [int(d) for d in source.shape.numpy()]
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", len(dims))
    return [np.asarray(dims[slice(start, end)], dtype=np.int64)]


def _evaluate(node: ir.Node, opset: int) -> list[np.ndarray] | None:
    proto = ir.serde.serialize_node(node)
    feeds = {
        value.name or "": value.const_value.numpy()
        for value in node.inputs
        if value is not None and value.const_value is not None
    }
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            outputs = ReferenceEvaluator(proto, opsets={"": opset}).run(None, feeds)
    except Exception:  # an op the reference cannot evaluate is simply left in the graph
        return None
    arrays = [np.asarray(out) for out in outputs]
    if sum(a.nbytes for a in arrays) > _MAX_FOLDED_BYTES:
        return None
    return arrays


def _replace_with_initializers(graph: ir.Graph, node: ir.Node, arrays: list[np.ndarray]) -> None:
    for output, array in zip(node.outputs, arrays):
        name = output.name
        output.name = f"{name}__folded"
        constant = ir.Value(
            name=name,
            const_value=ir.tensor(array, name=name),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            shape=ir.Shape(array.shape),
        )
        output.replace_all_uses_with(constant)
        graph.register_initializer(constant)
    graph.remove(node, safe=True)
