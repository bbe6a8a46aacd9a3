"""The float-domain optimization pipeline run before calibration (`quantize --optimize`).

Every pass keeps the float outputs (up to float32 rounding); together they make the graph
cheaper to quantize: fewer quantized tensors (folded affine ops, reorders) and balanced weight
ranges (equalization). Order matters: Div becomes Mul before affine ops are folded, a reorder is
removed before its per-channel constants are folded, and equalization sees the final convs.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass
from pydantic import BaseModel

from quantlens.ir.passes.add_bias import add_missing_bias
from quantlens.ir.passes.base import PassReport
from quantlens.ir.passes.channel_order import remove_channel_reorder
from quantlens.ir.passes.div_to_mul import div_to_mul
from quantlens.ir.passes.equalize import equalize
from quantlens.ir.passes.fuse_affine import fuse_affine
from quantlens.ir.passes.split_hardswish import split_hardswish


class GraphOptions(BaseModel):
    div_to_mul: bool = False
    fuse_affine: bool = False
    channel_reorder: bool = False
    equalize: bool = False
    # Bias correction needs a bias on every layer it corrects.
    add_bias: bool = False
    # HardSwish as x * HardSigmoid(x): asked for by profiles whose runtime has integer kernels
    # for the two halves but none for HardSwish (ort-cpu-fast), not a user option.
    split_hardswish: bool = False

    def any(self) -> bool:
        return any(self.model_dump().values())


def optimize_graph(model: ir.Model, options: GraphOptions) -> list[PassReport]:
    """Run the enabled passes in place; returns each one's report."""
    reports: list[PassReport] = []
    if options.div_to_mul:
        reports.append(div_to_mul(model))
    if options.channel_reorder:
        reports.append(remove_channel_reorder(model))
    if options.fuse_affine:
        reports.append(fuse_affine(model))
    if options.equalize:
        reports.append(equalize(model))
    if options.add_bias:
        reports.append(add_missing_bias(model))
    if options.split_hardswish:
        reports.append(split_hardswish(model))
    if reports:
        RemoveUnusedNodesPass()(model)
        TopologicalSortPass()(model)
    return reports
