"""Qualcomm's op fusions before quantization, as data with sources, and where they match.

QNN/SNPE and AIMET-ONNX quantize ops after fusing some of them: the output of every op of a
fused group but the last is never a quantized tensor, so an overrides or encodings file must
not name it (AIMET refuses the file), and the range written for the group is its last output's.
The rules below are AIMET-ONNX 2.42.0's for HTP (the simulator Qualcomm ships for QNN); each
names the file it was read from. A group computes in one precision: float as a whole or
integer as a whole (SNPE guide, "Quantization Overrides / Mixed Precision and FP16").
The QNN converter agrees for Relu and Clip: its backend folds a Relu or ReluMinMax that is the
only consumer into the op before it (QNN SDK 2.12 qnn_translations.py
`QnnTranslationBase.squash_relu`, called from the Conv and BatchNorm translations); it does
not fold HardSwish or Sigmoid, and AIMET's HTP list does not either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import onnx_ir as ir

from quantlens.ir.index import ModelIndex, NodeInfo

_CONFIG = "aimet-onnx 2.42.0 aimet_onnx/common/quantsim_config/htp_quantsim_config_v73.json"


@dataclass(frozen=True)
class Supergroup:
    """A chain of op types (producer first, each feeding only the next) quantized as one op."""

    ops: tuple[str, ...]
    source: str = f"{_CONFIG} 'supergroups' (the same list in v75, v79, v81, v85)"


# BatchNormalization is folded in the model we ship, so its patterns never match there; they
# are kept so the table is the vendor's, not a subset chosen by us.
HTP_SUPERGROUPS: tuple[Supergroup, ...] = tuple(
    Supergroup(tuple(chain.split("+")))
    for chain in (
        "Add+Relu",
        "Conv+BatchNormalization+HardSwish",
        "Conv+BatchNormalization+PRelu",
        "Conv+BatchNormalization+LeakyRelu",
        "Conv+BatchNormalization+Relu",
        "Conv+Transpose+Relu",
        "Conv+Transpose+PRelu",
        "Conv+Transpose+LeakyRelu",
        "Conv+Clip",
        "Conv+PRelu",
        "Conv+LeakyRelu",
        "Conv+Relu",
        "ConvTranspose+Relu",
        "Gemm+Relu",
    )
)
SUPERGROUP_EXCEPTIONS = (
    "depthwise and 3-D convolutions start no supergroup "
    "(aimet_onnx/common/graph_searcher.py _check_if_conv3d_or_depthwise_conv); an op whose "
    "output has several consumers ends a chain (graph_searcher.py: no patterns with branches); "
    "matches are disjoint, longest pattern first; ops taken by a graph pass are excluded "
    "(aimet_onnx/quantsim_config/quantsim_config.py _set_supergroup_configs)"
)
MATMUL_ADD_SOURCE = (
    f"{_CONFIG} 'supergroup_pass_list': MatmulAdd (aimet_onnx/graph_passes/passes/matmul_add.py:"
    " the MatMul output and the bias are not quantized; aimet_onnx/meta/connectedgraph.py "
    "_get_matmul_add_bias_idx: constant weight, one consumer, an Add with a rank-1 constant)"
)
LAYERNORM_SOURCE = (
    f"{_CONFIG} 'supergroup_pass_list': LayerNormalization (aimet_onnx/graph_passes/passes/"
    "layernorm.py: ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div [, Mul [, Add]] as one op; "
    "each op but the last one consumer, the Sub two: Pow and Div)"
)
# Outputs AIMET never quantizes: they carry their input's grid (aimet_onnx/quantsim.py
# op_outputs_to_ignore); QNN keeps the input encoding through these data-movement ops.
UNQUANTIZED_OUTPUT_OPS = frozenset(
    {
        "Flatten",
        "Gather",
        "Reshape",
        "Shape",
        "Unsqueeze",
        "Squeeze",
        "Split",
        "Compress",
        "Tile",
        "Transpose",
        "Identity",
    }
)
UNQUANTIZED_OUTPUT_SOURCE = "aimet-onnx 2.42.0 aimet_onnx/quantsim.py op_outputs_to_ignore"


# Tensors HTP holds in one encoding (aimet_onnx/quantsim.py op_types_to_tie_qtzrs and
# _tie_quantizers_for_op_types): a Concat's inputs take its output's encoding (followed back
# through nested Concats and grid-preserving producers; an input read by anything else keeps
# its own); a Relu, AveragePool or Resize output takes its input's.
TIE_BACKWARD = frozenset({"Concat", "Scatter", "ScatterElements", "ScatterND"})
TIE_FORWARD = frozenset({"Relu", "AveragePool", "Resize", "Upsample"})
TIE_SOURCE = (
    "aimet-onnx 2.42.0 aimet_onnx/quantsim.py _propagate_output_encodings (Concat, Scatter*: "
    "_is_grid_equivariant_op) and _propagate_input_encodings (Relu, AveragePool; Resize, "
    "Upsample: _is_htp_interpolation_op, 'HTP reuses the same quantization encoding')"
)
# Ops whose output is on their input's grid (aimet_onnx/common/onnx/_utils.py
# _is_grid_preserving_op): a tie is followed back through them.
GRID_PRESERVING = frozenset(
    {
        "Col2Im",
        "Compress",
        "DepthToSpace",
        "Dropout",
        "Expand",
        "Flatten",
        "Gather",
        "GatherElements",
        "GatherND",
        "Identity",
        "MaxPool",
        "MaxRoiPool",
        "NonZero",
        "Pad",
        "ReduceMax",
        "ReduceMin",
        "Reshape",
        "Slice",
        "SpaceToDepth",
        "Split",
        "Squeeze",
        "Tile",
        "Transpose",
        "Unsqueeze",
    }
)
# AIMET leaves a grid-preserving op's output unquantized unless the config names the op
# (aimet_onnx/quantsim_config/quantsim_config.py _set_op_type_configs).
PASSTHROUGH_OPS = UNQUANTIZED_OUTPUT_OPS | GRID_PRESERVING
# Ops whose output range HTP fixes (htp_quantsim_config 'encoding_constraints'): a Concat
# ties such an input only when every input carries the same constraint.
CONSTRAINED_OUTPUTS = {
    "Relu": "min0",
    "Sigmoid": "unit",
    "Softmax": "unit",
    "Tanh": "sym",
    "Sin": "sym",
    "Cos": "sym",
}


@dataclass
class Fusions:
    """Where the rules match one model: fused groups (node names, producer first)."""

    groups: list[tuple[str, ...]] = field(default_factory=list)
    # Tensor -> the group output that carries its range on the vendor side.
    fused_away: dict[str, str] = field(default_factory=dict)
    # Outputs of data-movement ops: tensor -> the input whose grid they keep.
    passthrough: dict[str, str] = field(default_factory=dict)
    # Tensor -> the tensor whose encoding HTP gives it (one quantizer for both).
    tied: dict[str, str] = field(default_factory=dict)

    def group_of(self, node: str) -> tuple[str, ...] | None:
        return next((g for g in self.groups if node in g), None)


@dataclass(frozen=True)
class _Graph:
    """What the matcher reads: consumers, constants (with shapes) and convolution groups."""

    index: ModelIndex
    consumers: Mapping[str, Sequence[NodeInfo]]
    constant_shapes: Mapping[str, tuple[int, ...]]
    graph_outputs: frozenset[str]
    conv_groups: Mapping[str, int]


def find_fusions(index: ModelIndex, model: ir.Model) -> Fusions:
    """Apply the MatMul+Add pass, then the supergroups, as AIMET-ONNX does for HTP."""
    graph = _graph(index, model)
    fusions = Fusions()
    taken: set[str] = set()
    for node in index.nodes:
        pair = _matmul_add(node, graph) or _layernorm(node, graph)
        if pair is not None and not taken.intersection(pair):
            _add_group(fusions, taken, pair)
    patterns = sorted(HTP_SUPERGROUPS, key=lambda s: -len(s.ops))
    for node in index.nodes:
        for pattern in patterns:
            chain = _chain(node, pattern.ops, graph, taken)
            if chain is not None:
                _add_group(fusions, taken, chain)
                break
    for node in index.nodes:
        if node.op_type in PASSTHROUGH_OPS and node.inputs and node.inputs[0]:
            fusions.passthrough.update(dict.fromkeys(node.outputs, node.inputs[0]))
    fusions.fused_away = _fused_away(fusions.groups, index)
    fusions.tied = _ties(graph, fusions)
    return fusions


def _graph(index: ModelIndex, model: ir.Model) -> _Graph:
    consumers: dict[str, list[NodeInfo]] = {}
    for node in index.nodes:
        for name in dict.fromkeys(i for i in node.inputs if i):
            consumers.setdefault(name, []).append(node)
    shapes = {
        name: tuple(value.const_value.shape.numpy())
        for name, value in model.graph.initializers.items()
        if value.const_value is not None
    }
    groups = {
        node.name or "": _conv_kind(node)
        for node in model.graph
        if node.op_type in ("Conv", "ConvTranspose")
    }
    outputs = frozenset(v.name or "" for v in model.graph.outputs)
    return _Graph(index, consumers, shapes, outputs, groups)


_PLAIN, _EXCLUDED = 1, 0


def _conv_kind(node: ir.Node) -> int:
    """_PLAIN for a convolution that may start a supergroup, _EXCLUDED for a depthwise (every
    group one input channel) or 3-D one."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    shape = tuple(weight.shape) if weight is not None and weight.shape is not None else ()
    if len(shape) == 5:
        return _EXCLUDED
    group = node.attributes.get_int("group", 1)
    depthwise = group != 1 and len(shape) > 1 and shape[1] == 1
    return _EXCLUDED if depthwise else _PLAIN


