"""Stable names: every node and value gets a deterministic, unique name.

Layer ids come from node names, so a model exported without names (common with older tf2onnx
and hand-built graphs) gets `<OpType>_<index>` names in graph order: the same file always yields
the same ids.
"""

from __future__ import annotations

import onnx_ir as ir

from quantlens.ir.passes.base import PassReport


def name_nodes(model: ir.Model, name: str = "stable-names") -> PassReport:
    report = PassReport(name=name)
    taken = {node.name for node in model.graph if node.name}
    renamed_nodes = 0
    for index, node in enumerate(model.graph):
        if node.name and node.name not in _seen_before(model, node, index):
            continue
        node.name = _unique(f"{node.op_type}_{index}", taken)
        renamed_nodes += 1
    unnamed_values = _name_values(model, {v.name for v in _all_values(model) if v.name})
    if renamed_nodes:
        report.note(f"named {renamed_nodes} unnamed or duplicate nodes as <OpType>_<index>")
    if unnamed_values:
        report.note(f"named {unnamed_values} unnamed tensors")
    return report


def _seen_before(model: ir.Model, node: ir.Node, index: int) -> set[str]:
    return {n.name for i, n in enumerate(model.graph) if i < index and n.name}


def _unique(base: str, taken: set[str]) -> str:
    name, suffix = base, 1
    while name in taken:
        suffix += 1
        name = f"{base}_{suffix}"
    taken.add(name)
    return name


def _all_values(model: ir.Model) -> list[ir.Value]:
    values = [*model.graph.inputs, *model.graph.initializers.values()]
    for node in model.graph:
        values.extend(node.outputs)
    return values


def _name_values(model: ir.Model, taken: set[str]) -> int:
    count = 0
    for node in model.graph:
        for position, value in enumerate(node.outputs):
            if not value.name:
                value.name = _unique(f"{node.name}_output_{position}", taken)
                count += 1
    return count
