"""A light index of a canonical model's nodes, as vendor rules and files refer to them.

Vendor fusion rules (`quantlens.ir.vendors`) match on it, and both the emulation (where
quantizers sit) and the exporters (what names exist) read those rules, so it lives here,
below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from quantlens.ir.layers import discover_layers


@dataclass(frozen=True)
class NodeInfo:
    """One node of the canonical model, as vendor files refer to it."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # Constant weight and bias of a weighted layer (what vendors call params).
    params: tuple[str, ...] = ()
    folded_bn: str | None = None


@dataclass
class ModelIndex:
    """Nodes in graph order plus lookups by tensor; built once from the canonical model."""

    nodes: list[NodeInfo]
    graph_inputs: list[str] = field(default_factory=list)
    # A graph output is used by the graph itself, so vendors do not fuse it away (TPU-MLIR).
    graph_outputs: list[str] = field(default_factory=list)

    @classmethod
    def from_model(cls, model: ir.Model) -> ModelIndex:
        layers = {layer.id: layer for layer in discover_layers(model).layers}
        nodes = []
        for node in model.graph:
            name = node.name or ""
            layer = layers.get(name)
            params = tuple(p for p in (layer.weight, layer.bias) if p) if layer else ()
            nodes.append(
                NodeInfo(
                    name=name,
                    op_type=node.op_type,
                    inputs=tuple(v.name or "" if v is not None else "" for v in node.inputs),
                    outputs=tuple(v.name or "" for v in node.outputs),
                    params=params,
                    folded_bn=layer.folded_bn if layer else None,
                )
            )
        return cls(
            nodes=nodes,
            graph_inputs=[v.name or "" for v in model.graph.inputs],
            graph_outputs=[v.name or "" for v in model.graph.outputs],
        )

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def producers(self) -> dict[str, NodeInfo]:
        return {out: node for node in self.nodes for out in node.outputs}

    def node(self, name: str) -> NodeInfo:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)
