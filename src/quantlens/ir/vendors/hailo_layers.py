"""Which ONNX nodes the Hailo Dataflow Compiler merges into one layer, as data.

The DFC's parser turns a weighted op and what directly follows it into one HN layer: the
layer's `original_names` list the Conv, its BatchNormalization and its activation nodes (the
public HN of hailo_model_zoo's yolov8s_pose: `conv1` <- `/model.0/conv/Conv`,
`/model.0/act/Sigmoid`, `/model.0/act/Mul`; vendor-formats.md 1.7). The chip quantizes such a
layer once, at its output, so a model script names the layer once and a clipping range is the
range of the last merged node's output. BatchNorm is folded by our canonicalization already,
so here it only matters when a name map names it (see `resolve_original`).
"""

from __future__ import annotations

from dataclasses import dataclass

from quantlens.ir.index import ModelIndex, NodeInfo

# Ops that start a layer: the DFC's conv, dw, deconv, fc and matmul layer types.
HEAD_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops the DFC folds into the layer before them when they are its output's only reader:
# elementwise activations (HN `activation` params) and a bias Add on a constant.
ACTIVATION_OPS = frozenset(
    {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu"}
)


@dataclass(frozen=True)
class LayerGroup:
    """One Hailo layer: the head node, the nodes merged after it, and its output tensor."""

    head: str
    members: tuple[str, ...]
    output: str


def layer_groups(model: ModelIndex) -> list[LayerGroup]:
    """Every weighted node with the bias Add and activation (including SiLU's Sigmoid*x) the
    DFC merges into it; nodes outside any group are their own layer and are not listed."""
    readers = _readers(model)
    # Tensors no node computes and the graph does not take: initializers (constants).
    computed = {*model.producers(), *model.graph_inputs}
    groups = []
    for node in model.nodes:
        if node.op_type not in HEAD_OPS or not node.outputs:
            continue
        members, output = [node.name], node.outputs[0]
        while (merged := _next_merge(output, readers, computed)) is not None:
            members += [n.name for n in merged]
            output = merged[-1].outputs[0]
        groups.append(LayerGroup(head=node.name, members=tuple(members), output=output))
    return groups


def layer_outputs(model: ModelIndex) -> dict[str, str]:
    """Tensor -> the node naming the Hailo layer that outputs it: a merged layer's output is
    named by its head (the DFC's `conv3` comes from the Conv); tensors inside a merged layer
    (a Conv's output before its activation) are absent, as the chip never quantizes them."""
    owner = {t: node.name for node in model.nodes for t in node.outputs}
    for group in layer_groups(model):
        for name in group.members:
            for tensor in model.node(name).outputs:
                owner.pop(tensor, None)
        owner[group.output] = group.head
    return owner


def resolve_original(model: ModelIndex, names: list[str]) -> list[str]:
    """A name map's `original_names` as nodes of the canonical model: a folded BatchNorm
    becomes the Conv it was folded into; names canonicalization removed are dropped."""
    known = set(model.names)
    folded = {node.folded_bn: node.name for node in model.nodes if node.folded_bn}
    resolved = [name if name in known else folded.get(name, "") for name in names]
    return list(dict.fromkeys(n for n in resolved if n))


def _readers(model: ModelIndex) -> dict[str, list[NodeInfo]]:
    readers: dict[str, list[NodeInfo]] = {}
    for node in model.nodes:
        for tensor in dict.fromkeys(node.inputs):
            if tensor:
                readers.setdefault(tensor, []).append(node)
    return readers


def _next_merge(
    tensor: str, readers: dict[str, list[NodeInfo]], computed: set[str]
) -> list[NodeInfo] | None:
    """The node(s) the DFC merges onto `tensor`'s producer, or None."""
    consumers = readers.get(tensor, [])
    if len(consumers) == 1:
        node = consumers[0]
        if node.op_type in ACTIVATION_OPS or _is_bias_add(node, tensor, computed):
            return [node]
        return None
    if len(consumers) == 2:
        return _silu(tensor, consumers)
    return None


def _is_bias_add(node: NodeInfo, tensor: str, computed: set[str]) -> bool:
    others = [i for i in node.inputs if i != tensor]
    return node.op_type == "Add" and len(others) == 1 and others[0] not in computed


def _silu(tensor: str, consumers: list[NodeInfo]) -> list[NodeInfo] | None:
    """x * Sigmoid(x): the DFC's silu activation, two ONNX nodes on the same input."""
    by_op = {n.op_type: n for n in consumers}
    sigmoid, mul = by_op.get("Sigmoid"), by_op.get("Mul")
    if sigmoid is None or mul is None or not sigmoid.outputs:
        return None
    if set(mul.inputs) == {tensor, sigmoid.outputs[0]}:
        return [sigmoid, mul]
    return None
