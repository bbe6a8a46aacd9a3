"""Division by a constant becomes multiplication by its reciprocal.

Chips run Mul natively and often fall back (or quantize badly) on Div; a Mul by a constant can
also be folded into a neighbouring conv by `fuse-affine`. x / c and x * (1/c) differ by at most
one float32 rounding.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from quantlens.ir.passes.base import PassReport
from quantlens.ir.passes.graph_utils import const_array, new_initializer


def div_to_mul(model: ir.Model) -> PassReport:
    report = PassReport(name="div-to-mul")
    for node in list(model.graph):
        if node.op_type != "Div" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        divisor = const_array(node.inputs[1])
        if divisor is None or not np.issubdtype(divisor.dtype, np.floating):
            continue
        if np.any(divisor == 0) or not np.all(np.isfinite(divisor)):
            report.details.append(f"{node.name}: kept (divisor has zeros or non-finite values)")
            continue
        reciprocal = (1.0 / divisor.astype(np.float64)).astype(divisor.dtype)
        value = new_initializer(model.graph, f"{node.name}.reciprocal", reciprocal)
        node.replace_input_with(1, value)
        node.op_type = "Mul"
        report.note(f"{node.name}: Div by constant -> Mul by its reciprocal")
    return report
