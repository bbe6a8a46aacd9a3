"""HardSwish becomes its definition, x * HardSigmoid(x), so the gate can be quantized.

ONNX defines HardSwish(x) = x * max(0, min(1, alpha * x + beta)) with alpha = 1/6, beta = 0.5,
and ONNX Runtime runs it exactly so (its CPU provider inlines the function into HardSigmoid and
Mul), so the split graph computes the same floats. What changes is what a runtime can do with
it: ONNX Runtime has no integer HardSwish, so a quantized HardSwish runs in float between a
DequantizeLinear and a QuantizeLinear (pplcnet: 28 such sandwiches, the main reason its int8
export was slower than float). Split, the gate's output is a tensor of its own: quantized on a
[0, 1] grid, HardSigmoid is an affine map clipped by that grid (exported as ORT's QLinearAdd,
`quantlens.export.qdq_lower`), and the product a QLinearMul. Profiles that run HardSigmoid and
Mul as integer ops ask for this pass (`pipeline.session`); the others keep one HardSwish node.

The Mul keeps the HardSwish node's name and output, so assignments and layer ids that name the
HardSwish still apply; the gate is `<name>.gate`.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from quantlens.ir.passes.base import PassReport

# HardSwish's fixed coefficients, as float32 attributes like ONNX Runtime's function body.
HARDSWISH_ALPHA = float(np.float32(1.0 / 6.0))
HARDSWISH_BETA = 0.5


def split_hardswish(model: ir.Model) -> PassReport:
    report = PassReport(name="split-hardswish")
    for node in list(model.graph):
        if node.op_type != "HardSwish" or node.domain not in ("", "ai.onnx"):
            continue
        x = node.inputs[0]
        if x is None:
            continue
        _split(model.graph, node, x)
        report.note(f"{node.name}: HardSwish -> Mul(x, HardSigmoid(x))")
    return report


def _split(graph: ir.Graph, node: ir.Node, x: ir.Value) -> None:
    name = node.name or ""
    out = node.outputs[0]
    gate = ir.node(
        "HardSigmoid",
        [x],
        {"alpha": HARDSWISH_ALPHA, "beta": HARDSWISH_BETA},
        name=f"{name}.gate",
    )
    gate.outputs[0].name = f"{out.name}.gate"
    gate.outputs[0].shape, gate.outputs[0].type = out.shape, out.type
    mul = ir.node("Mul", [x, gate.outputs[0]], name=name)
    product = mul.outputs[0]
    product.shape, product.type = out.shape, out.type
    graph.insert_after(node, [gate, mul])
    out.replace_all_uses_with(product, replace_graph_outputs=True)
    public = out.name
    graph.remove(node, safe=True)
    out.name = None
    product.name = public
