"""The canonicalization pipeline: the fixed order in which the passes run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass
from pydantic import BaseModel, Field

from quantlens.ir.passes.base import PassReport
from quantlens.ir.passes.fix_shapes import fix_input_shapes
from quantlens.ir.passes.fold_batchnorm import fold_batchnorm
from quantlens.ir.passes.fold_constants import fold_constants
from quantlens.ir.passes.infer_shapes import infer_shapes
from quantlens.ir.passes.lift_constants import lift_constants
from quantlens.ir.passes.names import name_nodes
from quantlens.ir.passes.opset import MIN_OPSET, opset_of, upgrade_opset
from quantlens.ir.passes.remove_identity import remove_identity


class CanonicalizeOptions(BaseModel):
    input_shapes: dict[str, list[int]] = Field(default_factory=dict)
    min_opset: int = MIN_OPSET
    fold_batchnorm: bool = True
    # Pin a dynamic leading (batch) dimension to this size when it is the only dynamic one.
    default_batch: int | None = None


def canonicalize(
    model: ir.Model, options: CanonicalizeOptions | None = None
) -> tuple[ir.Model, list[PassReport]]:
    """Return the canonical model and each pass's report. The input model may be modified."""
    opts = options or CanonicalizeOptions()
    reports = [name_nodes(model)]
    model, upgrade = upgrade_opset(model, opts.min_opset)
    reports.append(upgrade)
    if upgrade.changed:
        # The converter adds nodes without names (Softmax before opset 13 becomes Shape,
        # Flatten, Softmax, Reshape): named here, in the canonical order, so every stage gives
        # them the same layer id (the executor's per-run `<OpType>_<index>` fallback shifts
        # with each graph pass, and an assignment then named a node the export lacked).
        reports.append(name_nodes(model, name="stable-names-after-upgrade"))
    reports.append(lift_constants(model))
    reports.append(remove_identity(model))
    reports.append(fix_input_shapes(model, opts.input_shapes, opts.default_batch))
    reports.append(infer_shapes(model))
    reports.append(fold_constants(model, opset_of(model)))
    if opts.fold_batchnorm:
        reports.append(fold_batchnorm(model))
    RemoveUnusedNodesPass()(model)
    TopologicalSortPass()(model)
    # Folding Shape/Reshape chains lets inference reach tensors it could not type before.
    reports.append(infer_shapes(model, name="infer-shapes-after-folding"))
    return model, reports


def parse_input_shapes(specs: Sequence[str]) -> dict[str, list[int]]:
    """Parse `name:1,3,224,224` strings (from --input-shape) into a mapping."""
    from quantlens.errors import UserError

    shapes: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        try:
            values = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            values = []
        if not sep or not name or not values:
            raise UserError(
                f"cannot parse --input-shape {spec!r}",
                "write NAME:D0,D1,..., e.g. --input-shape x:1,3,48,320",
            )
        shapes[name] = values
    return shapes


def applied(reports: Sequence[PassReport]) -> list[str]:
    return [report.summary() for report in reports if report.changed]


def as_mapping(reports: Sequence[PassReport]) -> Mapping[str, list[str]]:
    return {report.name: report.details for report in reports}
