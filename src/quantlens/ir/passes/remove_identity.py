"""Remove Identity and inference-mode Dropout nodes, which only rename tensors.

Each one would otherwise become a spurious quantization point with its own scale.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass

from quantlens.ir.passes.base import PassReport


def remove_identity(model: ir.Model) -> PassReport:
    report = PassReport(name="remove-identity")
    dropouts = _dropouts_to_identity(model)
    before = _count(model, "Identity")
    IdentityEliminationPass()(model)
    removed = before - _count(model, "Identity")
    if removed or dropouts:
        report.note(f"removed {removed} Identity/Dropout nodes ({dropouts} were Dropout)")
    return report


def _dropouts_to_identity(model: ir.Model) -> int:
    converted = 0
    for node in list(model.graph):
        if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
            continue
        mask_used = len(node.outputs) > 1 and bool(node.outputs[1].uses())
        training = len(node.inputs) > 2 and node.inputs[2] is not None
        if mask_used or training:
            continue
        # Rewrite in place (same output value), then let identity elimination drop it.
        node.op_type = "Identity"
        node.resize_inputs(1)
        node.resize_outputs(1)
        node.attributes.clear()
        converted += 1
    return converted


def _count(model: ir.Model, op_type: str) -> int:
    return sum(1 for node in model.graph if node.op_type == op_type)