def _only_consumer(node: NodeInfo, graph: _Graph) -> NodeInfo | None:
    if len(node.outputs) != 1 or node.outputs[0] in graph.graph_outputs:
        return None
    users = graph.consumers.get(node.outputs[0], ())
    return users[0] if len(users) == 1 else None


def _matmul_add(node: NodeInfo, graph: _Graph) -> tuple[str, ...] | None:
    if node.op_type != "MatMul" or not any(i in graph.constant_shapes for i in node.inputs):
        return None
    add = _only_consumer(node, graph)
    if add is None or add.op_type != "Add":
        return None
    other = [i for i in add.inputs if i != node.outputs[0]]
    if len(other) != 1 or len(graph.constant_shapes.get(other[0], (0, 0))) != 1:
        return None
    return (node.name, add.name)


def _next(node: NodeInfo | None, op_type: str, graph: _Graph) -> NodeInfo | None:
    """The only consumer of `node`, if it is an `op_type`."""
    after = _only_consumer(node, graph) if node is not None else None
    return after if after is not None and after.op_type == op_type else None


def _layernorm(node: NodeInfo, graph: _Graph) -> tuple[str, ...] | None:
    """A decomposed LayerNorm starting at its first ReduceMean, as AIMET's pass matches it."""
    if node.op_type != "ReduceMean" or not node.inputs:
        return None
    sub = _next(node, "Sub", graph)
    users = graph.consumers.get(sub.outputs[0], ()) if sub is not None else ()
    if sub is None or sub.inputs[0] != node.inputs[0] or len(users) != 2:
        return None
    by_type = {u.op_type: u for u in users}
    power, div = by_type.get("Pow"), by_type.get("Div")
    if power is None or div is None:
        return None
    chain = [power]
    for op_type in ("ReduceMean", "Add", "Sqrt"):
        following = _next(chain[-1], op_type, graph)
        if following is None:
            return None
        chain.append(following)
    if tuple(div.inputs[:2]) != (sub.outputs[0], chain[-1].outputs[0]):
        return None
    tail = [div]
    scale = _next(div, "Mul", graph)
    if scale is not None and len(graph.consumers.get(scale.outputs[0], ())) <= 1:
        tail.append(scale)
        shift = _next(scale, "Add", graph)
        tail += [shift] if shift is not None else []
    return tuple(n.name for n in (node, sub, *chain, *tail))


