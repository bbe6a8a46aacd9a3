"""Lift `Constant` nodes to initializers.

Real PaddleOCR and PicoDet exports keep every weight in a Constant node. A quantizer that only
looks at initializers then treats the weights as activations and quantizes them per tensor with
activation ranges, which destroys accuracy; after this pass a weight is a weight.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from quantlens.ir.passes.base import PassReport


def lift_constants(model: ir.Model) -> PassReport:
    report = PassReport(name="lift-constants")
    before = _count_constants(model)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    lifted = before - _count_constants(model)
    if lifted:
        report.note(f"lifted {lifted} Constant nodes to initializers")
    return report


def _count_constants(model: ir.Model) -> int:
    return sum(1 for node in model.graph if node.op_type == "Constant")
