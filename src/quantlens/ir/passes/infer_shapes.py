"""Infer shapes and types of every tensor (ONNX's shape inference with data propagation)."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from quantlens.ir.passes.base import PassReport


def infer_shapes(model: ir.Model, name: str = "infer-shapes") -> PassReport:
    report = PassReport(name=name)
    before = _known(model)
    try:
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    except Exception as exc:  # inference is best-effort: kernels do not depend on it
        report.note(f"shape inference stopped early: {str(exc).splitlines()[0]}")
        return report
    after = _known(model)
    if after > before:
        report.note(f"shapes known for {after} of {_total(model)} tensors (was {before})")
    return report


def _values(model: ir.Model) -> list[ir.Value]:
    return [value for node in model.graph for value in node.outputs]


def _known(model: ir.Model) -> int:
    return sum(1 for v in _values(model) if v.shape is not None and v.shape.is_static())


def _total(model: ir.Model) -> int:
    return len(_values(model))
