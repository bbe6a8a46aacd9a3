"""Search units: the pieces of a graph that take one precision mode together.

A weighted layer with its fused activation (Conv+SiLU is one layer on a chip) is one unit; on
targets that quantize every node output, each other node that writes a quantized tensor (a
Sigmoid, a Concat, a Resize) is a unit of its own, since its output precision is a choice too.
Each unit knows the quantizers it owns (so its noise can be measured alone), the tensors it reads
from other units (so the closure rules can find its producers) and its size (for cost models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import onnx_ir as ir

from quantlens.analysis.ownership import (
    LayerTensors,
    layer_tensors,
    node_tensors,
    quantizer_names,
)
from quantlens.emulate.executor import Executor, Step
from quantlens.ir.layers import discover_layers
from quantlens.schemes.profiles import TargetProfile
from quantlens.schemes.qparams import QuantPlan

UnitKind = Literal["layer", "passthrough", "node"]


@dataclass(frozen=True)
class Unit:
    id: str
    op_type: str
    kind: UnitKind
    nodes: tuple[str, ...]
    # Activation tensors read from outside the unit, and every tensor the unit writes.
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: tuple[str, ...]
    activations: tuple[str, ...]
    # Float tensors a partial run starts from so that exactly this unit and its successors run.
    cut: tuple[str, ...]
    step: int
    macs: int
    elements: int
    params: int = 0  # weight elements (for the weight-bytes cost)

    def quantizers(self, variant: str) -> frozenset[str]:
        return quantizer_names(self.weights, self.activations, variant)


def find_units(
    model: ir.Model, executor: Executor, plan: QuantPlan, profile: TargetProfile
) -> list[Unit]:
    """Every unit in execution order; `plan` is the all-int8 plan (it says what is quantized)."""
    sizes = element_counts(model)
    layers = layer_tensors(executor, discover_layers(model).layers, plan, profile.placement)
    if profile.placement == "all-outputs":
        layers = [*layers, *node_tensors(executor, layers, plan)]
    steps = {step.ctx.name: step for step in executor.steps}
    params = {name: int(tensor.numel()) for name, tensor in executor.weights.items()}
    moves_data = {*profile.passthrough_ops, *profile.shared_scale_ops}
    units = []
    for lt in layers:
        kind: UnitKind = "layer" if lt.layer.weight else "node"
        if kind == "node" and lt.layer.op_type in moves_data:
            kind = "passthrough"
        units.append(_unit(lt, kind, steps, params, sizes))
    return sorted(units, key=lambda u: u.step)


def sized_like(units: Sequence[Unit], sized: ir.Model) -> list[Unit]:
    """The units with MACs and output sizes taken from `sized`, the same model with its dynamic
    input dimensions fixed to a sample's (an OCR line's width): in the dynamic model they are
    unknown, which would make every unit cost nothing."""
    macs = {layer.id: layer.macs for layer in discover_layers(sized).layers}
    sizes = element_counts(sized)
    return [
        replace(
            unit,
            macs=macs.get(unit.id) or unit.macs,
            elements=sum(sizes.get(n, 0) for n in unit.outputs) or unit.elements,
        )
        for unit in units
    ]


def producers(units: Sequence[Unit]) -> dict[str, str]:
    """tensor -> the unit that writes it."""
    return {tensor: unit.id for unit in units for tensor in unit.outputs}


def _unit(
    lt: LayerTensors,
    kind: UnitKind,
    steps: dict[str, Step],
    params: dict[str, int],
    sizes: dict[str, int],
) -> Unit:
    members = [steps[name] for name in lt.nodes]
    written = tuple(name for step in members for name in step.outputs)
    inside = {*written, *params}
    read = (n for step in members for n in step.inputs if n is not None and n not in inside)
    return Unit(
        id=lt.id,
        op_type=lt.layer.op_type + "".join(f"+{op}" for op in lt.fused),
        kind=kind,
        nodes=lt.nodes,
        inputs=tuple(dict.fromkeys(read)),
        outputs=written,
        weights=lt.weights,
        activations=lt.activations,
        cut=lt.cut,
        step=lt.step,
        macs=lt.layer.macs or 0,
        elements=sum(sizes.get(n, 0) for n in written),
        params=params.get(lt.layer.weight, 0) if lt.layer.weight else 0,
    )


def element_counts(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph:
        for value in node.outputs:
            shape = value.shape
            if shape is not None and shape.is_static():
                counts[value.name or ""] = math.prod(int(d) for d in shape.numpy())
    return counts
