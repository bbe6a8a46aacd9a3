"""The graph artifact: the canonical model's nodes and their tensors, for the report's graph view.

The report renders from artifacts only, never from the model file, so `quantize` writes the
node list here. A layered layout (column = longest path from an input) is computed at render time.
"""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from quantlens.artifacts.folder import RunFolder
from quantlens.artifacts.graph import GraphArtifact, GraphNode, build_graph

__all__ = ["GraphArtifact", "GraphNode", "build_graph", "edges", "layer_depths", "write_graph"]


def write_graph(model: ir.Model, run_dir: Path) -> Path:
    """Write `graph.json` for the canonical `model` into `run_dir`."""
    return RunFolder(run_dir).write(build_graph(model))


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
