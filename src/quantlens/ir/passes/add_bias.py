"""Give every Conv and Gemm with a constant weight a bias (zeros) where it has none.

Bias correction moves each layer's mean output error into its bias; a layer without one has
nowhere to put it. A zero bias changes no output.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from quantlens.ir.passes.base import PassReport
from quantlens.ir.passes.graph_utils import const_array, new_initializer


def add_missing_bias(model: ir.Model) -> PassReport:
    report = PassReport(name="add-bias")
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm") or len(node.inputs) < 2:
            continue
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            continue
        weight = const_array(node.inputs[1])
        channels = _out_channels(node, weight)
        if weight is None or channels is None:
            continue
        bias = new_initializer(model.graph, f"{node.name}.bias", np.zeros(channels, weight.dtype))
        node.resize_inputs(3)
        node.replace_input_with(2, bias)
        report.note(f"{node.name}: zero bias added")
    return report


def _out_channels(node: ir.Node, weight: np.ndarray | None) -> int | None:
    if weight is None or weight.ndim < 2:
        return None
    if node.op_type == "Conv":
        return int(weight.shape[0])
    return int(weight.shape[0] if node.attributes.get_int("transB", 0) else weight.shape[1])
