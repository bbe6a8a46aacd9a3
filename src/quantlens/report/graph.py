"""The graph artifact: the canonical model's nodes and their tensors, for the report's graph view.

The report renders from artifacts only, never from the model file, so `quantize` writes the
node list here. A layered layout (column = longest path from an input) is computed at render time.
"""

from __future__ import annotations

from pathlib import Path

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


def write_graph(model: ir.Model, run_dir: Path) -> Path:
    """Write `graph.json` for the canonical `model` into `run_dir`."""
    return build_graph(model).save(Path(run_dir) / "graph.json")


def layer_depths(graph: GraphArtifact) -> list[int]:
    """Per node, the longest path (in nodes) from a graph input: its column in the layout."""
    depth_of_tensor: dict[str, int] = {}
    depths = []
    for node in graph.nodes:
        depth = 1 + max((depth_of_tensor.get(t, -1) for t in node.inputs), default=-1)
        depths.append(depth)
        for tensor in node.outputs:
            depth_of_tensor[tensor] = depth
    return depths


def edges(graph: GraphArtifact) -> list[tuple[int, int]]:
    """(producer index, consumer index) for every activation that flows between two nodes."""
    producer = {t: i for i, node in enumerate(graph.nodes) for t in node.outputs}
    return [
        (producer[t], i)
        for i, node in enumerate(graph.nodes)
        for t in dict.fromkeys(node.inputs)
        if t in producer
    ]