def _chain(
    node: NodeInfo, ops: tuple[str, ...], graph: _Graph, taken: set[str]
) -> tuple[str, ...] | None:
    if node.op_type != ops[0] or graph.conv_groups.get(node.name, _PLAIN) == _EXCLUDED:
        return None
    chain = [node]
    for op_type in ops[1:]:
        following = _only_consumer(chain[-1], graph)
        if following is None or following.op_type != op_type:
            return None
        chain.append(following)
    names = tuple(n.name for n in chain)
    return None if taken.intersection(names) else names


def _ties(graph: _Graph, fusions: Fusions) -> dict[str, str]:
    owner: dict[str, str] = {}
    producers = graph.index.producers()
    visited: set[str] = set()
    for node in reversed(graph.index.nodes):
        if node.op_type in TIE_BACKWARD and _quantized(node.outputs[0], fusions):
            _tie_back(node, graph, fusions, producers, owner, visited)
    for node in graph.index.nodes:
        if node.op_type in TIE_FORWARD and node.inputs:
            _tie_forward(node, graph, fusions, owner)
    return {tensor: _root(owner, tensor) for tensor in owner}


def _root(owner: Mapping[str, str], tensor: str) -> str:
    seen = {tensor}
    while tensor in owner and owner[tensor] not in seen:
        tensor = owner[tensor]
        seen.add(tensor)
    return tensor


