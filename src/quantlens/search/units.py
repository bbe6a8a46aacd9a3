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
from dataclasses import dataclass
from typing import Literal

import onnx_ir as ir

from quantlens.analysis.ownership import LayerTensors, _Graph, layer_tensors
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

    def quantizers(self, variant: str) -> frozenset[str]:
        if variant == "weight":
            return frozenset(self.weights)
        if variant == "activation":
            return frozenset(self.activations)
        return frozenset(self.weights) | frozenset(self.activations)


def find_units(
    model: ir.Model, executor: Executor, plan: QuantPlan, profile: TargetProfile
) -> list[Unit]:
    """Every unit in execution order; `plan` is the all-int8 plan (it says what is quantized)."""
    sizes = element_counts(model)
    layers = layer_tensors(executor, discover_layers(model).layers, plan, profile.placement)
    steps = {step.ctx.name: step for step in executor.steps}
    units = [_layer_unit(lt, steps, sizes) for lt in layers]
    if profile.placement == "all-outputs":
        taken = {node for lt in layers for node in lt.nodes}
        graph = _Graph(executor)
        for step in executor.steps:
            if step.ctx.name not in taken and _writes_quantized(step, plan):
                units.append(_node_unit(step, graph, plan, profile, sizes))
    return sorted(units, key=lambda u: u.step)


def producers(units: Sequence[Unit]) -> dict[str, str]:
    """tensor -> the unit that writes it."""
    return {tensor: unit.id for unit in units for tensor in unit.outputs}


def _layer_unit(lt: LayerTensors, steps: dict[str, Step], sizes: dict[str, int]) -> Unit:
    members = [steps[name] for name in lt.nodes]
    written = tuple(name for step in members for name in step.outputs)
    inside = set(written)
    read = [n for step in members for n in step.inputs if n is not None and n not in inside]
    inputs = tuple(dict.fromkeys(n for n in read if n not in (lt.layer.weight, lt.layer.bias)))
    return Unit(
        id=lt.id,
        op_type=lt.layer.op_type + "".join(f"+{op}" for op in lt.fused),
        kind="layer",
        nodes=lt.nodes,
        inputs=inputs,
        outputs=written,
        weights=lt.weights,
        activations=lt.activations,
        cut=lt.cut,
        step=lt.step,
        macs=lt.layer.macs or 0,
        elements=sum(sizes.get(n, 0) for n in written),
    )


def _node_unit(
    step: Step, graph: _Graph, plan: QuantPlan, profile: TargetProfile, sizes: dict[str, int]
) -> Unit:
    moves_data = step.ctx.op_type in (*profile.passthrough_ops, *profile.shared_scale_ops)
    inputs = tuple(n for n in step.inputs if n is not None and n not in graph.weights)
    return Unit(
        id=step.ctx.name,
        op_type=step.ctx.op_type,
        kind="passthrough" if moves_data else "node",
        nodes=(step.ctx.name,),
        inputs=tuple(dict.fromkeys(inputs)),
        outputs=step.outputs,
        weights=(),
        activations=tuple(n for n in step.outputs if n in plan.activations),
        cut=graph.cut(step.index),
        step=step.index,
        macs=0,
        elements=sum(sizes.get(n, 0) for n in step.outputs),
    )


def _writes_quantized(step: Step, plan: QuantPlan) -> bool:
    return any(name in plan.activations for name in step.outputs)


def element_counts(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph:
        for value in node.outputs:
            shape = value.shape
            if shape is not None and shape.is_static():
                counts[value.name or ""] = math.prod(int(d) for d in shape.numpy())
    return counts
