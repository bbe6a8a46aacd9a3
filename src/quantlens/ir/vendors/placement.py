"""Where a vendor's toolchain keeps quantizers once it has fused: the tensors it never
quantizes, and the tensors it holds in another tensor's quantizer.

Each vendor's fusion rules live beside this module with their sources (`tpu_mlir_ops`,
`qualcomm_rules`, `hailo_layers`); this module only reads them out for the emulation, so that
the emulated plan and the exported files agree on which tensors are integers on the chip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx_ir as ir

from quantlens.ir.index import ModelIndex, NodeInfo
from quantlens.ir.vendors.hailo_layers import layer_groups
from quantlens.ir.vendors.qualcomm_rules import find_fusions
from quantlens.ir.vendors.tpu_mlir_ops import graph_facts, no_ops, reform, split_matmuls, tpu_ops


@dataclass
class VendorPlacement:
    """`fused_away`: tensor -> the fused op's output that the vendor quantizes instead;
    `tied`: tensor -> the tensor whose quantizer (scale and zero point) it uses;
    `passthrough`: tensor -> the input whose grid it keeps, unquantized (data movement);
    `op_types`: an op output -> the vendor's type for the op (a decomposed LayerNorm's last
    Add is a LayerNormalization to TPU-MLIR)."""

    fused_away: dict[str, str] = field(default_factory=dict)
    op_types: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    passthrough: dict[str, str] = field(default_factory=dict)
    # Weight -> the column blocks the vendor quantizes each per tensor (a split MatMul).
    weight_blocks: dict[str, int] = field(default_factory=dict)


def _tpu_mlir(model: ir.Model, index: ModelIndex) -> VendorPlacement:
    ops = tpu_ops(index, graph_facts(model))
    placement = VendorPlacement()
    producers = index.producers()
    for op in ops:
        for name in op.nodes:
            node = index.node(name)
            for tensor in node.outputs:
                if tensor != op.output and tensor not in index.graph_outputs:
                    placement.fused_away[tensor] = op.output
    # An op read only by a Concat writes the Concat's scale (tpu_mlir_ops.KNOWN_DIFFERENCES).
    reformed, _ = reform(index, graph_facts(model))
    placement.op_types = {node.outputs[0]: node.op_type for node in reformed.nodes if node.outputs}
    readers = _readers(reformed)
    made_by = reformed.producers()
    for node in reformed.nodes:
        if node.op_type != "Concat":
            continue
        for tensor in dict.fromkeys(node.inputs):
            # Through a Reshape read only by the Concat too (yolov8's head Convs write the
            # Concat's scale: doclayout-yolov8n's _tpu.mlir, 1.30.2).
            for source in _only_reader_chain(tensor, made_by, readers):
                if source in producers and source not in index.graph_outputs:
                    placement.tied[source] = node.outputs[0]
        # A Concat of one tensor and MaxPools of it (yolov8's SPPF) keeps that tensor's scale
        # and ignores its own threshold (doclayout-yolov8n's /model.9/Concat, 1.30.2).
        roots = {_pooled_root(t, made_by) for t in node.inputs if t}
        if len(roots) == 1 and node.outputs[0] not in index.graph_outputs:
            (root,) = roots
            if root in producers and root not in placement.tied:
                placement.tied[node.outputs[0]] = root
    # A fused qkv MatMul is split in three, each block of weight columns on its own scale.
    for name, blocks in split_matmuls(index, graph_facts(model)).items():
        placement.weight_blocks[index.node(name).inputs[1]] = blocks
    # An Add of 0 or a Mul by 1 is gone from TPU-MLIR's graph (tpu_mlir_ops.no_ops): its
    # output is its input (ppocr-v6-rec-small's `q * c + 0` feeds MatMul on q * c's scale).
    constants = {v.name for v in model.graph.initializers.values()}
    for name in no_ops(index, graph_facts(model)):
        node = index.node(name)
        data = [t for t in node.inputs if t and t not in constants]
        if len(data) == 1 and node.outputs[0] not in placement.tied:
            placement.tied[node.outputs[0]] = data[0]
    return placement


def _qnn_htp(model: ir.Model, index: ModelIndex) -> VendorPlacement:
    fusions = find_fusions(index, model)
    return VendorPlacement(
        fused_away=dict(fusions.fused_away),
        tied={t: o for t, o in fusions.tied.items() if t != o},
        passthrough=dict(fusions.passthrough),
    )


def _hailo(model: ir.Model, index: ModelIndex) -> VendorPlacement:
    placement = VendorPlacement()
    for group in layer_groups(index):
        for name in group.members:
            for tensor in index.node(name).outputs:
                if tensor != group.output:
                    placement.fused_away[tensor] = group.output
    return placement


RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def _only_reader_chain(
    tensor: str, made_by: dict[str, NodeInfo], readers: dict[str, list[str]]
) -> list[str]:
    """`tensor` if it has one reader, and the tensors it comes from through Reshapes that
    are each their input's only reader."""
    chain: list[str] = []
    while len(readers.get(tensor, [])) == 1:
        chain.append(tensor)
        node = made_by.get(tensor)
        if node is None or node.op_type not in RESHAPES or not node.inputs:
            break
        tensor = node.inputs[0]
    return chain


def _pooled_root(tensor: str, made_by: dict[str, NodeInfo]) -> str:
    """The tensor a chain of MaxPools starts from (`tensor` itself if none)."""
    for _ in range(16):
        node = made_by.get(tensor)
        if node is None or node.op_type != "MaxPool" or not node.inputs:
            break
        tensor = node.inputs[0]
    return tensor


def _readers(index: ModelIndex) -> dict[str, list[str]]:
    readers: dict[str, list[str]] = {}
    for node in index.nodes:
        for tensor in dict.fromkeys(node.inputs):
            if tensor:
                readers.setdefault(tensor, []).append(node.name)
    return readers


RULES: dict[str, Callable[[ir.Model, ModelIndex], VendorPlacement]] = {
    "tpu-mlir": _tpu_mlir,
    "qnn-htp": _qnn_htp,
    "hailo-dfc": _hailo,
}


def vendor_placement(model: ir.Model, rules: str) -> VendorPlacement:
    """The placement `rules` ("none", or a key of RULES) gives `model`."""
    if rules == "none":
        return VendorPlacement()
    return RULES[rules](model, ModelIndex.from_model(model))