def _quantized(tensor: str, fusions: Fusions) -> bool:
    return tensor not in fusions.fused_away and tensor not in fusions.passthrough


def _effective(tensor: str, fusions: Fusions) -> tuple[str, list[str]]:
    """The tensor whose quantizer holds `tensor`'s grid, and the tensors passed on the way."""
    path = [tensor]
    while tensor in fusions.passthrough:
        tensor = fusions.passthrough[tensor]
        path.append(tensor)
    return tensor, path


def _tie_back(
    concat: NodeInfo,
    graph: _Graph,
    fusions: Fusions,
    producers: Mapping[str, NodeInfo],
    owner: dict[str, str],
    visited: set[str],
) -> None:
    out = concat.outputs[0]
    sources: dict[str, str | None] = {}
    stack = [concat]
    while stack:
        node = stack.pop()
        if node.name in visited:
            continue
        visited.add(node.name)
        for name in (i for i in node.inputs if i and i not in graph.constant_shapes):
            source, path = _effective(name, fusions)
            readers = {c.name for t in path for c in graph.consumers.get(t, ())}
            readers -= {producers[t].name for t in path[:-1] if t in producers}
            if len(readers) > 1 or not _quantized(source, fusions):
                continue
            made_by = producers.get(source)
            sources[source] = CONSTRAINED_OUTPUTS.get(made_by.op_type) if made_by else None
            before = producers.get(name)
            if before and (before.op_type in TIE_BACKWARD or before.op_type in GRID_PRESERVING):
                stack.append(before)
    if len(set(sources.values())) > 1:  # conflicting fixed ranges: tie the free ones only
        sources = {k: v for k, v in sources.items() if v is None}
    owner.update({source: out for source in sources if source != out})


def _tie_forward(node: NodeInfo, graph: _Graph, fusions: Fusions, owner: dict[str, str]) -> None:
    source, path = _effective(node.inputs[0], fusions)
    out = node.outputs[0]
    if not _quantized(source, fusions) or not _quantized(out, fusions):
        return
    # A Relu's fixed [0, ...) range conflicts with a free input: HTP then ties only when
    # nothing else reads the input on the way (aimet_onnx/quantsim.py, the Conv -> Relu / Add
    # example in _propagate_input_encodings).
    if node.op_type == "Relu":
        shared = any(len(graph.consumers.get(t, ())) != 1 for t in path)
        if shared:
            return
    owner[out] = source


def _add_group(fusions: Fusions, taken: set[str], names: tuple[str, ...]) -> None:
    fusions.groups.append(names)
    taken.update(names)


def _fused_away(groups: Iterable[tuple[str, ...]], index: ModelIndex) -> dict[str, str]:
    away = {}
    for group in groups:
        last = index.node(group[-1]).outputs[0]
        for name in group[:-1]:
            away.update(dict.fromkeys(index.node(name).outputs, last))
    return away


def fused_by_type(index: ModelIndex) -> tuple[dict[str, str], dict[str, str]]:
    """(fused, fused or passed through): tensor -> the tensor that carries its range when the
    vendor does not quantize it, from op types alone (no constants or weight shapes at hand
    when a file is read back). Only consulted for a tensor the file leaves out, so a looser
    match than `find_fusions` still reads our files right."""
    consumers: dict[str, list[NodeInfo]] = {}
    for node in index.nodes:
        for name in dict.fromkeys(i for i in node.inputs if i):
            consumers.setdefault(name, []).append(node)
    pairs = {("MatMul", "Add")} | {
        (a, b) for group in HTP_SUPERGROUPS for a, b in zip(group.ops, group.ops[1:])
    }
    fused: dict[str, str] = {}
    for node in reversed(index.nodes):
        users = consumers.get(node.outputs[0], []) if len(node.outputs) == 1 else []
        if len(users) == 1 and (node.op_type, users[0].op_type) in pairs and users[0].outputs:
            after = users[0].outputs[0]
            fused[node.outputs[0]] = fused.get(after, after)
    moved = dict(fused)
    for node in index.nodes:
        if node.op_type in PASSTHROUGH_OPS and node.inputs and node.inputs[0]:
            source = node.inputs[0]
            moved.update(dict.fromkeys(node.outputs, moved.get(source, source)))
    return fused, moved
