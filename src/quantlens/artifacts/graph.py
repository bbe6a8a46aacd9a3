"""The graph artifact: the canonical model's nodes and their tensors, for the report's graph view.

The report renders from artifacts only, never from the model file, so `quantize` writes the
node list here.
"""

from __future__ import annotations

import onnx_ir as ir
from pydantic import BaseModel, Field

from quantlens.artifacts import Artifact


class GraphNode(BaseModel):
    name: str
    op_type: str
    inputs: list[str] = Field(description="activation inputs; weights and constants left out")
    outputs: list[str]


class GraphArtifact(Artifact):
    kind = "graph"
    inputs: list[str] = Field(default_factory=list, description="the graph's inputs")
    outputs: list[str] = Field(default_factory=list, description="the graph's outputs")
    nodes: list[GraphNode] = Field(description="in topological order")


def build_graph(model: ir.Model) -> GraphArtifact:
    constants = set(model.graph.initializers)
    nodes = [
        GraphNode(
            name=node.name or "",
            op_type=node.op_type,
            inputs=[v.name or "" for v in node.inputs if v is not None and v.name not in constants],
            outputs=[v.name or "" for v in node.outputs],
        )
        for node in model.graph  # onnx_ir keeps nodes in topological order
    ]
    return GraphArtifact(
        inputs=[v.name or "" for v in model.graph.inputs],
        outputs=[v.name or "" for v in model.graph.outputs],
        nodes=nodes,
    )
